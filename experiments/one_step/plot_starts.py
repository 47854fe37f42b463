"""Where the ODE distillation's pairs start (eighth session): FD-shapes at 1 / 2 / 4 NFE (2 and 4 on the shift-2 grid)
of the base and of its continuations with ``objective.ode_start=path|teacher|student``, from a results file.

python experiments/one_step/plot_starts.py experiments/one_step/results_xeon.json experiments/one_step/ode_start.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SERIES = [  # (label, runs: the training seeds)
    ("base: ode1000_shift2_mse", ["ode1000_shift2_mse"]),
    ("base with teacher starts: ode1000_shift2_traj", ["ode1000_shift2_traj"]),
    ("+500, path starts (ctrl)", ["ctrl_from1000s2", "ctrl_from1000s2_seed1"]),
    ("+500, teacher starts", ["trajc_from1000s2"]),
    ("+500, student starts", ["studc_from1000s2", "studc_from1000s2_seed1"]),
]
SAMPLERS = {1: ["flowmap1"], 2: ["sweep2_shift2.0", "sweep2_shift2.0_seed1"], 4: ["sweep4_shift2.0"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--flow", type=float, default=91.3, help="the flow's Heun 25 FD-shapes (the goals' base)")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["run"], r["sampler"]): r["fd_shapes"] for r in json.loads(args.results.read_text())}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in SERIES:
        xs, ys, lo, hi = [], [], [], []
        for nfe, samplers in SAMPLERS.items():
            values = [rows[(run, name)] for run in runs for name in samplers if (run, name) in rows]
            if not values:
                continue
            mean = sum(values) / len(values)
            xs.append(nfe)
            ys.append(mean)
            lo.append(mean - min(values))
            hi.append(max(values) - mean)
        if xs:
            n = len(runs)
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=f"{label} ({n} seed{'s' if n > 1 else ''})")
    ax.axhline(args.flow, color="k", ls=":", label=f"flow, Heun 25 + CFG 2 (50 NFE): {args.flow}")
    ax.axhline(1.2 * args.flow, color="gray", ls="--", lw=0.8, label="2-NFE goal (1.2x)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4], ["1", "2 (shift 2)", "4 (shift 2)"])
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations")
    ax.set_ylabel("FD-shapes @1k (mean, range over sampling / training seeds)")
    ax.set_title("ODE distillation: where the pairs start (Intel Xeon, 2026-12-08)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
