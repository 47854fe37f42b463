"""Shared fixtures: Hydra composition into a temporary run directory, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# `make test` runs the files in TEST_WORKERS processes (pytest-xdist): the cores are shared among them
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))


def compose(config_name: str, overrides: list[str], run_dir: Path):
    """Compose ``conf/<config_name>.yaml`` like the CLI does, with run and cache dirs under ``run_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from latent_flow.cli.run import CONFIG_DIR

    GlobalHydra.instance().clear()
    paths = [f"paths.output_dir={run_dir / 'run'}", f"paths.cache_dir={run_dir / 'cache'}"]
    if config_name == "sample":
        paths = paths[:1]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=paths + overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra  # the app's config does not carry the hydra node
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(config_name: str, overrides: list[str] | None = None, run_dir: Path | None = None):
        return compose(config_name, list(overrides or []), run_dir or tmp_path)

    return _compose


#: overrides that make a full training run take seconds on a CPU
TINY_TRAIN = [
    "data.dataset.num_samples=256",
    "data.batch_size=32",
    "backbone=dit_xs2",
    "autoencoder.training.max_steps=4",
    "autoencoder.training.batch_size=32",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "samples.per_class=1",
    "sampler.steps=2",
    "callbacks.progress_bar.refresh_rate=0",
    "optim.warmup_steps=2",
]


def real_images(n: int, resolution: int, seed: int) -> torch.Tensor:
    """Shapes renders and perturbed copies (blur, noise, colour shift): real, varied inputs in [0, 1]."""
    from torch import nn

    from latent_flow.data import ShapesDataset

    data = ShapesDataset(num_samples=n, resolution=resolution, seed=seed)
    images = torch.stack([data[i]["image"] for i in range(n)]) * 0.5 + 0.5
    gen = torch.Generator().manual_seed(seed)
    third = n // 3
    images[:third] = nn.functional.avg_pool2d(images[:third], 3, stride=1, padding=1, count_include_pad=False)
    images[third : 2 * third] += 0.08 * torch.randn(images[third : 2 * third].shape, generator=gen)
    images[2 * third :] *= torch.tensor([1.0, 0.8, 0.6])[:, None, None]
    return images.clamp(0, 1)
