"""The cost of checking a checkpoint against the cost of loading it, on a DiT-XL/2-sized checkpoint.

Builds a ``LatentFlowModule`` with the ``DiT-XL/2`` backbone preset (``build_backbone("DiT-XL/2")``
for ImageNet 256 latents: 4x32x32, 1,000 classes) and its EMA copy, writes its checkpoint (``state_dict``
+ hyper-parameters, no optimizer state) with ``latent_flow.training.checkpoints.save_checkpoint_file``
(atomic, with its ``.sha256``; a plain ``torch.save`` is timed beside it), then times, in rounds with
the best round kept (wall and CPU seconds of this process; the CPU time is what a step costs when
other jobs share the machine):

- ``torch.load`` of the file;
- what ``load_checkpoint`` adds: the SHA-256 of the file against its checksum file, and the finite check
  of every weight tensor; and the zip CRC-32 check that replaces the SHA-256 for a checkpoint written
  without a checksum file;
- ``load_checkpoint`` as a whole (checksum + ``torch.load`` + finite check);

and with ``--end-to-end`` what ``api.load_model`` does: before (a ``torch.load`` for the header, then
Lightning's ``load_from_checkpoint``) and now (``load_flow_module``: one verified load, the module built
from it). The file is read from the page cache after the first round (a warm read, as right after
training; a cold read from disk slows ``torch.load`` and the checksum alike)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checkpoint_integrity.py [--rounds 3] [--dir /tmp] [--end-to-end]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import lightning
import torch

from latent_flow.training.checkpoints import (
    load_checkpoint,
    load_flow_module,
    nonfinite_tensors,
    read_checksum,
    save_checkpoint_file,
    zip_crc_problem,
)
from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.hashing import file_sha256


def _module() -> LatentFlowModule:
    torch.manual_seed(0)
    return LatentFlowModule(
        backbone={"name": "DiT-XL/2"},
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
    parser.add_argument("--end-to-end", action="store_true", help="also time api.load_model before / now (two builds)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "last.ckpt"
        model = _module()
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
            f"DiT-XL/2 backbone ({params / 1e6:.1f}M parameters) + EMA copy: {size / 2**30:.2f} GiB; "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"save (wall / CPU s): torch.save {save_plain[0]:.2f} / {save_plain[1]:.2f}, "
            f"save_checkpoint_file (atomic, fsync, sha256) {save_checked[0]:.2f} / {save_checked[1]:.2f}"
        )

        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            took, loaded = _timed(torch.load, path, map_location="cpu", weights_only=False)
            _best(best, "torch.load", took)
            took, bad = _timed(nonfinite_tensors, loaded["state_dict"])
            _best(best, "finite check", took)
            assert bad == []
            del loaded
            gc.collect()
            took, digest = _timed(file_sha256, path, length=64)
            _best(best, "sha256 of the file", took)
            assert digest == read_checksum(path)
            took, problem = _timed(zip_crc_problem, path)
            _best(best, "zip CRC-32 check (checkpoints without a checksum file)", took)
            assert problem is None
            took, loaded = _timed(load_checkpoint, path)
            _best(best, "load_checkpoint (checksum + torch.load + finite)", took)
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
    added = (
        best["sha256 of the file"][0] + best["finite check"][0],
        best["sha256 of the file"][1] + best["finite check"][1],
    )
    best["**checksum + finite check (added by load_checkpoint)**"] = added
    print(f"\nbest of {args.rounds} rounds (warm page cache), {size / 2**30:.2f} GiB:")
    _table(best, load, "step")
    if end_to_end:
        print(f"\nend to end, best of {args.rounds} rounds:")
        _table(end_to_end, next(iter(end_to_end.values())), "loader")


if __name__ == "__main__":
    main()
