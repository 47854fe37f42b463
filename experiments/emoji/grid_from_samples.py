"""A grid of an evaluation's samples, one row per emoji group (the order of ``EMOJI_GROUPS``), the first
``--per-row`` samples of each class in index order (``samples.npz`` of ``python -m latent_flow.evaluate``).

    .venv/bin/python experiments/emoji/grid_from_samples.py --samples EVAL_DIR/samples.npz --out grid.png [--per-row 8]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torchvision.utils import make_grid

from latent_flow.utils.images import save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-row", type=int, default=8)
    parser.add_argument("--upscale", type=int, default=2)
    args = parser.parse_args()
    data = np.load(args.samples)
    images, labels = data["arr_0"], data["labels"]
    rows = []
    for label in range(int(labels.max()) + 1):
        picked = images[labels == label][: args.per_row]
        if len(picked) < args.per_row:
            raise SystemExit(f"class {label} has {len(picked)} samples, fewer than --per-row {args.per_row}")
        rows.append(picked)
    batch = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2)
    grid = make_grid(batch, nrow=args.per_row, padding=2, pad_value=255)
    grid = grid.repeat_interleave(args.upscale, 1).repeat_interleave(args.upscale, 2)
    save_png(grid.permute(1, 2, 0).numpy(), args.out)
    print(f"{args.out}: {len(rows)} rows x {args.per_row}")


if __name__ == "__main__":
    main()
