"""Plot the spread of FD-shapes over training and sampling seeds for the 2026-12-05 quick-start recipes.

The values are the measured evaluations of experiments/quickstart/README.md ("Current layout"):
`python -m latent_flow.evaluate ckpt_path=RUN/checkpoints/last.ckpt num_samples=1000 sampler=heun
sampler.steps=25 cfg_scale=2.0 seed=S` on the runs named there (2-core CPU dev machine, 2026-12-05).
Each dot is one evaluation; dots of one training seed share a marker.

    .venv/bin/python experiments/quickstart/fd_spread.py   # writes experiments/quickstart/fd_spread.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: recipe -> {training seed: FD-shapes at sampling seeds 0, 1, ...}
EVALUATIONS = {
    "the recipe\n(label dropout 0.1)": {0: [80.2, 105.3, 86.7, 104.9], 1: [101.4, 113.5, 105.1, 119.7]},
    "label dropout 0.25\n(seed 0 twice)": {0: [96.2, 84.1, 119.6, 102.8], 1: [94.8, 96.8]},
    "label dropout 0.25,\nlr 4e-3": {0: [88.8, 90.1], 1: [95.3, 107.3]},
    "UNet with a 2x2 level,\n1,450 steps": {0: [109.5, 105.9], 1: [92.7, 90.3]},
    "autoencoder\n2,200 x 16": {0: [111.0, 134.7]},
}
TARGET = 100.0
FLOOR = 32.8  # FD-shapes between two sets of 1,000 real renders


def main() -> None:
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    markers = {0: "o", 1: "s"}
    for x, seeds in enumerate(EVALUATIONS.values()):
        values = [v for vs in seeds.values() for v in vs]
        for seed, vs in seeds.items():
            offsets = [(i - (len(vs) - 1) / 2) * 0.07 + (0.12 if seed else -0.12) for i in range(len(vs))]
            ax.scatter([x + o for o in offsets], vs, marker=markers[seed], color="C0" if seed == 0 else "C1", zorder=3)
        ax.hlines(sum(values) / len(values), x - 0.3, x + 0.3, color="black", lw=1.5, zorder=2)
    ax.axhline(TARGET, color="C3", ls="--", lw=1)
    ax.text(len(EVALUATIONS) - 0.5, TARGET + 1.5, "target <= 100", color="C3", ha="right", fontsize=8)
    ax.scatter([], [], marker="o", color="C0", label="training seed 0")
    ax.scatter([], [], marker="s", color="C1", label="training seed 1")
    ax.plot([], [], color="black", label="mean")
    ax.set_xticks(range(len(EVALUATIONS)), list(EVALUATIONS), fontsize=8)
    ax.set_ylabel("FD-shapes (1,000 samples, Heun 25, CFG 2)")
    ax.set_title(f"Quick start, 2026-12-05: one dot per evaluation (floor between real sets {FLOOR})", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(__file__).with_name("fd_spread.png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
