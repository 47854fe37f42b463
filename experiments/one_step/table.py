"""The results table of experiments/one_step: every ``<run>/eval/<name>/metrics.json`` under OUT as Markdown,
and the quality-vs-NFE plot.

python experiments/one_step/table.py outputs/one_step [--keep experiments/one_step/results.json]
    [--plot experiments/one_step/quality_vs_nfe.png] [--extra-points FILE.json] [--plot-runs RUN ...]
    [--shift-plot experiments/one_step/grid_shift.png]

Prints the table and writes OUT/results.json. ``--keep`` adds the rows of an earlier results file whose run and
sampler are not under OUT (runs measured in an earlier session: their output folders are gone, their numbers are kept).
``--extra-points`` adds rows measured elsewhere (e.g. FlowTurbo of the same model by benchmarks/flowturbo.py) in
the same row format (run, sampler, nfe, fd_shapes, label_accuracy, ms_per_image); they go on the plot only.
``--shift-plot`` draws the grid-shift sweeps (``sweepN_shiftS`` rows, with each run's ``flowmapN`` at shift 1):
FD-shapes against the shift, one line per run and NFE.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def rows(out: Path) -> list[dict]:
    found = []
    for path in sorted(out.glob("*/eval/*/metrics.json")):
        m = json.loads(path.read_text())
        run, name = path.parts[-4], path.parts[-2]
        metrics = m.get("metrics", {})
        found.append(
            {
                "run": run,
                "sampler": name,
                "nfe": m.get("nfe_per_sample"),
                "model_rows": m.get("model_rows_per_sample"),
                "fd_shapes": metrics.get("fd_shapes"),
                "label_accuracy": metrics.get("label_accuracy"),
                "ms_per_image": m.get("ms_per_image"),
            }
        )
    return found


def merge(new: list[dict], kept: list[dict]) -> list[dict]:
    """``new`` plus the rows of ``kept`` whose (run, sampler) does not appear in ``new`` (a run trained again and
    scored on some samplers keeps its other samplers' earlier rows)."""
    seen = {(r["run"], r["sampler"]) for r in new}
    return new + [r for r in kept if (r["run"], r["sampler"]) not in seen]


def family(row: dict) -> str:
    """Plot series: the run and the sampler's name without its step count (flowmap4 -> flowmap)."""
    sampler = re.sub(r"\d+", "", row["sampler"]).rstrip("_")
    return f"{row['run']} / {sampler}"


def plot(table: list[dict], path: Path, extra: list[dict], runs: list[str] | None = None) -> None:
    """Flow-map runs as their ``flowmap`` series only (their ODE scores are in the table), the flow's solvers as
    dashed lines; ``runs``: only these runs (the flow is always drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in table + extra:
        if r.get("fd_shapes") is None or not r.get("nfe"):
            continue
        if r["run"] != "flow" and (r["sampler"].startswith("heun") or (runs and r["run"] not in runs)):
            continue
        # a sampler setting swept at one NFE (its own table), or a second sampling seed: not a series
        if r["sampler"].startswith("sweep") or "_seed" in r["sampler"]:
            continue
        series.setdefault(family(r), []).append(r)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    colours = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    for k, (name, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts, key=lambda r: r["nfe"])
        # flow maps: circles and solid lines; the same models sampled as ODEs (and the flow's solvers): squares
        style = "o-" if "flowmap" in name or "turbo" in name else "s--"
        ax.plot(
            [p["nfe"] for p in pts],
            [p["fd_shapes"] for p in pts],
            style,
            label=name,
            ms=4,
            color=colours[k % len(colours)],
        )
    _flow_lines(ax, table, (1.0, 1.2, 1.5), x=1.02)
    ax.set_yscale("log")
    _finish(fig, ax, path, "network evaluations per image (NFE)", "Quick start (shapes): quality vs NFE")


def _flow_lines(ax, table: list[dict], factors: tuple[float, ...], x: float) -> None:
    """Horizontal lines at ``factors`` times the flow's best 50-NFE FD-shapes (the goals' references)."""
    best = min((r["fd_shapes"] for r in table if r["run"] == "flow" and r["nfe"] >= 50), default=None)
    if best is not None:
        for factor, style in zip(factors, ("-", "--", ":")):
            ax.axhline(best * factor, color="grey", lw=0.8, ls=style)
            ax.text(x, best * factor, f"{factor}x flow 50 NFE", fontsize=7, va="bottom", color="grey")


def _finish(fig, ax, path: Path, xlabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FD-shapes @1k (lower is better)")
    ax.set_title(title)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def shift_plot(table: list[dict], path: Path) -> None:
    """FD-shapes against ``sampler.shift`` for the runs with ``sweepN_shiftS`` rows (``flowmapN`` is shift 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = {(r["run"], r["nfe"]) for r in table if r["sampler"].startswith("sweep")}
    lines: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in table:
        key = (r["run"], r["nfe"])
        if key not in swept or r.get("fd_shapes") is None:
            continue
        match = re.fullmatch(r"sweep\d+_shift([\d.]+)", r["sampler"])
        if match:
            lines.setdefault(key, []).append((float(match.group(1)), r["fd_shapes"]))
        elif r["sampler"] == f"flowmap{r['nfe']}":
            lines.setdefault(key, []).append((1.0, r["fd_shapes"]))
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    colours = plt.get_cmap("tab20").colors
    runs = sorted({run for run, _ in lines})
    for (run, nfe), pts in sorted(lines.items()):
        pts.sort()
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            "o-" if nfe == 2 else "s--",
            color=colours[runs.index(run) % len(colours)],
            ms=4,
            label=f"{run}, {nfe} NFE",
        )
    _flow_lines(ax, table, (1.0, 1.2), x=0.5)
    ax.set_yscale("log")
    _finish(
        fig,
        ax,
        path,
        "sampler.shift (time_grid=shifted; 1 = uniform; the 2-step midpoint is 1 / (1 + shift))",
        "Flow maps at 2 and 4 NFE: the sampling grid's shift",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="outputs/one_step", type=Path)
    parser.add_argument("--keep", type=Path, help="earlier results.json: rows of runs not under OUT are kept")
    parser.add_argument("--plot", type=Path, help="write the quality-vs-NFE plot (PNG) here")
    parser.add_argument("--extra-points", type=Path, help="rows measured elsewhere, plotted only")
    parser.add_argument("--plot-runs", nargs="+", help="plot only these runs (and the flow)")
    parser.add_argument("--shift-plot", type=Path, help="write the grid-shift sweep plot (PNG) here")
    args = parser.parse_args()
    table = rows(args.out)
    if args.keep is not None:
        table = merge(table, json.loads(args.keep.read_text()))
    (args.out / "results.json").write_text(json.dumps(table, indent=2))
    print("| run | sampler | NFE | network rows | FD-shapes | label accuracy | ms / image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        acc = "" if r["label_accuracy"] is None else f"{100 * r['label_accuracy']:.1f}%"
        fd = "" if r["fd_shapes"] is None else f"{r['fd_shapes']:.1f}"
        print(f"| {r['run']} | {r['sampler']} | {r['nfe']} | {r['model_rows']} | {fd} | {acc} | {r['ms_per_image']} |")
    if args.plot is not None:
        extra = json.loads(args.extra_points.read_text()) if args.extra_points else []
        plot(table, args.plot, extra, args.plot_runs)
        print(f"plot -> {args.plot}")
    if args.shift_plot is not None:
        shift_plot(table, args.shift_plot)
        print(f"shift plot -> {args.shift_plot}")


if __name__ == "__main__":
    main()
