"""Train the framework's own KL autoencoder (``python -m latent_flow.train_autoencoder``).

Reconstruction (L1 + MSE) + KL loss, configured by Hydra like everything else
(``conf/train_autoencoder.yaml``: ``data=...``, ``autoencoder=...``, ``trainer.*``).
The frozen autoencoder file is written to ``export_path``; when that is null, to
the cache location that ``latent_flow.train`` looks up for this autoencoder config
and dataset, so a later flow training finds it without any option. The training itself:
:mod:`latent_flow.training.autoencoder`.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from latent_flow.cli.run import instantiate_loggers, save_resolved_config
from latent_flow.training.autoencoder import autoencoder_cache_path, train_autoencoder
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import resolve_precision

__all__ = ["run_autoencoder_training"]


def run_autoencoder_training(cfg: DictConfig) -> Path:
    """Train ``cfg.autoencoder`` on ``cfg.data`` and write its frozen file; returns the file's path."""
    save_resolved_config(cfg, cfg.paths.output_dir)
    dataset = instantiate(cfg.data.dataset)
    export_path = cfg.export_path or autoencoder_cache_path(cfg.autoencoder, dataset, cfg.paths.cache_dir)
    trainer_overrides = to_plain(cfg.trainer)
    trainer_overrides.pop("_target_", None)
    trainer_overrides["precision"] = resolve_precision(trainer_overrides.get("precision", "auto"))
    path = train_autoencoder(
        cfg.autoencoder,
        dataset,
        export_path=export_path,
        output_dir=cfg.paths.output_dir,
        trainer_overrides=trainer_overrides,
        loggers=instantiate_loggers(cfg.get("logger")),
        val_fraction=cfg.data.val_fraction,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
    )
    print(f"autoencoder written to {path}")
    return path
