"""FlowTurbo on emoji: FID / KID@N and latency per image for Heun, FlowTurbo schedules, dopri5 and autoguidance.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/emoji_flowturbo/measure.py \\
        --ckpt outputs/emoji25/fid_latent/checkpoints/last.ckpt \\
        --refiner outputs/emoji_flowturbo/refiner/checkpoints/last.ckpt \\
        --guide outputs/emoji25/fid_latent/checkpoints/step_XXXXXXX.ckpt --out outputs/emoji_flowturbo/measure

Two separate stages, so that the scores never wait on the clock and the clock never runs beside scoring:

1. **Quality.** Every setting is scored by the project's evaluation (``latent_flow.evaluate``'s
   ``run_evaluation``, composed from ``conf/evaluate.yaml`` in this process): ``--num-samples`` samples
   (classes in turn, per-index noise, CFG ``--cfg-scale``, EMA weights), FID / KID against
   ``--reference`` (the 446 held-out emoji by default). One folder per setting under ``OUT/fid/``;
   a setting whose ``metrics.json`` exists is not sampled again (resumable).
2. **Latency.** ms / image = sampling + decoding of one batch of ``--latency-batch`` images (the
   same indices, labels and threads for every setting), timed ``--rounds`` times with the settings
   interleaved (every round runs each setting once, odd rounds in reverse order) after one untimed
   warm-up call each; best and median of the rounds. dopri5 (adaptive, slow) is timed in its first
   ``--dopri5-rounds`` rounds only. Skipped when ``results.json`` already has the same settings timed
   with the same batch and threads (``--retime`` times them again).

Writes ``OUT/results.json``, ``OUT/table.md`` (with the latency reduction of each FlowTurbo schedule
against Heun at matched FID) and ``OUT/fid_vs_latency.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from latent_flow.api import load_model
from latent_flow.cli.run import CONFIG_DIR
from latent_flow.cli.sample import load_guide
from latent_flow.evaluate import run_evaluation
from latent_flow.generation import sample_batches
from latent_flow.utils.config import to_plain

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

DEFAULT_HEUN = "5,8,10,15,25"
DEFAULT_TURBO = "H1P5R3,H2P6R4,H3P7R4"
DEFAULT_REFERENCE = "outputs/reference/emoji64_val_design"


@dataclass
class Setting:
    """One sampler setting: its name (folder), kind, label in tables, and the evaluate overrides."""

    name: str
    kind: str  # heun | flowturbo | dopri5 | autoguidance
    label: str
    overrides: list[str] = field(default_factory=list)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise SystemExit(f"--{what}: expected comma-separated integers, got {text!r}") from exc
    if any(v < 1 for v in values):
        raise SystemExit(f"--{what}: step counts must be >= 1, got {values}")
    return values


def build_settings(args: argparse.Namespace) -> list[Setting]:
    settings = [
        Setting(f"heun{n}", "heun", f"{n} steps", ["sampler=heun", f"sampler.steps={n}"])
        for n in _int_list(args.heun, "heun")
    ]
    for schedule in [s.strip() for s in args.turbo.split(",") if s.strip()]:
        if not args.refiner:
            raise SystemExit("--turbo schedules need --refiner (a refiner checkpoint, +experiment=emoji64_refiner)")
        settings.append(
            Setting(
                f"flowturbo_{schedule}",
                "flowturbo",
                schedule,
                ["sampler=flowturbo", f"sampler.schedule={schedule}", f"sampler.refiner_ckpt_path={args.refiner}"],
            )
        )
    if args.dopri5_tol > 0:
        tol = f"{args.dopri5_tol:g}"
        settings.append(
            Setting("dopri5", "dopri5", f"tol {tol}", ["sampler=dopri5", f"sampler.atol={tol}", f"sampler.rtol={tol}"])
        )
    if args.guide:
        # autoguidance (guide's conditional velocity instead of CFG's unconditional one) applies to the
        # base solvers only: FlowTurbo's refiner was trained against the base's own CFG branches
        for n in _int_list(args.autoguidance_steps, "autoguidance-steps"):
            settings.append(
                Setting(
                    f"autoguidance{args.autoguidance_scale:g}_heun{n}",
                    "autoguidance",
                    f"heun {n}, scale {args.autoguidance_scale:g}",
                    [
                        "sampler=heun",
                        f"sampler.steps={n}",
                        "guidance=autoguidance",
                        f"guide_ckpt_path={args.guide}",
                        f"cfg_scale={args.autoguidance_scale}",
                    ],
                )
            )
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise SystemExit(f"duplicate settings: {names}")
    return settings


def compose_evaluate(overrides: list[str], run_dir: Path) -> DictConfig:
    """``conf/evaluate.yaml`` with ``overrides``, as ``python -m latent_flow.evaluate`` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[f"paths.output_dir={run_dir}", *overrides],
            return_hydra_config=True,
        )
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
    return cfg


