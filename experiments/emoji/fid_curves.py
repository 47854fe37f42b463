"""FID against the held-out statistics for every time checkpoint of the emoji study's runs, a table
and the plot (FID vs minutes of training).

    .venv/bin/python experiments/emoji/fid_curves.py --runs taef2=outputs/emoji/taef2 kl=outputs/emoji/kl \
        pixel=outputs/emoji/pixel [--num-samples 446] [--steps 10] [--cfg-scale 2.0] [--interval 7.5] \
        [--budget 30] [--name fid] [--extra cfg_interval=[0.3,1.0] ...]

Each checkpoint is scored by ``python -m latent_flow.evaluate`` (the standard Inception, EMA weights,
Heun, per-index seeds; resumable) into ``<run>/<name>/<checkpoint>/``. The checkpoints are written every
``--interval`` minutes of training by ``ModelCheckpoint(train_time_interval=...)`` (k-th = k x interval;
last.ckpt = the end of the ``--budget``). The defaults score against the honest held-out split
(``outputs/reference/emoji64_val_design``, 446 images); the 2026-12-02 tables used 396 (split_by=sequence).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _checkpoints(run: Path, interval: float = 7.5, budget: float = 30.0) -> list[tuple[float, int, Path]]:
    """(minutes of training, global step, path) of the time checkpoints (every ``interval`` minutes)
    and last.ckpt (the end of the ``budget``)."""
    ckpts = sorted((run / "checkpoints").glob("step_*.ckpt"))
    out = []
    for k, path in enumerate(ckpts, start=1):
        step = int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
        out.append((interval * k, step, path))
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():
        step = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
        if not out or step > out[-1][1]:
            out.append((budget, step, last))  # the end of the budget (trainer.max_time)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="name=run_dir")
    parser.add_argument("--reference", default="outputs/reference/emoji64_val_design")
    parser.add_argument("--num-samples", type=int, default=446)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="*",
        default=None,
        help="score only the checkpoints at these minutes of training (default: all)",
    )
    parser.add_argument("--interval", type=float, default=7.5, help="minutes between the time checkpoints")
    parser.add_argument("--budget", type=float, default=30.0, help="minutes of trainer.max_time (last.ckpt)")
    parser.add_argument("--name", default="fid", help="files: <name>_curves.json, <name>_vs_time.png")
    parser.add_argument("--extra", nargs="*", default=[], help="more evaluate overrides (e.g. cfg_scale=1.5)")
    parser.add_argument("--floor", type=float, default=None, help="draw the data floor (FID of real images)")
    parser.add_argument("--out", default="experiments/emoji")
    args = parser.parse_args()
    rows = []
    for spec in args.runs:
        name, run = spec.split("=", 1)
        for minutes, step, ckpt in _checkpoints(Path(run), args.interval, args.budget):
            if args.minutes is not None and minutes not in args.minutes:
                continue
            out_dir = Path(run) / args.name / ckpt.stem
            metrics_file = out_dir / "metrics.json"
            if not metrics_file.exists():
                cmd = [
                    sys.executable,
                    "-m",
                    "latent_flow.evaluate",
                    f"ckpt_path={ckpt}",
                    f"num_samples={args.num_samples}",
                    "batch_size=132",
                    "sampler=heun",
                    f"sampler.steps={args.steps}",
                    f"cfg_scale={args.cfg_scale}",
                    "metrics=[fid,kid]",
                    f"evaluation.reference_stats={args.reference}",
                    f"out_dir={out_dir}",
                    f"hydra.run.dir={out_dir}/hydra",
                    *args.extra,
                ]
                print(" ".join(cmd), flush=True)
                subprocess.run(cmd, check=True, env={**os.environ})
            summary = json.loads(metrics_file.read_text())
            rows.append(
                {
                    "arm": name,
                    "minutes": minutes,
                    "step": step,
                    "fid": summary["metrics"]["fid"],
                    "kid": summary["metrics"].get("kid_mean"),
                    "named": summary.get("reported", {}),
                    "ms_per_image": summary.get("ms_per_image"),
                    "checkpoint": str(ckpt),
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.out)
    previous = (
        json.loads((out / f"{args.name}_curves.json").read_text())
        if (out / f"{args.name}_curves.json").exists()
        else []
    )
    keep = {(r["arm"], r["minutes"]) for r in rows}
    rows = sorted(
        [r for r in previous if (r["arm"], r["minutes"]) not in keep] + rows, key=lambda r: (r["arm"], r["minutes"])
    )  # runs scored in several calls add up
    (out / f"{args.name}_curves.json").write_text(json.dumps(rows, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name in dict.fromkeys(r["arm"] for r in rows):
        pts = [r for r in rows if r["arm"] == name]
        for ax, key in zip(axes, ("minutes", "step")):
            ax.plot([r[key] for r in pts], [r["fid"] for r in pts], marker="o", label=name)
    for ax, label in zip(axes, ("minutes of training (shared 2-core CPU)", "training steps (batch 64)")):
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    if args.floor is not None:
        for ax in axes:
            ax.axhline(args.floor, color="grey", linestyle="--", linewidth=1)
        axes[1].text(0.02, args.floor + 5, f"data floor {args.floor:.1f}", transform=axes[1].get_yaxis_transform())
    axes[0].set_ylabel(f"FID@{args.num_samples} vs held-out")
    axes[0].legend()
    fig.suptitle(f"64 px OpenMoji, class-conditional, Heun {args.steps}, CFG {args.cfg_scale}, EMA")
    fig.tight_layout()
    fig.savefig(out / f"{args.name}_vs_time.png", dpi=120)
    print("| arm | minutes | step | FID | KID |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arm']} | {r['minutes']} | {r['step']} | {r['fid']:.1f} | {r['kid']:.4f} |")


if __name__ == "__main__":
    main()
