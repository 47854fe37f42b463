"""FID-vs-wall-clock curves from the in-training FID callback (issue #25 item 4): each run's
``metrics.json`` -> ``eval_history`` (``callbacks=[posthoc_ema,eval_fid]``, written by
``latent_flow.training.callbacks.SampleMetricsCallback``: FID / KID of 446 samples against the 446 held-out
emoji at every evaluation, with ``elapsed_seconds``, the wall clock of the training stage when it began, and
``train_seconds``, that wall clock less the earlier evaluations).

    .venv/bin/python experiments/emoji/callback_curves.py \
        --runs "latent=outputs/emoji25/fid_latent" "pixel=outputs/emoji25/fid_pixel" \
        [--floor 85.05] [--out experiments/emoji/callback_vs_time.png] [--json experiments/emoji/callback_curves.json]

Prints a Markdown table (step, minutes of wall clock, minutes of training, FID, KID, evaluation seconds) and
draws FID against the wall clock (the budget: evaluations included) and against training steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def history(run: Path) -> list[dict]:
    """The run's evaluations in step order; a clear error when the run has none."""
    path = run / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no metrics.json (is {run} a training run directory?)")
    entries = json.loads(path.read_text()).get("eval_history") or []
    missing = [e.get("step") for e in entries if "eval/fid" not in e or "elapsed_seconds" not in e]
    if not entries or missing:
        raise SystemExit(
            f"{path}: eval_history {'is empty' if not entries else f'lacks eval/fid or elapsed_seconds at steps {missing}'}"
            " (train with callbacks=[posthoc_ema,eval_fid]; experiments/emoji/run_recipe.sh fid_latent)"
        )
    return sorted(entries, key=lambda e: e["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR ...")
    parser.add_argument("--floor", type=float, default=85.05, help="the data floor (FID@446), drawn with 2x")
    parser.add_argument("--out", default=str(HERE / "callback_vs_time.png"))
    parser.add_argument("--json", default=str(HERE / "callback_curves.json"))
    args = parser.parse_args()
    runs = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--runs takes NAME=RUN_DIR, got {spec!r}")
        runs[name] = history(Path(folder))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    print("| run | step | wall min | train min | FID@446 | KID | eval s |\n| --- | --- | --- | --- | --- | --- | --- |")
    table = {}
    for name, entries in runs.items():
        rows = [
            {
                "step": e["step"],
                "wall_minutes": round(e["elapsed_seconds"] / 60, 2),
                "train_minutes": round(e["train_seconds"] / 60, 2),
                "fid": e["eval/fid"],
                "kid": e.get("eval/kid"),
                "eval_seconds": e["seconds"],
                "num_samples": e["num_samples"],
            }
            for e in entries
        ]
        table[name] = rows
        axes[0].plot([r["wall_minutes"] for r in rows], [r["fid"] for r in rows], marker="o", label=name)
        axes[1].plot([r["step"] for r in rows], [r["fid"] for r in rows], marker="o", label=name)
        for r in rows:
            kid = "" if r["kid"] is None else f"{r['kid']:.3f}"
            print(
                f"| {name} | {r['step']:,} | {r['wall_minutes']:.1f} | {r['train_minutes']:.1f} | {r['fid']:.1f} "
                f"| {kid} | {r['eval_seconds']:.0f} |"
            )
    for ax, xlabel in zip(
        axes, ("minutes of wall clock, evaluations included (2-core CPU, 1 thread each)", "training steps (batch 64)")
    ):
        ax.axhline(args.floor, color="grey", linestyle="--", linewidth=1)
        ax.axhline(2 * args.floor, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[1].text(0.02, args.floor + 4, f"data floor {args.floor:.1f}", transform=axes[1].get_yaxis_transform())
    axes[1].text(0.02, 2 * args.floor + 4, "goal: 2x floor", transform=axes[1].get_yaxis_transform())
    axes[0].set_ylabel("FID@446 vs the held-out emoji (FID callback)")
    axes[0].legend(fontsize=8)
    fig.suptitle("64 px OpenMoji, honest split: the in-training FID callback, latent vs pixel")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
