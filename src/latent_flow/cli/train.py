"""Flow training: the stages of ``python -m latent_flow.train [+experiment=NAME] [overrides]``.

Stages (each skipped when its result is cached):
  1. the autoencoder (trained when it is the framework's own and none is cached),
  2. the latent cache (the dataset encoded once, keyed by dataset + autoencoder),
  3. flow matching on cached latents with EMA, sample grids and checkpoints.

With no experiment this is the quick start on the built-in ``shapes`` data. A config with a
``refiner`` section (or ``base_ckpt_path``) trains a FlowTurbo refiner instead
(:mod:`latent_flow.cli.train_refiner`). Resume a run with ``ckpt_path=<run>/checkpoints/last.ckpt``
(add ``hydra.run.dir=<run>`` to keep writing into the same directory: each attempt is recorded under
``attempts/``, and one that fails before its first training step leaves the directory as it was).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from latent_flow.cli.extras import apply_extras
from latent_flow.cli.run import Attempt, configure_torch, finish_run, fit, run_status
from latent_flow.cli.train_refiner import run_refiner_training
from latent_flow.conditioning import cache_extras, check_condition_data
from latent_flow.data.datamodule import LatentDataModule
from latent_flow.training.autoencoder import ensure_autoencoder
from latent_flow.training.checkpoints import load_checkpoint
from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.config import to_plain

__all__ = ["run_training", "sweep_value"]

log = logging.getLogger(__name__)


#: Hydra's own sweeper (a grid of runs): it ignores the task's return value
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _optimising_sweep() -> bool:
    """Whether this task runs under a sweeper that optimises its return value (Optuna & co, not the grid)."""
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweeper.get("_target_") != BASIC_SWEEPER


def sweep_value(cfg: DictConfig, summary: dict, *, sweeping: bool | None = None) -> float | None:
    """The value a Hydra sweeper optimises: ``summary["metrics"][cfg.optimized_metric]``.

    Under an optimising sweeper (``hparams_search=optuna``; ``sweeping=None`` asks Hydra) a metric that was
    not logged stops the sweep with an error naming the metrics that were (rather than a trial value of
    ``None`` the sweeper cannot use); otherwise it is ``None`` with a warning."""
    metric = cfg.get("optimized_metric")
    logged = summary.get("metrics") or {}
    if not metric:
        return None
    if metric in logged:
        return float(logged[metric])
    message = (
        f"optimized_metric={metric} was not logged by this run; the metrics it logged: {sorted(logged) or 'none'} "
        "(FID during training: callbacks=eval_fid logs eval/fid and eval/kid)"
    )
    if _optimising_sweep() if sweeping is None else sweeping:
        raise ValueError(message)
    log.warning(message)
    return None


def run_training(cfg: DictConfig) -> dict:
    """Run all stages for a composed config; returns the summary merged into ``metrics.json``."""
    apply_extras(cfg)  # extras.print_config / ignore_warnings / enforce_tags (conf/extras/)
    if cfg.get("base_ckpt_path") or "refiner" in cfg:  # FlowTurbo: a velocity refiner for a trained checkpoint
        return run_refiner_training(cfg)
    objective = to_plain(cfg.get("objective")) or {}
    if objective.get("velocity") == "teacher" and not cfg.get("init_from") and not cfg.get("ckpt_path"):
        raise ValueError(
            "objective.velocity=teacher distils a trained flow into a flow map: name the flow with "
            "init_from=<flow .ckpt> (or resume a distillation run with ckpt_path=<run>/checkpoints/last.ckpt)"
        )
    time_scale = float((to_plain(cfg.get("backbone")) or {}).get("time_scale", 1000.0))  # the backbones' default
    if objective.get("name") == "meanflow" and not cfg.get("init_from") and not cfg.get("ckpt_path"):
        if time_scale >= 100.0:
            log.warning(
                "objective=meanflow from scratch with the time embeddings' factor backbone.time_scale=%s: the "
                "MeanFlow identity differentiates the network along time, and flow maps from scratch trained far "
                "better with +backbone.time_scale=1.0 on the quick start (FD-shapes 409 vs 2,681 at one evaluation; "
                "experiments/one_step/README.md)",
                time_scale,
            )
    start = time.time()
    output_dir = Path(cfg.paths.output_dir)
    # the config resolved and a resume checkpoint verified before the stages run; nothing written until the
    # first training step (a failed resume leaves the run directory as it was)
    attempt = Attempt(cfg)
    L.seed_everything(cfg.seed, workers=True)
    configure_torch(cfg)

    dataset = instantiate(cfg.data.dataset)
    autoencoder, ae_spec = ensure_autoencoder(
        cfg.autoencoder, dataset, cache_dir=cfg.paths.cache_dir, output_dir=output_dir
    )
    stage_ae = time.time()

    condition_cfg = to_plain(cfg.condition)
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
        objective=cfg.get("objective"),
    )
    if cfg.get("init_from"):  # e.g. a flow checkpoint converted into a flow map (objective=meanflow)
        loaded = model.initialise_from(load_checkpoint(cfg.init_from))
        log.info(
            "init_from %s: %d tensors loaded, new: %s", cfg.init_from, len(loaded["initialised"]), loaded["missing"]
        )
    model.set_autoencoder(autoencoder)
    num_params = sum(p.numel() for p in model.backbone.parameters())
    log.info("backbone %s: %.2fM parameters; latents %s", cfg.backbone.name, num_params / 1e6, datamodule.latent_shape)

    trainer, metrics = fit(cfg, model, datamodule, attempt=attempt)
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
        "status": run_status(trainer),
    }
    finish_run(trainer, attempt, summary)
    if trainer.is_global_zero:
        log.info("run directory: %s (%.1fs in all)", output_dir, time.time() - start)
    return summary
