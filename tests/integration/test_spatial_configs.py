"""The spatial-condition experiments compose, carry the reference settings and instantiate (tiny stand-ins)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from latent_flow.cli.run import CONFIG_DIR

SPATIAL = {
    # experiment: (condition, in_channels of the network at 4 latent channels, reference settings?)
    "shapes_inpaint": ("inpaint", 9, False),
    "shapes_semantic": ("semantic", 8, False),
    "celebahq_inpaint": ("inpaint", 9, True),
    "celebamask_semantic": ("semantic", 8, True),
}


def _module(cfg):
    from hydra.utils import instantiate

    from latent_flow.autoencoders import build_autoencoder
    from latent_flow.training.module import LatentFlowModule

    cfg.data.dataset.num_samples = 4
    dataset = instantiate(cfg.data.dataset)
    ae_cfg = OmegaConf.to_container(cfg.autoencoder, resolve=True)
    ae = build_autoencoder({"name": ae_cfg["name"], **ae_cfg.get("config", {})})
    module = LatentFlowModule(
        backbone=cfg.backbone,
        condition=cfg.condition,
        path=cfg.path,
        optim=cfg.optim,
        ema=cfg.ema,
        latent_shape=ae.latent_shape(cfg.data.resolution),
        num_classes=dataset.num_classes,
        autoencoder=None,
    )
    return dataset, module


@pytest.mark.parametrize("experiment", sorted(SPATIAL))
def test_spatial_experiment_composes_and_instantiates(experiment, compose_cfg):
    condition, in_channels, reference = SPATIAL[experiment]
    full = compose_cfg("train", [f"+experiment={experiment}"])
    assert full.task_name == experiment and full.condition.name == condition
    assert full.condition.resolution == full.data.resolution
    overrides = [f"+experiment={experiment}"]
    if reference:
        # LFM's downstream-task settings (README of its code): ADM UNet ch_mult 1 2 3 4, attention at
        # 16 and 8 px of 32x32 latents, SD VAE ft-mse, batch 64, lr 5e-5
        assert full.backbone.name == "UNet-L" and list(full.backbone.attention_resolutions) == [2, 4]
        assert full.autoencoder.pretrained == "stabilityai/sd-vae-ft-mse" and full.sampler.name == "dopri5"
        assert full.optim.lr == 5e-5 and full.data.batch_size == 64 and full.data.resolution == 256
        assert full.ema.decay == 0.9999 and full.path.scheduler.sigma_min == 1e-5
        assert full.trainer.max_epochs == (500 if condition == "inpaint" else 175)
        if condition == "semantic":
            assert full.data.name == "celebamask256" and full.condition.num_semantic_classes == 19
            assert not full.data.flip
        else:
            assert full.data.name == "celebahq256"
        overrides += [
            "data=shapes",
            "data.dataset.resolution=256",
            "autoencoder=kl_shapes",
            "autoencoder.config.channel_mult=[1,2,2,2]",
            "backbone=unet_t",
            "~backbone.attention_resolutions",
        ]
    else:
        assert full.backbone.name == "UNet-T" and full.data.name == "shapes"
        overrides.append("backbone=unet_t")
    cfg = compose_cfg("train", overrides)
    dataset, module = _module(cfg)
    assert module.backbone.in_channels == in_channels
    latent_shape = module.latent_shape
    res = cfg.data.resolution
    batch = {"latent": torch.randn(2, *latent_shape), "label": torch.zeros(2, dtype=torch.long)}
    if condition == "inpaint":
        batch["mask"] = torch.ones(2, 1, res, res)
        batch["mask"][:, :, : res // 2] = 0
        batch["masked_latent"] = torch.randn(2, *latent_shape)
    else:
        batch["semantic"] = torch.stack([dataset[i]["semantic"] for i in range(2)])
    loss = module._loss(batch, use_ema=False)
    assert torch.isfinite(loss)
    module.eval()
    cond = module.condition.from_batch(batch)
    out = module.velocity(batch["latent"], torch.rand(2), module.condition.null(cond))
    assert out.shape == batch["latent"].shape


def test_label_and_spatial_configs(compose_cfg):
    for name, base in (("semantic_label", "semantic"), ("inpaint_label", "inpaint")):
        cfg = compose_cfg("train", [f"condition={name}", "backbone=unet_t"])
        assert cfg.condition.name == base and cfg.condition.use_label
        _, module = _module(cfg)
        assert module.condition.uses_label and module.backbone.num_classes == 5
    cfg = compose_cfg("train", ["condition=semantic", "condition.use_label=true"])
    assert cfg.condition.use_label


def test_semantic_on_data_without_maps_fails_clearly(compose_cfg):
    cfg = compose_cfg("train", ["condition=semantic", "data=image_folder", "data.dataset.root=/tmp"])
    assert cfg.condition.num_semantic_classes is None
    from latent_flow.training.module import LatentFlowModule

    with pytest.raises(ValueError, match="needs condition.num_semantic_classes"):
        LatentFlowModule(
            backbone={"name": "UNet-T"},
            condition=cfg.condition,
            path=cfg.path,
            optim=cfg.optim,
            ema=None,
            latent_shape=(4, 8, 8),
        )


def test_experiment_files_document_their_commands():
    for name in SPATIAL:
        text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
        assert f"python -m latent_flow.train +experiment={name}" in text
