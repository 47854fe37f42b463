"""Train (or load from the cache) the pixel-space attribute judges and score them on the real held-out emoji.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/emoji_compositional/judges.py \
        [--root .cache/emoji] [--cache-dir .cache] [--attributes skin hair group gender color] [--steps 500] \
        [--fold hair 1F469] [--out experiments/emoji_compositional/judges.json]

One small CNN per attribute (``latent_flow.evaluation.attribute_judge``), trained on the 3,498 real OpenMoji
training images at 64 px (``split_by=design``, the emoji recipe's split) with their attributes
(``latent_flow.data.emoji_attributes``), cached in ``<cache-dir>/judges/``. Writes per attribute the
held-out accuracy, balanced accuracy and per-value counts / recalls to ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from latent_flow.data.emoji import EmojiDataset
from latent_flow.evaluation.attribute_judge import (
    JudgeConfig,
    attribute_arrays,
    judge_scores,
    load_or_train_judges,
    train_judge,
)

ORDER = ("skin", "hair", "group", "gender", "color")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def judge_table(judges_json: dict) -> str:
    """Markdown: per attribute, held-out images, accuracy, balanced accuracy, per-value count (recall)."""
    lines = [
        "| attribute | held-out images | accuracy | balanced accuracy | per value: held-out count (recall) | "
        "train balanced accuracy |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, entry in judges_json["judges"].items():
        held = entry.get("held_out") or {}
        per = ", ".join(f"{v} {p['count']} ({_fmt(p['recall'], 2)})" for v, p in held.get("per_value", {}).items())
        fmt = _fmt
        lines.append(
            f"| {name} | {held.get('num_images', 0)} | {fmt(held.get('accuracy'))} | "
            f"{fmt(held.get('balanced_accuracy'))} | {per} | {fmt(entry['train_scores']['balanced_accuracy'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".cache/emoji")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--attributes", nargs="+", default=list(ORDER))
    parser.add_argument("--steps", type=int, default=JudgeConfig().steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--fold",
        nargs=2,
        metavar=("ATTRIBUTE", "PREFIX"),
        default=None,
        help="also a design fold: e.g. hair 1F469 (docstring of design_fold)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "judges.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(root=args.root, resolution=args.resolution, attributes=True, prepare=False)
    train = EmojiDataset(split="train", **common)
    held = EmojiDataset(split="val", **common)
    config = JudgeConfig(steps=args.steps)
    result = {"config": {**config.__dict__, "widths": list(config.widths)}, "train_images": len(train),
              "held_out_images": len(held), "judges": {}}  # fmt: skip
    for attribute in args.attributes:  # one at a time: each is cached as soon as it is trained
        start = time.time()
        judge = load_or_train_judges(args.cache_dir, train, held, attributes=[attribute], config=config,
                                     name="emoji")[attribute]  # fmt: skip
        info = dict(judge.metrics)
        info["seconds_this_call"] = round(time.time() - start, 1)
        result["judges"][attribute] = info
        print(f"{attribute}: held-out balanced accuracy {info.get('held_out', {}).get('balanced_accuracy')} "
              f"({info['train_seconds']} s to train, {info['train_cpu_seconds']} s CPU)", flush=True)  # fmt: skip
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.fold:
        result["design_fold"] = design_fold(train, config, *args.fold)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["design_fold"], indent=2))
    print(judge_table(result))


def design_fold(train: EmojiDataset, config: JudgeConfig, attribute: str, prefix: str) -> dict:
    """A judge of ``attribute`` trained without the training emoji whose codepoints start with ``prefix`` and whose
    value is not the first (``none``), scored on exactly those: an estimate for an attribute whose values are absent
    from the held-out split (hair: its 72 emoji are variants of three designs, person / man / woman, all on the
    training side; ``--fold hair 1F469`` holds the 24 woman variants out)."""
    images, attrs = attribute_arrays(train)
    column = train.attribute_names.index(attribute)
    codes = np.array([r["codepoints"].upper().startswith(prefix.upper()) for r in train.records])
    out = codes & (attrs[:, column] != 0)
    if not out.any():
        raise SystemExit(
            f"--fold {attribute} {prefix}: no training emoji starts with {prefix} with {attribute} != none"
        )
    values = train.attribute_values[attribute]
    judge = train_judge(images[~out], attrs[~out, column], attribute, values, config)
    return {"attribute": attribute, "prefix": prefix, "train_images": int((~out).sum()),
            "train_seconds": round(judge.train_seconds, 1),
            **{k: v for k, v in judge_scores(judge, images[out], attrs[out, column]).items()}}  # fmt: skip


if __name__ == "__main__":
    main()
