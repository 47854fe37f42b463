"""Tables and plot of experiments/beyond/emoji_nfe.sh: FID vs NFE per sampling method on emoji, and
the bits/dim of the latent and the pixel model.

    .venv/bin/python experiments/beyond/emoji_nfe.py [--out-dir outputs/emoji_nfe] [--plot experiments/beyond/emoji_fid_vs_nfe.png]

Reads ``<out-dir>/eval/<method><NFE>/metrics.json`` (``latent_flow.evaluate``) and
``<out-dir>/likelihood/<arm>/likelihood.json`` (``latent_flow.likelihood``); writes the plot and
``emoji_nfe.json`` (the rows) next to it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

#: run-name prefix -> (label, the model it samples)
METHODS = {
    "ode_heun": ("ODE Heun, no guidance", "taef2"),
    "cfg_heun": ("ODE Heun + CFG 2", "taef2"),
    "interval_heun": ("ODE Heun + CFG 2 in [0.3, 1]", "taef2"),
    "auto_heun": ("ODE Heun + autoguidance 2 (guide: step 600)", "taef2"),
    "auto_g300_heun": ("ODE Heun + autoguidance 2 (guide: step 300)", "taef2"),
    "cfg_euler": ("ODE Euler + CFG 2", "taef2"),
    "sde_cfg_em": ("SDE Euler-Maruyama (diffusion 1) + CFG 2", "taef2"),
    "pixel_cfg_heun": ("pixel model: ODE Heun + CFG 2", "pixel"),
}


def load_rows(out_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((out_dir / "eval").glob("*/metrics.json")):
        match = re.fullmatch(r"(.+?)(\d+)", path.parent.name)
        if match is None or match.group(1) not in METHODS:
            continue
        m = json.loads(path.read_text())
        rows.append(
            {
                "run": path.parent.name,
                "method": match.group(1),
                "nfe": m["nfe_per_sample"],
                "guide_nfe": m.get("guide_nfe_per_sample", 0),
                "model_rows": m.get("model_rows_per_sample"),
                "fid": m["metrics"]["fid"],
                "kid": m["metrics"].get("kid_mean"),
                "ms_per_image": m.get("ms_per_image"),
            }
        )
    return sorted(rows, key=lambda r: (list(METHODS).index(r["method"]), r["nfe"]))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for method, (label, _) in METHODS.items():
        pts = [r for r in rows if r["method"] == method]
        if not pts or METHODS[method][1] != "taef2":  # the pixel model (FID ~290) is in the table only
            continue
        axes[0].plot([r["nfe"] for r in pts], [r["fid"] for r in pts], marker="o", label=label)
        axes[1].plot([r["model_rows"] for r in pts], [r["fid"] for r in pts], marker="o", label=label)
    axes[0].set_xlabel("NFE of the main model per sample")
    axes[1].set_xlabel("network rows per sample (CFG: 2 per guided NFE; autoguidance: + guide)")
    axes[0].set_ylabel("FID@396 vs the 396 held-out emoji")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([6, 10, 20, 40, 80])
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle("64 px OpenMoji, class-conditional DiT-T/1 on TAEF2 latents (1,200 steps), EMA, FID@396")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="outputs/emoji_nfe")
    parser.add_argument("--plot", default="experiments/beyond/emoji_fid_vs_nfe.png")
    args = parser.parse_args()
    out_dir, plot_path = Path(args.out_dir), Path(args.plot)
    rows = load_rows(out_dir)
    nfes = sorted({r["nfe"] for r in rows})
    print("FID@396 (KID x 1e3) per method and NFE of the main model; network rows per sample in brackets\n")
    print("| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("| --- |" + " --- |" * len(nfes))
    for method, (label, _) in METHODS.items():
        cells = {r["nfe"]: r for r in rows if r["method"] == method}
        if not cells:
            continue
        text = [
            f"{c['fid']:.1f} ({1e3 * c['kid']:.0f}) [{c['model_rows']:g}]" if (c := cells.get(n)) else "-" for n in nfes
        ]
        print(f"| {label} | " + " | ".join(text) + " |")
    print("\n| model | space | D | bits/dim | SE over samples | samples | NFE / batch | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm in ("taef2", "pixel"):
        path = out_dir / "likelihood" / arm / "likelihood.json"
        if path.exists():
            lik = json.loads(path.read_text())
            print(
                f"| {arm} | {lik['statement']} | {lik['num_dims']} | {lik['bits_per_dim']:.3f} | "
                f"{lik['bits_per_dim_std_error']:.3f} | {lik['num_samples']} | {lik['nfe_mean']:.0f} | {lik['wall_seconds']:.0f} |"
            )
    if rows:
        plot(rows, plot_path)
        plot_path.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        print(f"\nwrote {plot_path} and {plot_path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
