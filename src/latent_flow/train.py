"""Train a latent flow-matching model: ``python -m latent_flow.train [+experiment=NAME] [overrides]``.

Stages (each skipped when its result is cached):
  1. the autoencoder (trained when it is the framework's own and none is cached),
  2. the latent cache (the dataset encoded once, keyed by dataset + autoencoder),
  3. flow matching on cached latents with EMA, sample grids and checkpoints.

With no experiment this is the quick start on the built-in ``shapes`` data.
Resume a run with ``ckpt_path=<run>/checkpoints/last.ckpt`` (add ``hydra.run.dir=<run>``
to keep writing into the same directory).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from latent_flow.runtime import (
    CONFIG_DIR,
    build_trainer,
    configure_torch,
    instantiate_callbacks,
    instantiate_loggers,
    save_resolved_config,
)

__all__ = ["run_training", "main"]

log = logging.getLogger(__name__)


def _check_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is None:
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist; expected a checkpoint written by latent_flow.train "
            "(e.g. <run dir>/checkpoints/last.ckpt or interrupted.ckpt)"
        )
    return str(path)


def _save_final_checkpoint(trainer: L.Trainer) -> None:
    """``last.ckpt`` holds the final weights however training stopped (``max_time``, ``max_steps`` off the
    checkpoint interval): ModelCheckpoint alone leaves it at the last interval boundary."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            if getattr(callback, "_last_global_step_saved", -1) != trainer.global_step and trainer.state.finished:
                trainer.save_checkpoint(str(Path(callback.dirpath) / "last.ckpt"))
            return


def run_training(cfg: DictConfig) -> dict:
    """Run all stages for a composed config; returns the final metrics."""
    if cfg.get("base_ckpt_path") or "refiner" in cfg:  # FlowTurbo: a velocity refiner for a trained checkpoint
        from latent_flow.flowturbo.train import run_refiner_training

        return run_refiner_training(cfg)
    from hydra.utils import instantiate

    from latent_flow.data.datamodule import LatentDataModule
    from latent_flow.train_autoencoder import ensure_autoencoder
    from latent_flow.training.module import LatentFlowModule
    from latent_flow.utils.io import write_json

    start = time.time()
    output_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, output_dir)
    ckpt_path = _check_ckpt_path(cfg.get("ckpt_path"))
    L.seed_everything(cfg.seed, workers=True)
    configure_torch(cfg)

    dataset = instantiate(cfg.data.dataset)
    autoencoder, ae_spec = ensure_autoencoder(
        cfg.autoencoder, dataset, cache_dir=cfg.paths.cache_dir, output_dir=output_dir
    )
    stage_ae = time.time()

    from latent_flow.conditioning import cache_extras, check_condition_data

    condition_cfg = OmegaConf.to_container(cfg.condition, resolve=True)
    check_condition_data(condition_cfg, dataset)  # e.g. condition=semantic on data without maps
    datamodule = LatentDataModule(
        dataset,
        autoencoder,
        cache_dir=cfg.paths.cache_dir,
        name=cfg.data.name,
        flip=cfg.data.flip,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        cache_extras=cache_extras(condition_cfg),  # masks / semantic maps for spatial conditions
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    stats = datamodule.latent_stats
    import torch

    autoencoder.set_latent_stats(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
    stage_cache = time.time()

    # the initial weights depend on the seed alone, not on whether the autoencoder / latent cache stages ran
    # in this process (they draw from the global RNG): a rerun with a warm cache starts from the same weights
    L.seed_everything(cfg.seed, workers=True)
    model = LatentFlowModule(
        backbone=cfg.backbone,
        condition=cfg.condition,
        path=cfg.path,
        optim=cfg.optim,
        ema=cfg.ema,
        latent_shape=datamodule.latent_shape,
        num_classes=datamodule.num_classes,
        latent_stats=stats,
        autoencoder=ae_spec,
        compile=cfg.compile,
        seed=cfg.seed,
        data={"name": cfg.data.name, "resolution": cfg.data.resolution},
    )
    model.set_autoencoder(autoencoder)
    num_params = sum(p.numel() for p in model.backbone.parameters())
    log.info("backbone %s: %.2fM parameters; latents %s", cfg.backbone.name, num_params / 1e6, datamodule.latent_shape)

    loggers = instantiate_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg, callbacks=instantiate_callbacks(cfg.get("callbacks")), loggers=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    _save_final_checkpoint(trainer)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    summary = {
        "metrics": metrics,
        "global_step": trainer.global_step,
        "backbone_parameters": num_params,
        "latent_shape": list(datamodule.latent_shape),
        "latent_stats": stats,
        "autoencoder": ae_spec,
        "latent_cache": str(datamodule.cache.root),
        "seconds": {
            "autoencoder_stage": round(stage_ae - start, 1),
            "latent_cache_stage": round(stage_cache - stage_ae, 1),
            "flow_training_stage": round(time.time() - stage_cache, 1),
            "total": round(time.time() - start, 1),
        },
        "status": "finished" if trainer.state.finished else str(trainer.state.status),
    }
    if not trainer.is_global_zero:
        return summary
    metrics_path = output_dir / "metrics.json"
    previous = {}
    if metrics_path.exists():
        import json

        previous = json.loads(metrics_path.read_text())
    previous.update(summary)
    write_json(metrics_path, previous)
    log.info("run directory: %s (%.1fs in all)", output_dir, time.time() - start)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = run_training(cfg)
    metric = cfg.get("optimized_metric")
    if metric and metric in summary["metrics"]:
        return summary["metrics"][metric]
    return None


if __name__ == "__main__":
    main()
