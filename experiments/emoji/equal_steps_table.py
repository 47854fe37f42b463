"""The #25 recipe table at equal steps: each arm's final FID / KID beside the baseline's at the same step
(at the step that has seen as many images, for another batch size).

python experiments/emoji/equal_steps_table.py ARM [ARM ...]  (after experiments/emoji/equal_steps.sh)

The baseline is ``outputs/emoji25/dit_t1w192`` scored by ``fid_curves.py --name recipe`` (its
``recipe/step_<N>/metrics.json``); an arm's step count and training seconds come from its ``metrics.json``.
Writes ``experiments/emoji/equal_steps.json`` (rows merged by arm).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

RUNS = Path("outputs/emoji25")
BASELINE_BATCH = 64
OUT = Path("experiments/emoji/equal_steps.json")


def _scores(path: Path) -> dict | None:
    if not path.exists():
        return None
    m = json.loads(path.read_text())["metrics"]
    return {"fid": round(m["fid"], 1), "kid": round(m["kid_mean"], 4), "num_samples": m["num_samples"]}


def _nearest_scored(step: float) -> int:
    """The baseline's scored checkpoint step nearest ``step`` (within 1%; else ``round(step)``, unscored)."""
    scored = [int(p.name.split("_")[1]) for p in (RUNS / "dit_t1w192" / "recipe").glob("step_*")]
    near = min(scored, key=lambda s: abs(s - step), default=None)
    return near if near is not None and abs(near - step) <= 0.01 * step else round(step)


def row(arm: str) -> dict:
    run = RUNS / arm
    summary = json.loads((run / "metrics.json").read_text())
    step = int(summary["global_step"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    batch = int(config["data"]["batch_size"])
    base_step = _nearest_scored(step * batch / BASELINE_BATCH)  # the baseline's step that saw as many images
    base = _scores(RUNS / "dit_t1w192" / "recipe" / f"step_{base_step:07d}" / "metrics.json")
    return {
        "arm": arm,
        "steps": step,
        "batch": batch,
        "resolution": int(config["data"]["dataset"]["resolution"]),  # the baseline's is 64 px
        "baseline_step": base_step,
        "train_seconds": round(summary["seconds"]["flow_training_stage"]),
        **(_scores(run / "recipe" / "last" / "metrics.json") or {}),
        "baseline_fid": base and base["fid"],
        "baseline_kid": base and base["kid"],
    }


def main(arms: list[str]) -> None:
    rows = {r["arm"]: r for r in json.loads(OUT.read_text())} if OUT.exists() else {}
    rows.update({arm: row(arm) for arm in arms})
    OUT.write_text(json.dumps(list(rows.values()), indent=2) + "\n")
    print("| arm | steps x batch | train s | FID@446 | KID | baseline at as many images: step, FID / KID |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows.values():
        base = "-" if r["baseline_fid"] is None else f"{r['baseline_step']}, {r['baseline_fid']} / {r['baseline_kid']}"
        steps = f"{r['steps']} x {r['batch']}"
        print(f"| {r['arm']} | {steps} | {r['train_seconds']} | {r.get('fid')} | {r.get('kid')} | {base} |")


if __name__ == "__main__":
    main(sys.argv[1:])
