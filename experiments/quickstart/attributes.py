"""Which attributes do a shapes model's samples get wrong, and how much of FD-shapes is that?

Reads the ``samples.npz`` of ``python -m latent_flow.evaluate`` runs on a shapes checkpoint (uint8
NHWC ``arr_0``), lets the shapes oracle predict every attribute of every sample, and prints, per
run, the predicted counts of each attribute value next to those of 1,000 real renders (seed 1, the
reference of FD-shapes). Then it separates the two parts of FD-shapes: the real renders of a pool
(seed 777) resampled so that their colour, size and count frequencies are the samples' (weights of
the true attributes, 1,000 drawn without replacement) score ``fd_attribute_mix`` against the
reference; what FD-shapes charges beyond that is image quality.

    .venv/bin/python experiments/quickstart/attributes.py outputs/evaluate/RUN_A outputs/evaluate/RUN_B

The oracle is read from ``LATENT_FLOW_CACHE`` (default ``.cache``; trained there when missing).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from latent_flow.data.shapes import ATTRIBUTE_NAMES, ShapesDataset
from latent_flow.evaluation.oracle import _render, _to_float, fd_shapes, load_or_train_oracle, real_images

#: attributes whose sample frequencies the resampled real set copies
MIXED = ("color", "size", "count")


def _predicted_counts(oracle, images: torch.Tensor) -> dict[str, list[int]]:
    with torch.no_grad():
        out = oracle(images, segment=False)
    return {k: np.bincount(out[k].argmax(1).numpy(), minlength=out[k].shape[1]).tolist() for k in ATTRIBUTE_NAMES}


def _load_samples(run_dir: Path) -> torch.Tensor:
    path = run_dir / "samples.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the out_dir of an evaluate run with save_npz=true")
    with np.load(path) as data:
        if "arr_0" not in data.files:
            raise KeyError(f"{path} has no 'arr_0' (uint8 NHWC samples); keys: {data.files}")
        images = data["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return _to_float(torch.from_numpy(images).permute(0, 3, 1, 2))


def _attribute_mix(pool: dict, target: dict[str, list[int]], n: int, seed: int) -> torch.Tensor:
    """``n`` pool renders drawn with weights that give their true MIXED attributes ``target``'s frequencies."""
    attrs = pool["attributes"].numpy()
    weights = np.ones(len(attrs))
    for name in MIXED:
        col = attrs[:, ATTRIBUTE_NAMES.index(name)]
        want = np.asarray(target[name], dtype=np.float64)
        have = np.bincount(col, minlength=len(want)).astype(np.float64)
        weights *= (want / want.sum())[col] / (have / have.sum())[col]
    idx = np.random.default_rng(seed).choice(len(attrs), n, replace=False, p=weights / weights.sum())
    return _to_float(pool["images_u8"])[torch.from_numpy(idx)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="evaluate out_dirs holding samples.npz")
    p.add_argument("--cache-dir", default=os.environ.get("LATENT_FLOW_CACHE", ".cache"))
    p.add_argument("--pool", type=int, default=8000, help="real renders to resample from")
    a = p.parse_args()

    oracle = load_or_train_oracle(a.cache_dir, 32)
    reference = real_images(1000, 32, seed=1)
    pool = _render(ShapesDataset(num_samples=a.pool, resolution=32, seed=777))
    print(json.dumps({"run": "real (seed 1)", "predicted": _predicted_counts(oracle, reference)}))
    for run in a.runs:
        samples = _load_samples(run)
        counts = _predicted_counts(oracle, samples)
        row = {
            "run": str(run),
            "predicted": counts,
            "fd_shapes": round(fd_shapes(oracle, samples, reference), 1),
            "fd_attribute_mix": round(fd_shapes(oracle, _attribute_mix(pool, counts, 1000, seed=0), reference), 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