def evaluate_overrides(args: argparse.Namespace, setting: Setting, out_dir: Path) -> list[str]:
    common = [
        f"ckpt_path={args.ckpt}",
        f"num_samples={args.num_samples}",
        f"batch_size={args.batch_size}",
        f"cfg_scale={args.cfg_scale}",
        "metrics=[fid,kid]",
        f"evaluation.reference_stats={args.reference}",
        f"out_dir={out_dir}",
        "use_ema=true",
        "seed=0",
    ]
    return common + list(args.override) + setting.overrides


def score(args: argparse.Namespace, setting: Setting) -> dict:
    """FID / KID of one setting through ``run_evaluation`` (skipped when its metrics.json exists)."""
    out_dir = Path(args.out) / "fid" / setting.name
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        print(f"[fid] {setting.name}: already scored ({metrics_path})", flush=True)
    else:
        print(f"[fid] {setting.name}: sampling {args.num_samples} and scoring", flush=True)
        start = time.perf_counter()
        run_evaluation(compose_evaluate(evaluate_overrides(args, setting, out_dir), out_dir / "hydra"))
        print(f"[fid] {setting.name}: {time.perf_counter() - start:.0f} s", flush=True)
    saved = json.loads(metrics_path.read_text())
    m = saved["metrics"]
    if "fid" not in m:
        raise RuntimeError(f"{metrics_path} has no FID ({sorted(m)}): was it scored with metrics=[fid,kid]?")
    return {
        "fid": m["fid"],
        "kid": m.get("kid_mean"),
        "kid_std": m.get("kid_std"),
        "num_samples": m.get("num_samples"),
        "num_reference": m.get("num_reference"),
        "base_nfe": saved.get("base_nfe_per_sample", saved.get("nfe_per_sample")),
        "refiner_nfe": saved.get("refiner_nfe_per_sample", 0),
        "guide_nfe": saved.get("guide_nfe_per_sample", 0),
        "model_rows": saved.get("model_rows_per_sample"),
        "ms_per_image_fid_run": saved.get("ms_per_image"),
        "dir": str(out_dir),
    }


def time_settings(args: argparse.Namespace, settings: list[Setting]) -> dict:
    """ms / image (sampling + decoding) of every setting, interleaved rounds, one batch each."""
    torch.manual_seed(0)
    model = load_model(args.ckpt, device="cpu")
    n = int(args.latency_batch)
    indices = list(range(n))
    labels = torch.tensor([i % model.num_classes for i in indices]) if model.condition.uses_label else None
    runs = {}
    for s in settings:
        cfg = compose_evaluate(
            evaluate_overrides(args, s, Path(args.out) / "latency_cfg"), Path(args.out) / "latency_cfg"
        )
        guide = load_guide(cfg, model)
        runs[s.name] = {"sampler": to_plain(cfg.sampler), "cfg_scale": float(cfg.cfg_scale), "guide": guide}

    def once(name: str, count: int) -> float:
        r = runs[name]
        batch = next(
            sample_batches(
                model,
                indices[:count],
                sampler=r["sampler"],
                batch_size=count,
                labels=None if labels is None else labels[:count],
                cfg_scale=r["cfg_scale"],
                seed=0,
                use_ema=True,
                guide=r["guide"],
            )
        )
        return 1000.0 * batch.seconds / count

    warm = min(8, n)
    for s in settings:  # first calls (allocations, lazy initialisation) outside the timed rounds
        once(s.name, warm)
    times: dict[str, list[float]] = {s.name: [] for s in settings}
    load = []
    for rnd in range(args.rounds):
        order = settings if rnd % 2 == 0 else list(reversed(settings))
        for s in order:
            if s.kind == "dopri5" and rnd >= args.dopri5_rounds:
                continue
            ms = once(s.name, n)
            times[s.name].append(ms)
            print(f"[latency] round {rnd + 1}/{args.rounds} {s.name}: {ms:.1f} ms/image", flush=True)
        load.append(round(os.getloadavg()[0], 2))
    return {
        "batch": n,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "load_average_after_rounds": load,
        "ms_per_image": {k: {"rounds": v, "best": min(v), "median": statistics.median(v)} for k, v in times.items()},
    }


