"""Latent vs pixel flow matching on the honest split at the same 2-hour budget (issue #25 item 4): both
arms' FID@446 against minutes of training and against steps on one plot, from the curves that
``fid_curves.py`` wrote (``recipe_curves.json``: the TAEF2-latent DiT; ``pixel_curves.json``: the pixel DiT).

    .venv/bin/python experiments/emoji/latent_vs_pixel.py [--floor 85.05]   # -> latent_vs_pixel.png, a table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = {  # label: (curves file, arm name in it)
    "latent: DiT-T/1 w192 on TAEF2 8x8x32": ("recipe_curves.json", "dit_t1w192"),
    "pixel: DiT-T/2 w192 on 64x64x3 (16x16x48)": ("pixel_curves.json", "pixel_dit_t2w192"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floor", type=float, default=85.05)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    print("| arm | minutes | steps | FID@446 | KID |\n| --- | --- | --- | --- | --- |")
    for label, (name, arm) in ARMS.items():
        rows = sorted((r for r in json.loads((HERE / name).read_text()) if r["arm"] == arm), key=lambda r: r["minutes"])
        for ax, key in zip(axes, ("minutes", "step")):
            ax.plot([r[key] for r in rows], [r["fid"] for r in rows], marker="o", label=label)
        for r in rows:
            print(f"| {arm} | {r['minutes']:g} | {r['step']} | {r['fid']:.1f} | {r['kid']:.3f} |")
    for ax, xlabel in zip(axes, ("minutes of training (2-core CPU, 1 thread, shared)", "training steps (batch 64)")):
        ax.axhline(args.floor, color="grey", linestyle="--", linewidth=1)
        ax.axhline(2 * args.floor, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[1].text(0.02, args.floor + 4, f"data floor {args.floor:.1f}", transform=axes[1].get_yaxis_transform())
    axes[1].text(0.02, 2 * args.floor + 4, "goal: 2x floor", transform=axes[1].get_yaxis_transform())
    axes[0].set_ylabel("FID@446 vs the held-out emoji")
    axes[0].legend(fontsize=8)
    fig.suptitle("64 px OpenMoji, honest split: latent vs pixel flow matching, same backbone and step cost")
    fig.tight_layout()
    fig.savefig(HERE / "latent_vs_pixel.png", dpi=120)


if __name__ == "__main__":
    main()
