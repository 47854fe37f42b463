"""Add (or replace) one model's entry in ``experiments/emoji/results.json``, from its files.

    .venv/bin/python experiments/emoji/results.py --name unet_s_2h \
        --eval-dir outputs/emoji25/unet_s/recipe/last --run-dir outputs/emoji25/unet_s \
        [--memorisation outputs/memorisation/unet_s_2h] [--command "..."] [--machine "..."]

Reads the evaluation's ``metrics.json`` / ``recipe.json`` (``python -m latent_flow.evaluate``), the run's
``metrics.json`` / ``config.yaml`` (``python -m latent_flow.train``) and, when given, the memorisation
check's ``memorisation.json`` (``experiments/emoji/memorisation.py``). The entry holds ``fid``, ``kid``,
``num_samples``, ``num_reference``, ``split_by``, ``train_seconds``, ``machine`` and the sampler, and the
ratio of its FID to the data floor of ``results.json``'s ``floors`` (written by ``floors.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

MACHINE = "2-core AMD EPYC CPU development machine (no GPU), 1 thread per job, two jobs side by side"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--eval-dir", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--memorisation", default=None)
    parser.add_argument("--command", default=None, help="the training command, as shown in the README")
    parser.add_argument("--machine", default=MACHINE)
    parser.add_argument("--results", default="experiments/emoji/results.json")
    args = parser.parse_args()
    eval_dir, run_dir = Path(args.eval_dir), Path(args.run_dir)
    scores = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    recipe = json.loads((eval_dir / "recipe.json").read_text())
    run = json.loads((run_dir / "metrics.json").read_text())
    config = OmegaConf.load(run_dir / "config.yaml")
    ckpt = torch.load(recipe["ckpt_path"], map_location="cpu", weights_only=False)
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    floor = results.get("floors", {}).get("data", {}).get("fid")
    entry = {
        "fid": round(float(scores["fid"]), 2),
        "kid": round(float(scores["kid_mean"]), 5),
        "num_samples": int(scores["num_samples"]),
        "num_reference": int(scores["num_reference"]),
        "fid_over_data_floor": round(float(scores["fid"]) / floor, 3) if floor else None,
        "split_by": str(config.data.dataset.split_by),
        "train_seconds": round(float(run.get("train_seconds_this_run", run["seconds"]["flow_training_stage"])), 1),
        "latent_cache_seconds": run["seconds"].get("latent_cache_stage"),
        "global_step": int(ckpt["global_step"]),
        "checkpoint": recipe["ckpt_path"],
        "backbone": OmegaConf.to_container(config.backbone),
        "backbone_parameters": run.get("backbone_parameters"),
        "sampler": {
            **recipe["sampler"],
            "cfg_scale": recipe["cfg_scale"],
            "cfg_interval": recipe["cfg_interval"],
            "use_ema": recipe["use_ema"],
            "seed": recipe["seed"],
        },  # fmt: skip
        "machine": args.machine,
        "evaluation": str(eval_dir),
    }
    if args.command:
        entry["command"] = args.command
    if args.memorisation:
        memo = json.loads((Path(args.memorisation) / "memorisation.json").read_text())
        entry["memorisation"] = {
            "copies": bool(memo["copies"]),
            **{
                space: {k: memo[space][k] for k in ("copy_rate", "rate_ratio", "median_ratio", "exact_copy_rate")}
                for space in ("pixels", "inception")
            },  # fmt: skip
            "criterion": memo["pixels"]["criterion"],
            "files": str(args.memorisation),
        }
    results.setdefault("models", {})[args.name] = entry
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