def heun_ms_at_fid(heun: list[dict], fid: float) -> float | None:
    """Heun's latency at ``fid``, linearly interpolated between the two Heun settings around it
    (settings in order of latency); None outside the measured FID range."""
    pts = sorted(heun, key=lambda r: r["ms"])
    for a, b in zip(pts, pts[1:]):
        lo, hi = sorted((a["fid"], b["fid"]))
        if lo <= fid <= hi and a["fid"] != b["fid"]:
            w = (fid - a["fid"]) / (b["fid"] - a["fid"])
            return a["ms"] + w * (b["ms"] - a["ms"])
    return None


def matched(rows: list[dict]) -> list[dict]:
    """For each FlowTurbo / autoguidance row: the fastest Heun at least as good, and Heun interpolated to its FID."""
    heun = [r for r in rows if r["kind"] == "heun"]
    out = []
    for r in rows:
        if r["kind"] not in ("flowturbo", "autoguidance"):
            continue
        ok = sorted((h for h in heun if h["fid"] <= r["fid"]), key=lambda h: h["ms"])
        entry = {"name": r["name"], "fid": r["fid"], "ms": r["ms"]}
        if ok:
            entry["heun_at_least_as_good"] = {"name": ok[0]["name"], "fid": ok[0]["fid"], "ms": ok[0]["ms"]}
            entry["reduction_vs_at_least_as_good"] = 1.0 - r["ms"] / ok[0]["ms"]
        interp = heun_ms_at_fid(heun, r["fid"])
        if interp is not None:
            entry["heun_ms_at_same_fid"] = interp
            entry["reduction_vs_interpolated"] = 1.0 - r["ms"] / interp
        out.append(entry)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else (f"**-{100 * x:.0f}%**" if x >= 0 else f"+{-100 * x:.0f}%")


