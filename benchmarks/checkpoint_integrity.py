"""The cost of checking a checkpoint against the cost of loading it, on a DiT-XL/2-sized checkpoint.

Builds a ``LatentFlowModule`` with the ``DiT-XL/2`` backbone preset (``build_backbone("DiT-XL/2")``
for ImageNet 256 latents: 4x32x32, 1,000 classes) and its EMA copy, writes its checkpoint (``state_dict``
+ hyper-parameters, no optimizer state) with ``latent_flow.training.checkpoints.save_checkpoint_file``
(atomic, with its ``.xxh128``; a plain ``torch.save`` is timed beside it), then times, in rounds with
the best round kept (wall and CPU seconds of this process; the CPU time is what a step costs when
other jobs share the machine), side by side in one run:

- ``torch.load`` of the file;
- the digests alone: XXH3-128 as ``load_checkpoint`` computes it (the file mapped, hashed where it lies
  in the page cache), XXH3-128 read through a reusable 1 MiB buffer (the alternative to the mapping),
  and SHA-256 (the checksum of checkpoints saved before XXH3-128); the finite check of every weight
  tensor; the zip CRC-32 check of a checkpoint written without a checksum file;
- ``load_checkpoint`` as a whole (checksum + ``torch.load`` + finite check), with the XXH3-128 checksum
  file that saves write, with the hash run before ``torch.load`` instead of beside it, and with the
  ``.sha256`` of a checkpoint saved before (the same bytes, hard-linked under another name);
- with ``--read-once``: the file read into memory once, hashed, and loaded from those bytes
  (``torch.load(io.BytesIO(...))``), the other way to read the file once (it holds the file's bytes and
  the loaded tensors at the same time: twice the memory);

and with ``--end-to-end`` what ``api.load_model`` does: before (a ``torch.load`` for the header, then
Lightning's ``load_from_checkpoint``) and now (``load_flow_module``: one verified load, the module built
from it). The file is read from the page cache after the first round (a warm read, as right after
training; a cold read from disk slows ``torch.load`` and the checksum alike)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checkpoint_integrity.py [--rounds 3] [--dir /tmp] [--end-to-end] [--read-once]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import os
import tempfile
import time
from pathlib import Path

import lightning
import torch
import xxhash

from latent_flow.training.checkpoints import (
    checkpoint_problem,
    load_checkpoint,
    load_flow_module,
    nonfinite_tensors,
    read_checksum,
    save_checkpoint_file,
    zip_crc_problem,
)
from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.hashing import file_digest


def _module(backbone: str = "DiT-XL/2") -> LatentFlowModule:
    torch.manual_seed(0)
    return LatentFlowModule(
        backbone={"name": backbone},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-4},
        ema={"decay": 0.9999},
        latent_shape=[4, 32, 32],
        num_classes=1000,
        latent_stats={"mean": [0.0] * 4, "std": [1.0] * 4},
        autoencoder={"name": "identity"},
    )


def _timed(fn, *args, **kwargs):
    """``((wall seconds, CPU seconds of this process), fn(...))``: the CPU time is what the step costs when
    other jobs share the machine (the wall time then includes waiting for a core)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def _best(best: dict[str, tuple[float, float]], key: str, value: tuple[float, float]) -> None:
    old = best.get(key, (float("inf"), float("inf")))
    best[key] = (min(old[0], value[0]), min(old[1], value[1]))


def _table(rows: dict[str, tuple[float, float]], reference: tuple[float, float], label: str) -> None:
    print(f"| {label} | wall s | CPU s | wall vs first row | CPU vs first row |")
    print("| --- | --- | --- | --- | --- |")
    for key, (wall, cpu) in rows.items():
        print(f"| {key} | {wall:.2f} | {cpu:.2f} | {wall / reference[0]:.2f}x | {cpu / reference[1]:.2f}x |")


def _xxh128_read(path: Path, chunk: int = 1 << 20) -> str:
    """XXH3-128 of a file read through one reusable buffer (``readinto``, no allocation per block)."""
    digest, view = xxhash.xxh3_128(), memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as handle:
        while read := handle.readinto(view):
            digest.update(view[:read])
    return digest.hexdigest()


def _hash_then_load(path: Path) -> dict:
    """``load_checkpoint``'s steps one after the other: the checksum, then ``torch.load``, then the finite check."""
    assert checkpoint_problem(path) is None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert nonfinite_tensors(checkpoint["state_dict"]) == []
    return checkpoint


def _read_once(path: Path, digest: str) -> dict:
    """The file read into memory once, its XXH3-128 taken from those bytes, and loaded from them."""
    data = path.read_bytes()
    assert xxhash.xxh3_128(data).hexdigest() == digest
    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    del data
    assert nonfinite_tensors(checkpoint["state_dict"]) == []
    return checkpoint


