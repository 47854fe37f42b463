"""`python -m latent_flow.train` with spatial conditions: cache extras, grids of conditions, reloadable checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_TRAIN

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


def _celebamask_tree(root: Path) -> Path:
    """4 images (32 px) with per-part masks at 16 px (the official layout of CelebAMask-HQ)."""
    import numpy as np

    (root / "CelebA-HQ-img").mkdir(parents=True)
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    anno.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "CelebA-HQ-img" / f"{i}.png")
        for name, rows in (("skin", slice(0, 16)), ("hair", slice(0, 4 + i)), ("cloth", slice(12, 16))):
            m = np.zeros((16, 16), np.uint8)
            m[rows] = 255
            Image.fromarray(m).save(anno / f"{i:05d}_{name}.png")
    return root


@pytest.mark.slow  # ~13 s each on a shared 2-core CPU; the default suite trains the shapes experiments above
@pytest.mark.parametrize("experiment", ["celebamask_semantic", "celebahq_inpaint"])
def test_celeba_experiments_train_through_the_dataset_loaders(experiment, compose_cfg, tmp_path):
    """The reference configs with the real loaders on a tiny CelebAMask-HQ-shaped folder (16 px, pixel space)."""
    from latent_flow.train import run_training

    root = _celebamask_tree(tmp_path / "CelebAMask-HQ")
    data_root = root if experiment == "celebamask_semantic" else root / "CelebA-HQ-img"
    cfg = compose_cfg(
        "train",
        [
            f"+experiment={experiment}",
            f"data.dataset.root={data_root}",
            "data.dataset.resolution=16",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.val_fraction=0.25",
            "autoencoder=pixel_s2d",
            "backbone=unet_t",
            "~backbone.attention_resolutions",
            "sampler=euler",
            "sampler.steps=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "trainer.accelerator=cpu",
            "samples.per_class=1",
            "samples.max_rows=1",
            "callbacks.progress_bar.refresh_rate=0",
            "condition.mask_variants=1" if "inpaint" in experiment else "seed=1",
        ],
    )
    summary = run_training(cfg)
    assert summary["status"] == "finished" and summary["global_step"] == 2
    meta = json.loads((Path(summary["latent_cache"]) / "meta.json").read_text())
    if experiment == "celebamask_semantic":
        assert meta["extras"] == {"semantic": True} and meta["num_views"] == 1  # no flips: they swap l_/r_ parts
    else:
        assert meta["extras"]["mask_variants"] == 1 and meta["num_views"] == 2  # flips cached with their masks
    assert (Path(cfg.paths.output_dir) / "samples" / "step_0000002.png").is_file()
