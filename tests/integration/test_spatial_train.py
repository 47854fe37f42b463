"""`python -m latent_flow.train` with spatial conditions: cache extras, grids of conditions, reloadable checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN
from PIL import Image

FAST = [
    *(o for o in TINY_TRAIN if not o.startswith(("autoencoder.", "backbone=", "optim.warmup_steps"))),
    "backbone=unet_t",
    "autoencoder=pixel_s2d",  # no autoencoder training
    "data.dataset.resolution=16",
    "trainer.max_steps=2",
    "optim.warmup_steps=1",
    "trainer.val_check_interval=2",
    "samples.per_class=2",
    "samples.max_rows=2",
]


@pytest.mark.parametrize("experiment", ["shapes_inpaint", "shapes_semantic"])
def test_train_cli_with_spatial_condition(experiment, compose_cfg, tmp_path):
    from latent_flow.api import load_model
    from latent_flow.train import run_training

    overrides = [f"+experiment={experiment}", *FAST]
    if experiment == "shapes_inpaint":
        overrides.append("condition.mask_variants=2")
    cfg = compose_cfg("train", overrides)
    summary = run_training(cfg)
    assert summary["status"] == "finished" and summary["global_step"] == 2
    cache = Path(summary["latent_cache"])
    meta = json.loads((cache / "meta.json").read_text())
    if experiment == "shapes_inpaint":
        assert meta["extras"]["mask_variants"] == 2 and (cache / "shard_00000.masked_latents.npy").exists()
    else:
        assert meta["extras"] == {"semantic": True} and (cache / "shard_00000.semantic.npy").exists()
    run = Path(cfg.paths.output_dir)
    grid = Image.open(run / "samples" / "step_0000002.png")
    # 2 rows (validation items), each: condition image + 2 samples, 16 px upscaled 4x with 2 px padding
    assert grid.size == (4 * (3 * 18 + 2), 4 * (2 * 18 + 2))
    model = load_model(run / "checkpoints" / "last.ckpt", device="cpu")
    assert model.condition.spatial_channels == (13 if experiment == "shapes_inpaint" else 4)
    if experiment == "shapes_semantic":
        # the map encoder and its EMA copy are in the checkpoint
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        assert any(k.startswith("condition.encoder.") for k in state)
        assert any(k.startswith("condition_ema.module.encoder.") for k in state)
