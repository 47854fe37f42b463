"""The results table of experiments/one_step: every ``<run>/eval/<name>/metrics.json`` under OUT as Markdown.

python experiments/one_step/table.py outputs/one_step  (prints the table; writes OUT/results.json)
"""

from __future__ import annotations

import json
import sys
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


def main(out: Path) -> None:
    table = rows(out)
    (out / "results.json").write_text(json.dumps(table, indent=2))
    print("| run | sampler | NFE | network rows | FD-shapes | label accuracy | ms / image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        acc = "" if r["label_accuracy"] is None else f"{100 * r['label_accuracy']:.1f}%"
        fd = "" if r["fd_shapes"] is None else f"{r['fd_shapes']:.1f}"
        print(f"| {r['run']} | {r['sampler']} | {r['nfe']} | {r['model_rows']} | {fd} | {acc} | {r['ms_per_image']} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/one_step"))
