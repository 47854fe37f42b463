"""Checkpoint files that carry their own integrity: written atomically with a checksum beside them, refused
when damaged. Used by every file the framework writes and reads back as weights: flow checkpoints
(:mod:`latent_flow.training.checkpoints`), autoencoder files, attribute classifiers, oracles.

**Writing** (:func:`save_checkpoint_file`; :class:`AtomicCheckpointIO` sends every save of a Lightning
trainer through it: the periodic ``step_*.ckpt``, ``last.ckpt``, ``interrupted.ckpt``):
``torch.save`` into memory (as Lightning's own atomic save does), the XXH3-128 of those bytes, the bytes
to ``<name>.tmp`` and the checksum to ``<name>.xxh128.tmp``, both flushed to disk (fsync), then renamed
into place, the checkpoint first, and the directory fsynced; a ``<name>.sha256`` of an earlier save is
then removed. The checksum file is in ``xxh128sum`` format (``cd checkpoints && xxh128sum -c
last.ckpt.xxh128`` checks it by hand, ``xxhsum`` package).

The checksum is XXH3-128 (``xxhash``), a non-cryptographic 128-bit hash: it guards against damage (a
disk, a copy or a save cut short), not against someone who rewrites the checksum file too, and it runs at
memory speed, so checking a checkpoint costs a fraction of ``torch.load`` (SHA-256, which checkpoints
carried before, cost 6x ``torch.load`` on a loaded 2-core machine: ``benchmarks/README.md``).
Checkpoints written before carry ``<name>.sha256`` (``sha256sum`` format): it is still verified.

The checksum sits beside the file, not inside it: a file cannot hold the hash of its own bytes, and a
hash of the tensors stored inside could only be checked after a full load, which a damaged zip
directory or a truncated file would break before the check could say what is wrong. If a crash falls
between the two renames, the new checkpoint and the old checksum file are left with the new one's
``.xxh128.tmp`` (flushed before the first rename): the loader accepts a file matched by that pending
checksum.

**Reading** (:func:`load_checkpoint`): what :func:`load_flow_module` (``api.load_model``: ``sample``,
``evaluate``, ``likelihood``, ``edit``, ``train_classifier``, autoguidance guides, FlowTurbo bases),
FlowTurbo's ``load_refiner``, post-hoc EMA and a resumed ``train ckpt_path=`` (before Lightning sees the
path) all call:

1. the file's hash against its checksum file (``.xxh128``, else the ``.sha256`` of an older save); a
   mismatch is refused. A checkpoint without one (written before checkpoints carried it) is accepted
   with a warning, after the CRC-32 that the zip format stores for each record is checked instead (when
   the writer stored them);
2. ``torch.load``, on the main thread while 1. runs on a second one (the file is hashed where it lies in
   the page cache, the hash releases the GIL; the result is returned only once both have finished); a
   file it cannot read is refused, a truncated one named as such;
3. every floating-point tensor of the ``state_dict`` (backbone, EMA, condition encoder, refiner) finite.

A refused file raises :class:`CheckpointIntegrityError`, naming the file, what failed and how to recover:
the newest intact ``step_*.ckpt`` of the same folder (checked the same way), when there is one. The cost
(``benchmarks/checkpoint_integrity.py``): the checksum and finite checks against ``torch.load`` itself.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from latent_flow.utils.hashing import FILE_HASHES, file_digest
from latent_flow.utils.io import fsync_dir, temporary_path

__all__ = [
    "CHECKSUM_SUFFIX",
    "CHECKSUM_SUFFIXES",
    "CheckpointIntegrityError",
    "Checksum",
    "checkpoint_problem",
    "checksum_path",
    "checksum_paths",
    "load_checkpoint",
    "newest_intact_checkpoint",
    "nonfinite_tensors",
    "read_checksum",
    "save_checkpoint_file",
    "zip_crc_problem",
]

log = logging.getLogger(__name__)
#: suffix of the checksum file written beside every checkpoint (``last.ckpt`` -> ``last.ckpt.xxh128``)
CHECKSUM_SUFFIX = ".xxh128"
#: every checksum file a checkpoint may carry, the preferred first: suffix -> (hash of
#: :func:`~latent_flow.utils.hashing.file_digest`, its name in messages); ``.sha256``: saves before XXH3-128
CHECKSUM_SUFFIXES = {".xxh128": ("xxh128", "XXH3-128"), ".sha256": ("sha256", "SHA-256")}
_STEP_NAME = re.compile(r"step_(\d+)(?:-v(\d+))?\.ckpt")  # -v1: Lightning's name for a step written again
_HEX = re.compile(r"[0-9a-f]+")


class Checksum(NamedTuple):
    """A checksum recorded for a checkpoint: the hash (``xxh128`` / ``sha256``), its hex digest, and the file
    it was read from."""

    algorithm: str
    digest: str
    file: Path


class CheckpointIntegrityError(ValueError):
    """A checkpoint that must not be used: changed after it was written (checksum), unreadable or
    truncated, or holding weights that are not finite. The message names the file, what failed and what
    to use instead."""


# ----------------------------------------------------------------------------- writing
def checksum_path(path: str | os.PathLike) -> Path:
    """The checksum file written with a checkpoint: ``<name>.xxh128`` beside it."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def checksum_paths(path: str | os.PathLike) -> list[Path]:
    """Every checksum file a checkpoint may have, the preferred first: ``<name>.xxh128``, ``<name>.sha256``
    (written by saves before XXH3-128)."""
    path = Path(path)
    return [path.with_name(path.name + suffix) for suffix in CHECKSUM_SUFFIXES]


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | os.PathLike) -> str:
    """Write ``checkpoint`` with ``torch.save`` to ``path`` atomically, with its checksum beside it.

    Returns the XXH3-128 (hex) of the file written. Either the previous file (and its checksum) or the new
    one is at ``path`` at every moment; the temporary files are removed when the save fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp, side = temporary_path(path), checksum_path(path)
    side_tmp = temporary_path(side)
    renamed = False
    try:
        with buffer.getbuffer() as data:  # no copy of the serialised bytes
            digest = FILE_HASHES["xxh128"](data).hexdigest()
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        buffer.close()
        with open(side_tmp, "w") as handle:
            handle.write(f"{digest}  {path.name}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        renamed = True
        os.replace(side_tmp, side)
        for stale in checksum_paths(path)[1:]:  # an earlier save's SHA-256 (and its pending one): superseded
            stale.unlink(missing_ok=True)
            temporary_path(stale).unlink(missing_ok=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if not renamed:  # after the first rename the pending checksum is what vouches for the new file
            side_tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest


# ----------------------------------------------------------------------------- checking
def read_checksum(path: str | os.PathLike) -> Checksum | None:
    """The checksum recorded for a checkpoint (from ``<name>.xxh128``, else ``<name>.sha256``), or ``None``
    when it has no checksum file.

    Raises :class:`CheckpointIntegrityError` when the checksum file exists but holds no checksum."""
    for side in checksum_paths(path):
        if side.is_file():
            return _parse_checksum(side, path)
    return None


def _parse_checksum(side: Path, path: str | os.PathLike) -> Checksum:
    """The checksum in ``side`` (``<name>.xxh128`` / ``<name>.sha256``, or one of them pending: ``.tmp``)."""
    suffix = side.suffix if side.suffix != ".tmp" else Path(side.stem).suffix
    algorithm, label = CHECKSUM_SUFFIXES[suffix]
    text = side.read_text(errors="replace").strip()
    digest = text.split()[0].lower() if text else ""
    if not (_HEX.fullmatch(digest) and len(digest) == 2 * FILE_HASHES[algorithm]().digest_size):
        raise CheckpointIntegrityError(
            f"refusing checkpoint {path}: its checksum file {side} is damaged (no {label} in it: {text[:80]!r}); "
            f"compare the file with a copy, or delete {side.name} to load it unchecked (with a warning)"
        )
    return Checksum(algorithm, digest, side)


def zip_crc_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a zip checkpoint's CRC-32 records (``None``: nothing found, or none stored): the
    check of a checkpoint written without a checksum file (``torch.save`` stores a CRC-32 per record)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if any(info.CRC == 0 and info.file_size > 0 for info in infos):
                return None  # written without CRC-32s (torch.serialization.config.save.compute_crc32=False)
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"its zip structure cannot be read ({type(exc).__name__}: {exc})"
    return None if bad is None else f"the CRC-32 of its record {bad!r} does not match that record's bytes"


def _truncation(path: Path) -> str | None:
    if zipfile.is_zipfile(path):
        return None
    return (
        f"the file is truncated or its end is damaged ({path.stat().st_size:,} bytes, no zip end-of-archive "
        "record: a save or copy cut short)"
    )


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint file's bytes, or ``None``: the checksum (or, without a checksum
    file, the zip's CRC-32 records and its end record). Reads the file, does not load it."""
    path = Path(path)
    expected = read_checksum(path)
    if expected is not None:
        actual = {expected.algorithm: file_digest(path, expected.algorithm)}
        if actual[expected.algorithm] == expected.digest:
            return None
        # bytes that match any checksum a save recorded for them are intact: the pending checksum of a save
        # interrupted between its two renames (flushed before the first), or a .sha256 beside a stale .xxh128
        # (the file saved again by a version of this code from before XXH3-128)
        for side in checksum_paths(path):
            for other in (side, temporary_path(side)):
                if other == expected.file or not other.is_file():
                    continue
                try:
                    recorded = _parse_checksum(other, path)
                except CheckpointIntegrityError:
                    continue  # a damaged spare vouches for nothing; the preferred checksum's verdict stands
                if recorded.algorithm not in actual:
                    actual[recorded.algorithm] = file_digest(path, recorded.algorithm)
                if actual[recorded.algorithm] == recorded.digest:
                    log.info("%s does not match %s but matches %s: accepted", path, expected.file.name, other.name)
                    return None
        label = CHECKSUM_SUFFIXES[expected.file.suffix][1]
        truncated = _truncation(path)
        return (
            f"its {label} ({actual[expected.algorithm][:16]}...) differs from the one recorded in "
            f"{expected.file.name} when it was written ({expected.digest[:16]}...): the file was damaged or "
            "changed after it was saved" + (f"; {truncated}" if truncated else "")
        )
    if not zipfile.is_zipfile(path):
        return None  # not a zip: left to torch.load (which names a truncated file)
    return zip_crc_problem(path)


