"""Reference statistics of a dataset split for FID & co: one implementation for the
``latent_flow.reference_stats`` command, ``latent_flow.evaluate`` and the training callback.

What is measured is exactly what the loader gives at the training resolution: the dataset's
own deterministic preprocessing (resize / centre crop, the ADM crop for ImageNet), **no random
flip or other augmentation and no lossy re-encoding** (images go from the loader's float tensor
to uint8 by rounding, which inverts the loaders' ``uint8 / 127.5 - 1`` exactly; PNGs are written
losslessly). The split is the one training uses (:func:`latent_flow.data.datamodule.split_indices`
with the run's ``val_fraction`` and ``seed``), so ``split=val`` is the held-out part.

Layout of a reference directory (the work is split into chunks so that an interrupted run
resumes where it stopped, and chunks are spread over ranks under torchrun / srun):

* ``parts/part_NNNNN.npz``: ``features`` (float32), ``logits`` (optional), ``images`` (optional);
* ``stats.npz``: ``mu`` (float64), ``sigma`` (float64), ``features`` (float32, for KID and
  precision / recall), ``logits`` (optional, unused for metrics), ``indices`` (dataset indices);
* ``reference.npz`` (``save_images``): ``arr_0`` uint8 NHWC and ``labels``, the ADM evaluator's
  reference-batch layout;
* ``reference.json``: dataset fingerprint, split, count, feature extractor, timings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from latent_flow.data.datamodule import split_indices
from latent_flow.evaluation.frechet import gaussian_stats
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import wait_until
from latent_flow.utils.hashing import weights_hash
from latent_flow.utils.images import to_uint8
from latent_flow.utils.io import write_json
from latent_flow.utils.progress import progress_bar

__all__ = [
    "SPLITS",
    "DATA_IDENTITY_KEYS",
    "data_identity",
    "reference_indices",
    "extractor_identity",
    "extractor_fingerprint",
    "build_feature_extractor",
    "compute_reference",
    "load_reference_stats",
    "reference_info",
    "check_reference_extractor",
    "check_reference_data",
    "ReferenceStatsError",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")


class ReferenceStatsError(ValueError):
    """A reference-statistics file is missing, malformed, or does not match the evaluation."""


def reference_indices(
    num_items: int, *, split: str, val_fraction: float, seed: int, num_images: int | None = None
) -> np.ndarray:
    """Dataset indices of ``split`` (the training split rule); the first ``num_images`` of a
    seeded permutation of the split when ``num_images`` is set (a fixed random subset)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if split == "all":
        indices = np.arange(num_items)
    else:
        train, val = split_indices(num_items, val_fraction, seed)
        indices = train if split == "train" else val
    if len(indices) == 0:
        raise ValueError(f"split={split!r} of a dataset of {num_items} items with val_fraction={val_fraction} is empty")
    if num_images is not None:
        if num_images < 2:
            raise ValueError(f"num_images must be >= 2 (a covariance needs two images), got {num_images}")
        if num_images > len(indices):
            raise ValueError(
                f"num_images={num_images} but split={split!r} has only {len(indices)} images; "
                "use a smaller num_images, another split, or num_images=null for the whole split"
            )
        perm = np.random.default_rng(seed + 7919).permutation(len(indices))[:num_images]
        indices = np.sort(indices[perm])
    return indices


def extractor_identity(spec: Mapping[str, Any] | None) -> dict:
    """A JSON-able description of a feature-extractor config (what the statistics depend on)."""
    if spec is None:
        return {}
    spec = to_plain(spec)
    return json.loads(json.dumps(dict(spec), default=str, sort_keys=True))


def extractor_fingerprint(extractor: Callable) -> str | None:
    """:func:`~latent_flow.utils.hashing.weights_hash` (16 hex digits) of a module extractor; ``None`` for
    other callables.

    Two extractors of one config can hold different weights (a shapes oracle trained on another machine,
    another Inception file); statistics record this so that they are never compared across weights.
    """
    return weights_hash(extractor)[:16] if isinstance(extractor, torch.nn.Module) else None