def _old_load_model(path: Path) -> LatentFlowModule:
    """``api.load_model`` before checkpoints carried a checksum."""
    header = torch.load(path, map_location="cpu", weights_only=False)
    assert "backbone" in header["hyper_parameters"]
    del header
    return LatentFlowModule.load_from_checkpoint(path, map_location="cpu").eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary folder)")
    parser.add_argument("--backbone", default="DiT-XL/2", help="the backbone preset (DiT-XS/2: a quick trial)")
    parser.add_argument("--end-to-end", action="store_true", help="also time api.load_model before / now (two builds)")
    parser.add_argument(
        "--read-once", action="store_true", help="also time read into memory + hash + torch.load(BytesIO) (2x memory)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "last.ckpt"
        model = _module(args.backbone)
        params = sum(p.numel() for p in model.backbone.parameters())
        checkpoint = {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "global_step": 0,
            "pytorch-lightning_version": lightning.__version__,
        }
        del model
        save_plain, _ = _timed(torch.save, checkpoint, Path(tmp) / "plain.ckpt")
        (Path(tmp) / "plain.ckpt").unlink()
        save_checked, _ = _timed(save_checkpoint_file, checkpoint, path)
        del checkpoint
        gc.collect()
        size = path.stat().st_size
        print(
            f"{args.backbone} backbone ({params / 1e6:.1f}M parameters) + EMA copy: {size / 2**30:.2f} GiB; "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"save (wall / CPU s): torch.save {save_plain[0]:.2f} / {save_plain[1]:.2f}, "
            f"save_checkpoint_file (atomic, fsync, XXH3-128) {save_checked[0]:.2f} / {save_checked[1]:.2f}"
        )
        recorded = read_checksum(path)
        assert recorded is not None and recorded.algorithm == "xxh128"
        # the same bytes under another name, with the .sha256 that checkpoints saved before XXH3-128 carry
        legacy = Path(tmp) / "legacy.ckpt"
        os.link(path, legacy)
        sha256 = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                sha256.update(block)
        legacy.with_name("legacy.ckpt.sha256").write_text(f"{sha256.hexdigest()}  legacy.ckpt\n")

        best: dict[str, tuple[float, float]] = {}
        for round_ in range(args.rounds):
            took, loaded = _timed(torch.load, path, map_location="cpu", weights_only=False)
            _best(best, "torch.load", took)
            plain = took
            took, bad = _timed(nonfinite_tensors, loaded["state_dict"])
            _best(best, "finite check", took)
            assert bad == []
            del loaded
            gc.collect()
            # right after torch.load, in the same state of the machine: their ratio is the round's cost of the check
            took, loaded = _timed(load_checkpoint, path)
            _best(best, "**load_checkpoint (XXH3-128 checksum + torch.load + finite)**", took)
            print(
                f"round {round_ + 1}: torch.load {plain[0]:.2f} s wall / {plain[1]:.2f} s CPU, then load_checkpoint "
                f"{took[0]:.2f} / {took[1]:.2f} ({took[0] / plain[0]:.2f}x / {took[1] / plain[1]:.2f}x)",
                flush=True,
            )
            del loaded
            gc.collect()
            took, digest = _timed(file_digest, path, "xxh128")
            _best(best, "XXH3-128 of the file (mapped: load_checkpoint's)", took)
            assert digest == recorded.digest
            took, digest = _timed(_xxh128_read, path)
            _best(best, "XXH3-128 of the file (read through a 1 MiB buffer)", took)
            assert digest == recorded.digest
            took, digest = _timed(file_digest, path, "sha256")
            _best(best, "SHA-256 of the file (checkpoints saved before)", took)
            assert digest == sha256.hexdigest()
            took, problem = _timed(zip_crc_problem, path)
            _best(best, "zip CRC-32 check (checkpoints without a checksum file)", took)
            assert problem is None
            took, loaded = _timed(_hash_then_load, path)
            _best(best, "the same steps one after the other (hash, then torch.load)", took)
            del loaded
            gc.collect()
            took, loaded = _timed(load_checkpoint, legacy)
            _best(best, "load_checkpoint of a checkpoint saved before (SHA-256 checksum)", took)
            del loaded
            gc.collect()
            if args.read_once:
                took, loaded = _timed(_read_once, path, recorded.digest)
                _best(best, "read once: bytes in memory, XXH3-128 of them, torch.load(BytesIO), finite", took)
                del loaded
                gc.collect()

        end_to_end: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds if args.end_to_end else 0):
            took, model = _timed(_old_load_model, path)
            _best(end_to_end, "api.load_model before (header torch.load + load_from_checkpoint)", took)
            del model
            gc.collect()
            took, model = _timed(load_flow_module, path, device="cpu")
            _best(end_to_end, "api.load_model now (load_flow_module: verified load + build)", took)
            del model
            gc.collect()

    load = best["torch.load"]
    print(f"\nbest of {args.rounds} rounds (warm page cache), {size / 2**30:.2f} GiB:")
    _table(best, load, "step")
    if end_to_end:
        print(f"\nend to end, best of {args.rounds} rounds:")
        _table(end_to_end, next(iter(end_to_end.values())), "loader")


if __name__ == "__main__":
    main()