def _step_of(path: Path) -> tuple[int, int] | None:
    """``(step, version)`` of ``step_0000500.ckpt`` / ``step_0000500-v1.ckpt`` (a resumed run's second step 500)."""
    match = _STEP_NAME.fullmatch(path.name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def newest_intact_checkpoint(folder: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = ()) -> Path | None:
    """The ``step_*.ckpt`` of ``folder`` with the highest step (and version) whose bytes pass
    :func:`checkpoint_problem`."""
    skip = {Path(p).resolve() for p in exclude}
    candidates = [(key, p) for p in Path(folder).glob("step_*.ckpt") if (key := _step_of(p)) is not None]
    for _, candidate in sorted(candidates, reverse=True):
        if candidate.resolve() in skip:
            continue
        try:
            if checkpoint_problem(candidate) is None:
                return candidate
        except (CheckpointIntegrityError, OSError):
            continue
    return None


def _recovery(path: Path) -> str:
    """How to recover from a refused checkpoint: the newest intact step checkpoint beside it, if any."""
    good = newest_intact_checkpoint(path.parent, exclude=[path])
    if good is None:
        return f"There is no intact step_*.ckpt in {path.parent}: restore {path.name} from a copy, or train again."
    how = "checksum verified" if read_checksum(good) else "no checksum file; its zip CRC-32s verified"
    return (
        f"The newest intact checkpoint in the same folder is {good} (step {_step_of(good)[0]}, {how}): "
        f"use ckpt_path={good} instead (training resumed from it continues from that step)."
    )


def _floating_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _floating_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite. A finite sum proves it (a NaN makes the sum NaN, an infinity makes
    it infinite or NaN) at the speed of one reduction, over 10x faster than ``isfinite(t).all()`` on a CPU
    (``benchmarks/checkpoint_integrity.py``); a sum that overflowed (huge but finite weights) falls back to
    the element-wise test."""
    if tensor.numel() == 0:
        return True
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):  # e.g. float8
        return bool(torch.isfinite(tensor.float()).all())
    accumulate = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(tensor.sum(dtype=accumulate))):
        return True
    return bool(torch.isfinite(tensor).all())


def nonfinite_tensors(weights: Any) -> list[str]:
    """Names of the floating-point tensors in ``weights`` (a state dict, or nested dicts / lists of
    tensors) that hold a NaN or an infinity."""
    return [name for name, tensor in _floating_tensors(weights) if not _all_finite(tensor)]


def load_checkpoint(
    path: str | os.PathLike,
    *,
    weights_key: str | None = "state_dict",
    weights_only: bool = False,
    verified: bool = False,
) -> dict[str, Any]:
    """A checkpoint file, verified (module docstring), loaded on the CPU.

    Args:
        path: the ``.ckpt`` (or any ``torch.save`` file written by :func:`save_checkpoint_file`).
        weights_key: the entry whose floating-point tensors must all be finite (Lightning's
            ``state_dict``: backbone, EMA, condition encoder, refiner); ``None`` skips the check.
        weights_only: ``torch.load``'s: ``True`` for files of tensors and plain containers only
            (autoencoder files), ``False`` for Lightning checkpoints (they pickle hyper-parameters).
        verified: the caller has already checked the bytes against a checksum it holds (a packaged file's
            SHA-256 registry): the checksum-file step is skipped, the read and finite checks are not.

    Raises:
        FileNotFoundError: no such file.
        CheckpointIntegrityError: the checksum does not match, torch cannot read the file (a truncated
            one is named as such), or a weight is NaN / infinite.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    has_checksum = verified or any(side.is_file() for side in checksum_paths(path))
    if not has_checksum:
        log.warning(
            "checkpoint %s has no checksum file (%s): written before checkpoints carried one, it is loaded after "
            "checking its zip CRC-32 records and weights only; checkpoints saved from now on carry one",
            path,
            checksum_path(path).name,
        )
    # the bytes are checked on a second thread while torch reads them (hashing and file reads release the
    # GIL): on a free core the check costs about what the slower of the two costs (torch.load), not their
    # sum; on a busy machine the sum, and XXH3-128 keeps that a fraction of torch.load; nothing is returned
    # before both have finished, so a damaged file is refused all the same
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None if verified else pool.submit(checkpoint_problem, path)
        load_error: Exception | None = None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
        except Exception as exc:  # torch's zip reader / unpickler errors have no common base class
            checkpoint, load_error = None, exc
        problem = None if pending is None else pending.result()
    if problem is not None:
        raise CheckpointIntegrityError(f"refusing checkpoint {path}: {problem}. {_recovery(path)}") from load_error
    if load_error is not None:
        reason = _truncation(path) or f"{type(load_error).__name__}: {load_error}"
        raise CheckpointIntegrityError(
            f"refusing checkpoint {path}: torch cannot read it ({reason}). {_recovery(path)}"
        ) from load_error
    if weights_key is not None and isinstance(checkpoint, dict) and weights_key in checkpoint:
        bad = nonfinite_tensors(checkpoint[weights_key])
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise CheckpointIntegrityError(
                f"refusing checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or Inf ({shown}): training "
                f"had diverged when it was saved, or the file was altered before its checksum was written. "
                f"{_recovery(path)}"
            )
    return checkpoint