def build_feature_extractor(spec: Mapping[str, Any] | torch.nn.Module | Callable) -> Callable:
    """Instantiate ``{_target_: ..., **kwargs}`` (or pass a built module through).

    The extractor maps images ``(B, 3, H, W)`` in [0, 1] to features ``(B, D)`` or to
    ``(features, logits)`` (Inception Score needs the logits).
    """
    if callable(spec) and not isinstance(spec, Mapping):
        return spec
    spec = extractor_identity(spec)
    if "_target_" not in spec:
        raise ValueError(
            f"feature_extractor needs a _target_ (a class or function returning a module that maps images in "
            f"[0, 1] to (B, D) features), got {spec}"
        )

    try:
        extractor = instantiate(spec)
    except InstantiationException as err:  # surface the extractor's own message (e.g. missing weights)
        if err.__cause__ is not None:
            raise err.__cause__ from None
        raise
    if not callable(extractor):
        raise TypeError(
            f"feature_extractor {spec['_target_']} built a {type(extractor).__name__}, which is not callable"
        )
    if isinstance(extractor, torch.nn.Module):
        extractor.eval()
    return extractor


def _extract(extractor: Callable, images01: Tensor) -> tuple[Tensor, Tensor | None]:
    with torch.no_grad():
        out = extractor(images01)
    feats, logits = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    if feats.ndim != 2 or feats.shape[0] != images01.shape[0]:
        raise ValueError(
            f"the feature extractor returned features of shape {tuple(feats.shape)} for {images01.shape[0]} "
            "images; expected (B, D)"
        )
    return feats.detach().float().cpu(), (None if logits is None else logits.detach().float().cpu())


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _chunk_path(out_dir: Path, k: int) -> Path:
    return out_dir / "parts" / f"part_{k:05d}.npz"


def compute_reference(
    dataset,
    indices: Sequence[int],
    extractor: Callable,
    out_dir: str | os.PathLike,
    *,
    extractor_spec: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    batch_size: int = 100,
    chunk_size: int = 1000,
    save_images: bool = False,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    progress: bool = True,
    wait_timeout: float = 3600.0,
) -> dict | None:
    """Features of ``dataset[indices]`` -> ``stats.npz`` (and ``reference.npz``) in ``out_dir``.

    Chunks of ``chunk_size`` images are written as they finish; a chunk that exists is not redone
    (resume after an interruption). Rank ``r`` of ``world_size`` computes chunks ``k`` with
    ``k % world_size == r``; rank 0 waits for all chunks and merges them. Returns the summary
    written to ``reference.json`` on rank 0, ``None`` on other ranks.
    """
    out_dir = Path(out_dir)
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) < 2:
        raise ValueError(f"reference statistics need at least 2 images, got {len(indices)}")
    identity = {
        **data_identity(dataset, info),
        "num_images": int(len(indices)),
        "chunk_size": int(chunk_size),
        "indices_sha1": _sha1(indices),
        "feature_extractor": extractor_identity(extractor_spec),
        "feature_extractor_weights": extractor_fingerprint(extractor),
        "save_images": bool(save_images),
    }
    plan_path = out_dir / "parts" / "plan.json"
    if rank == 0:
        if plan_path.exists():
            _check_plan(out_dir, plan_path, json.loads(plan_path.read_text()), identity)
        write_json(plan_path, identity)
    chunks = [indices[lo : lo + chunk_size] for lo in range(0, len(indices), chunk_size)]
    mine = [k for k in range(len(chunks)) if k % world_size == rank and not _chunk_path(out_dir, k).exists()]
    start = time.time()
    bar = progress_bar(
        sum(len(chunks[k]) for k in mine),
        f"[rank {rank}/{world_size}] reference features",
        unit="img",
        disable=not (progress and mine),
    )
    for k in mine:
        feats, logits, images = [], [], []
        loader = DataLoader(Subset(dataset, chunks[k].tolist()), batch_size=batch_size, num_workers=num_workers)
        for batch in loader:
            x = batch["image"] if isinstance(batch, Mapping) else batch[0]
            u8 = to_uint8(x)  # exact inverse of the loaders' uint8 -> [-1, 1]
            if save_images:
                images.append(u8)
            images01 = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255.0).to(device)
            f, lg = _extract(extractor, images01)
            feats.append(f.numpy())
            if lg is not None:
                logits.append(lg.numpy())
            bar.update(len(u8))
        arrays = {"features": np.concatenate(feats).astype(np.float32), "indices": chunks[k]}
        if logits:
            arrays["logits"] = np.concatenate(logits).astype(np.float32)
        if save_images:
            arrays["images"] = np.concatenate(images)
        _atomic_savez(_chunk_path(out_dir, k), **arrays)
    bar.close()
    if rank != 0:
        return None
    if world_size > 1:
        missing = lambda: [k for k in range(len(chunks)) if not _chunk_path(out_dir, k).exists()]  # noqa: E731
        wait_until(
            lambda: not missing(),
            lambda: f"reference chunks still missing: {missing()[:10]}",
            timeout=wait_timeout,
            poll=5.0,
            progress=lambda: len(missing()),
        )
    return _merge(out_dir, len(chunks), identity, info, seconds=time.time() - start)