def write_table(results: dict, path: Path) -> str:
    lat = results["latency"]
    lines = [
        f"checkpoint `{results['ckpt']}`, refiner `{results.get('refiner')}`, guide `{results.get('guide')}`",
        f"FID / KID @{results['num_samples']} vs `{results['reference']}`, CFG {results['cfg_scale']:g}, EMA; "
        f"latency: batch {lat['batch']}, {lat['threads']} thread(s), {lat['rounds']} interleaved rounds "
        f"(1-min load average after each: {', '.join(str(v) for v in lat['load_average_after_rounds'])})",
        "",
        "| sampler | setting | base NFE | refiner NFE | guide NFE | ms / image (best) | ms / image (median) | FID | KID |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        kid = "-" if r["kid"] is None else f"{r['kid']:.4f}"
        lines.append(
            f"| {r['kind']} | {r['label']} | {r['base_nfe']} | {r['refiner_nfe']} | {r['guide_nfe']} | "
            f"{r['ms']:.1f} | {r['ms_median']:.1f} | {r['fid']:.1f} | {kid} |"
        )
    lines += [
        "",
        "Latency at matched FID (best-of-rounds ms; `1 - ms / ms(Heun)`):",
        "",
        "| setting | FID | ms / image | fastest Heun at least as good | reduction | Heun interpolated to this FID | reduction |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in results["matched"]:
        h = m.get("heun_at_least_as_good")
        h_s = (
            "none (better than every Heun measured)"
            if h is None
            else f"{h['name']} ({h['ms']:.1f} ms, FID {h['fid']:.1f})"
        )
        i_s = "-" if "heun_ms_at_same_fid" not in m else f"{m['heun_ms_at_same_fid']:.1f} ms"
        lines.append(
            f"| {m['name']} | {m['fid']:.1f} | {m['ms']:.1f} | {h_s} | {_pct(m.get('reduction_vs_at_least_as_good'))} | "
            f"{i_s} | {_pct(m.get('reduction_vs_interpolated'))} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(results: dict, path: Path, floor: float | None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {"heun": ("o-", "C0"), "flowturbo": ("s", "C3"), "dopri5": ("D", "k"), "autoguidance": ("^", "C2")}
    for kind, (marker, colour) in style.items():
        rows = sorted((r for r in results["rows"] if r["kind"] == kind), key=lambda r: r["ms"])
        if not rows:
            continue
        ax.plot([r["ms"] for r in rows], [r["fid"] for r in rows], marker, color=colour, label=kind)
        for r in rows:
            ax.annotate(r["label"], (r["ms"], r["fid"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if floor is not None:
        ax.axhline(floor, ls="--", color="grey", lw=0.8, label=f"data floor {floor:g}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(f"ms / image (sampling + decoding, batch {results['latency']['batch']}, best of rounds)")
    ax.set_ylabel(f"FID@{results['num_samples']}")
    ax.set_title("FlowTurbo vs Heun / dopri5 / autoguidance on emoji (TAEF2 DiT)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="base flow checkpoint (latent_flow.train)")
    p.add_argument("--refiner", help="refiner checkpoint for --ckpt (+experiment=emoji64_refiner)")
    p.add_argument("--guide", help="autoguidance guide: an earlier checkpoint of the same run (optional)")
    p.add_argument("--out", default="outputs/emoji_flowturbo/measure")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="reference statistics (latent_flow.reference_stats)")
    p.add_argument("--num-samples", type=int, default=446)
    p.add_argument("--batch-size", type=int, default=223, help="batch of the FID sampling runs")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--heun", default=DEFAULT_HEUN, help="Heun step counts")
    p.add_argument("--turbo", default=DEFAULT_TURBO, help="FlowTurbo schedules ('' for none)")
    p.add_argument("--dopri5-tol", type=float, default=1e-5, help="dopri5 atol = rtol (0: no dopri5)")
    p.add_argument("--autoguidance-steps", default="10", help="Heun steps of the autoguidance settings")
    p.add_argument("--autoguidance-scale", type=float, default=3.0)
    p.add_argument("--latency-batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dopri5-rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retime", action="store_true", help="time every setting again")
    p.add_argument("--no-latency", action="store_true", help="scores only (a partial results.json)")
    p.add_argument("--floor", type=float, default=None, help="data floor FID drawn in the plot")
    p.add_argument("--override", action="append", default=[], help="extra evaluate override (repeatable)")
    args = p.parse_args(argv)
    for path, what in ((args.ckpt, "--ckpt"), (args.refiner, "--refiner"), (args.guide, "--guide")):
        if path and not Path(path).is_file():
            raise SystemExit(f"{what} {path} does not exist")
    if not Path(args.reference).exists():
        raise SystemExit(
            f"--reference {args.reference} does not exist: python -m latent_flow.reference_stats data=emoji "
            "data.dataset.split=val split=all out_dir=outputs/reference/emoji64_val_design"
        )
    if args.latency_batch < 1 or args.rounds < 1 or args.num_samples < 2:
        raise SystemExit("--latency-batch and --rounds must be >= 1 and --num-samples >= 2")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = build_settings(args)
    results_path = out / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}

    scores = {s.name: score(args, s) for s in settings}

    latency = previous.get("latency")
    names = [s.name for s in settings]
    stale = (
        args.retime
        or latency is None
        or latency.get("batch") != args.latency_batch
        or latency.get("threads") != args.threads
        or any(n not in latency.get("ms_per_image", {}) for n in names)
    )
    if args.no_latency:
        latency = None
    elif stale:
        latency = time_settings(args, settings)
    else:
        print("[latency] every setting already timed with this batch and thread count (--retime to redo)")

    results = {
        "ckpt": args.ckpt,
        "refiner": args.refiner,
        "guide": args.guide,
        "reference": args.reference,
        "num_samples": args.num_samples,
        "cfg_scale": args.cfg_scale,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "scores": scores,
        "latency": latency,
    }
    if latency is not None:
        rows = []
        for s in settings:
            sc, lt = scores[s.name], latency["ms_per_image"][s.name]
            rows.append(
                {
                    "name": s.name,
                    "kind": s.kind,
                    "label": s.label,
                    **{k: sc[k] for k in ("fid", "kid", "kid_std", "base_nfe", "refiner_nfe", "guide_nfe")},
                    "ms": lt["best"],
                    "ms_median": lt["median"],
                }
            )
        results["rows"] = rows
        results["matched"] = matched(rows)
        print(write_table(results, out / "table.md"))
        plot(results, out / "fid_vs_latency.png", args.floor)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
