"""Print the tables of experiments/beyond/README.md from the runs' metrics.json / likelihood.json."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

EVAL = Path("outputs/evaluate")
LIK = Path("outputs/likelihood")
ROWS = [  # (label, run name without the seed suffix, model rows per sample)
    ("ODE Heun, 25 steps", "beyond_heun25_cfg2", 100),
    ("ODE Euler, 50 steps (= SDE, diffusion 0)", "beyond_euler50_cfg2", 100),
    ("SDE Euler-Maruyama, 50 steps, diffusion 0.5", "beyond_em50_w0.5_cfg2", 100),
    ("SDE Euler-Maruyama, 50 steps, diffusion 1.0", "beyond_em50_w1.0_cfg2", 100),
    ("SDE Euler-Maruyama, 50 steps, diffusion 2.0", "beyond_em50_w2.0_cfg2", 100),
    ("SDE Euler-Maruyama, 50 steps, diffusion 4.0", "beyond_em50_w4.0_cfg2", 100),
    ("SDE Euler-Maruyama, 100 steps, diffusion 1.0", "beyond_em100_w1.0_cfg2", 200),
    ("Heun 25, CFG 2 in [0.0, 0.7) only", "beyond_heun25_cfg2_iv0.0_0.7", 85),
    ("Heun 25, CFG 2 in [0.3, 1.0] only", "beyond_heun25_cfg2_iv0.3_1.0", 85),
]


def _runs(name: str) -> list[dict]:
    out = []
    for suffix in ("", "_seed1", "_seed2"):
        path = EVAL / f"{name}{suffix}" / "metrics.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
    return out


def main() -> None:
    print("| sampler (CFG 2.0) | NFE | model rows / sample | FD-shapes seed 0 / 1 / 2 | mean | label acc. (mean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, name, rows in ROWS:
        runs = _runs(name)
        if not runs:
            continue
        fds = [r["metrics"]["fd_shapes"] for r in runs]
        accs = [r["metrics"]["label_accuracy"] for r in runs]
        print(
            f"| {label} | {runs[0]['nfe_per_sample']} | {rows} | {' / '.join(f'{v:.1f}' for v in fds)} | "
            f"{statistics.mean(fds):.1f} | {100 * statistics.mean(accs):.1f}% |"
        )
    floor = _runs("beyond_heun25_cfg2")[0]["metrics"]["fd_shapes_floor"]
    print(f"\nFD-shapes floor (two real sets of 500): {floor:.1f}")
    cfg1 = _runs("beyond_heun25_cfg1")
    if cfg1:
        m = cfg1[0]["metrics"]
        print(
            f"Heun 25 without guidance (CFG 1.0, seed 0): FD-shapes {m['fd_shapes']:.1f}, label accuracy {100 * m['label_accuracy']:.1f}%"
        )
    print(
        "\n| run | samples | divergence | bits/dim (latent) | SE over samples | probe SE of the mean | NFE / batch | wall s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("beyond_hutch1", "beyond_hutch4", "beyond_exact4", "beyond_hutch16_4"):
        path = LIK / name / "likelihood.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        div = d["divergence"] + (f" ({d['num_probes']} {d['probe']})" if d["divergence"] == "hutchinson" else "")
        se = d["bits_per_dim_std_error"]
        pse = d["hutchinson_std_error_of_mean"]
        print(
            f"| {name} | {d['num_samples']} | {div}, rtol {d['rtol']:g} | {d['bits_per_dim']:.4f} | "
            f"{'-' if se is None else f'{se:.4f}'} | {'-' if pse is None else f'{pse:.4f}'} | {d['nfe_mean']:.0f} | {d['wall_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