#: what a reference folder's plan records of the data (besides the indices, extractor and chunking)
DATA_IDENTITY_KEYS = ("data", "dataset_fingerprint", "resolution", "split", "dataset_split")


def data_identity(dataset, info: Mapping[str, Any] | None = None) -> dict:
    """The data a reference folder is of: ``data`` (the config's name), ``dataset_fingerprint`` (the
    dataset's own ``fingerprint()``), ``resolution``, ``split`` and ``dataset_split``, from ``info`` (what
    the command records) or else from the dataset itself; ``None`` where neither says."""
    info = dict(info or {})
    fingerprint = info.get("dataset_fingerprint")
    if fingerprint is None and hasattr(dataset, "fingerprint"):
        fingerprint = dataset.fingerprint()
    resolution = info.get("resolution", getattr(dataset, "resolution", None))
    return {
        "data": info.get("data"),
        "dataset_fingerprint": fingerprint,
        "resolution": None if resolution is None else int(resolution),
        "split": info.get("split"),
        "dataset_split": info.get("dataset_split", getattr(dataset, "split", None)),
    }


def _check_plan(out_dir: Path, plan_path: Path, recorded: dict, identity: dict) -> None:
    """Refuse to resume a folder whose chunks were computed for another plan, naming what differs
    (a folder started before the data were recorded in the plan lacks them: refused too)."""
    if recorded == identity:
        return
    missing = object()
    differ = [k for k in identity if recorded.get(k, missing) != identity[k]]
    differ += [k for k in recorded if k not in identity]
    details = "; ".join(
        f"{k}: {recorded[k]!r} there, {identity.get(k)!r} now" if k in recorded else f"{k}: not recorded there"
        for k in differ
    )
    raise ReferenceStatsError(
        f"{out_dir} holds partial reference statistics of another setting ({plan_path}: {details}); its chunks "
        "cannot be reused. Use another out_dir, or delete the directory to start over"
    )


