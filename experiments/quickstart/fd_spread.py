"""Plot the spread of FD-shapes over training and sampling seeds for the quick-start recipes of 2026-12-05/06.

The values are the measured evaluations of experiments/quickstart/README.md ("Current layout" and the
2026-12-05 layout): `python -m latent_flow.evaluate ckpt_path=RUN/checkpoints/last.ckpt num_samples=1000
sampler=heun sampler.steps=25 cfg_scale=2.0 seed=S` on the runs named there (2-core CPU dev machine), all
scored by the packaged shapes oracle. Each dot is one evaluation; dots of one training seed share a marker
(seed 42 is the default, `make train`).

    .venv/bin/python experiments/quickstart/fd_spread.py   # writes experiments/quickstart/fd_spread.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: the shipped recipe (2026-12-06): 2,200 steps, times mean -0.5; seed 42 = `make train` (2 threads)
FINAL_LABEL = "the recipe (12-06)\n2,200 steps, mean -0.5"
FINAL = {42: [75.8, 79.3, 91.6, 107.6], 1: [91.9, 79.5, 99.1, 88.0], 2: [90.1, 80.5, 85.4, 85.3]}
#: recipe -> {training seed: FD-shapes at sampling seeds 0, 1, ...}
EVALUATIONS = {
    "2026-12-05 recipe\n2,000 steps": {42: [80.2, 105.3, 86.7, 104.9], 1: [101.4, 113.5, 105.1, 119.7]},
    "label dropout\n0.25": {42: [96.2, 84.1, 119.6, 102.8], 1: [94.8, 96.8]},
    "label dropout 0.25,\nlr 4e-3": {42: [88.8, 90.1], 1: [95.3, 107.3]},
    "UNet with a 2x2\nlevel, 1,450 steps": {42: [109.5, 105.9], 1: [92.7, 90.3]},
    "times mean -0.5\n2,000 steps": {42: [95.3, 97.7], 1: [95.3, 97.9]},
    "times mean 0\n2,400 steps": {42: [87.0, 94.8], 1: [110.1, 105.8]},
    "times mean -0.5\n2,400 steps": {42: [77.9, 79.2], 1: [89.4, 91.4]},
    FINAL_LABEL: FINAL,
}
TARGET = 100.0
FLOOR = 32.8  # FD-shapes between two sets of 1,000 real renders
SEEDS = {42: ("o", "C0"), 1: ("s", "C1"), 2: ("^", "C2")}  # training seed -> marker, colour


def main() -> None:
    fig, ax = plt.subplots(figsize=(11, 4.4))
    for x, seeds in enumerate(EVALUATIONS.values()):
        values = [v for vs in seeds.values() for v in vs]
        for j, (seed, vs) in enumerate(seeds.items()):
            centre = (j - (len(seeds) - 1) / 2) * 0.24
            offsets = [centre + (i - (len(vs) - 1) / 2) * 0.06 for i in range(len(vs))]
            marker, colour = SEEDS[seed]
            ax.scatter([x + o for o in offsets], vs, marker=marker, color=colour, zorder=3)
        ax.hlines(sum(values) / len(values), x - 0.35, x + 0.35, color="black", lw=1.5, zorder=2)
    ax.axhline(TARGET, color="C3", ls="--", lw=1)
    ax.text(len(EVALUATIONS) - 0.5, TARGET + 1.5, "target <= 100", color="C3", ha="right", fontsize=8)
    for seed, (marker, colour) in SEEDS.items():
        ax.scatter([], [], marker=marker, color=colour, label=f"training seed {seed}")
    ax.plot([], [], color="black", label="mean")
    ax.set_xticks(range(len(EVALUATIONS)), list(EVALUATIONS), fontsize=7.5)
    ax.set_ylabel("FD-shapes (1,000 samples, Heun 25, CFG 2)")
    ax.set_title(
        f"Quick start, 2026-12-05/06: one dot per evaluation (floor between real sets {FLOOR}); "
        "the last column is the shipped recipe",
        fontsize=9,
    )
    ax.set_ylim(62, 124)
    ax.legend(fontsize=8, loc="lower left", ncol=4)
    fig.tight_layout()
    out = Path(__file__).with_name("fd_spread.png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