def _sha1(indices: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _merge(out_dir: Path, num_chunks: int, identity: dict, info: Mapping[str, Any] | None, seconds: float) -> dict:
    parts = [np.load(_chunk_path(out_dir, k)) for k in range(num_chunks)]
    features = np.concatenate([p["features"] for p in parts])
    idx = np.concatenate([p["indices"] for p in parts])
    mu, sigma = gaussian_stats(features)
    stats = {"mu": mu, "sigma": sigma, "features": features, "indices": idx}
    if all("logits" in p for p in parts):
        stats["logits"] = np.concatenate([p["logits"] for p in parts])
    _atomic_savez(out_dir / "stats.npz", **stats)
    files = {"stats": "stats.npz"}
    if identity["save_images"]:
        _atomic_savez(
            out_dir / "reference.npz",
            arr_0=np.concatenate([p["images"] for p in parts]),
            labels=np.zeros(0, dtype=np.int64),
        )
        files["images"] = "reference.npz"
    summary = {
        **(dict(info) if info else {}),
        **identity,
        "feature_dim": int(features.shape[1]),
        "files": files,
        "seconds_this_run": round(seconds, 2),
    }
    write_json(out_dir / "reference.json", summary)
    return summary


def _stats_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "stats.npz"
    if not path.is_file():
        raise ReferenceStatsError(
            f"reference statistics {path} do not exist; write them with `python -m latent_flow.reference_stats "
            "data=<dataset> split=train out_dir=<dir>` (see docs/evaluation.md)"
        )
    return path


def reference_info(path: str | os.PathLike) -> dict:
    """``reference.json`` of reference statistics (``{}`` when there is none), without loading the arrays;
    raises :class:`ReferenceStatsError` when the statistics do not exist."""
    meta_path = _stats_file(path).parent / "reference.json"
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


def check_reference_extractor(
    path: str | os.PathLike,
    info: Mapping[str, Any],
    *,
    feature_extractor: Mapping[str, Any] | None = None,
    extractor_weights: str | None = None,
) -> None:
    """Raise :class:`ReferenceStatsError` when statistics with ``info`` (their ``reference.json``) were
    computed with another feature extractor than ``feature_extractor`` (features of different networks are
    not comparable), or with other weights than ``extractor_weights`` (:func:`extractor_fingerprint`)."""
    if feature_extractor is not None and info.get("feature_extractor"):
        want, have = extractor_identity(feature_extractor), info["feature_extractor"]
        if want.get("_target_") != have.get("_target_"):
            raise ReferenceStatsError(
                f"{path} was computed with feature extractor {have.get('_target_')}, but this evaluation uses "
                f"{want.get('_target_')}; recompute the reference statistics with the same extractor"
            )
    if extractor_weights is not None:
        recorded = info.get("feature_extractor_weights")
        if recorded is None:
            log.warning(
                "%s records no feature-extractor weights (written before 2026-12-06): cannot check that they are "
                "this extractor's (%s); recompute them if the extractor's weights may have changed",
                path,
                extractor_weights,
            )
        elif recorded != extractor_weights:
            raise ReferenceStatsError(
                f"{path} was computed with other weights of the feature extractor (fingerprint {recorded}) than "
                f"this evaluation's ({extractor_weights}): the statistics are not comparable; recompute them with "
                "`python -m latent_flow.reference_stats` and this extractor"
            )


def check_reference_data(
    path: str | os.PathLike,
    info: Mapping[str, Any],
    *,
    data: str | None = None,
    resolution: int | None = None,
    allow_mismatch: bool = False,
    flag: str = "evaluation.allow_reference_mismatch=true",
) -> list[str]:
    """Compare the data of reference statistics (their ``reference.json``) with the evaluated images':
    the data's name and the resolution. Statistics of 32 px images against 64 px samples give a plausible
    but meaningless FID (the Inception network resizes both to 299 px), so a difference raises
    :class:`ReferenceStatsError` unless ``allow_mismatch`` (then it is logged). Returns the differences
    (``"resolution: 32 in the reference, 64 here"``); what either side does not record is not compared
    (with a warning when the reference does not record it)."""
    differences = []
    for key, here in (("data", data), ("resolution", resolution)):
        there = info.get(key)
        if here is None:
            continue
        if there is None:
            log.warning("%s records no %s: cannot check that it is this evaluation's (%s)", path, key, here)
        elif (int(there) != int(here)) if key == "resolution" else (str(there) != str(here)):
            differences.append(f"{key}: {there!r} in the reference, {here!r} here")
    if differences and not allow_mismatch:
        raise ReferenceStatsError(
            f"{path} are reference statistics of other data than this evaluation's ({'; '.join(differences)}): the "
            "scores would compare different image distributions. Use reference statistics of the model's data and "
            f"resolution (python -m latent_flow.reference_stats data=... data.resolution=...), or {flag} to score "
            "against them anyway"
        )
    if differences:
        log.warning("%s: scoring against reference statistics of other data (%s)", path, "; ".join(differences))
    return differences


def load_reference_stats(
    path: str | os.PathLike,
    *,
    feature_extractor: Mapping[str, Any] | None = None,
    extractor_weights: str | None = None,
) -> dict:
    """Load ``stats.npz`` (or the directory holding it) written by :func:`compute_reference`.

    Returns ``{"mu", "sigma", "features" (or None), "info"}``. When ``feature_extractor`` is given
    and ``reference.json`` records another extractor, raises :class:`ReferenceStatsError` (features
    of different networks are not comparable); so it does when ``extractor_weights``
    (:func:`extractor_fingerprint` of the evaluating extractor) differs from the recorded weights
    (:func:`check_reference_extractor`).
    """
    path = _stats_file(path)
    with np.load(path) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ReferenceStatsError(f"{path} has no {sorted(missing)} arrays (found {data.files}); not a stats file")
        out = {
            "mu": torch.from_numpy(data["mu"]).double(),
            "sigma": torch.from_numpy(data["sigma"]).double(),
            "features": torch.from_numpy(data["features"]).double() if "features" in data.files else None,
        }
    out["info"] = reference_info(path)
    check_reference_extractor(
        path, out["info"], feature_extractor=feature_extractor, extractor_weights=extractor_weights
    )
    return out
