"""Refiner training from a trained checkpoint (``latent_flow.train`` with a ``refiner`` section / ``base_ckpt_path``).

    python -m latent_flow.train +experiment=shapes_refiner base_ckpt_path=outputs/train/RUN/checkpoints/last.ckpt

The base checkpoint decides the autoencoder, latent statistics and architecture; the config gives
the data (which must be the base's training data: checked through the data name and the latent
statistics), the refiner options (``refiner.*``), ``optim``, ``trainer`` and callbacks.
Resume with ``ckpt_path=<refiner run>/checkpoints/last.ckpt`` (same ``base_ckpt_path``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from latent_flow.cli.run import Attempt, configure_torch, finish_run, fit, run_status
from latent_flow.conditioning import cache_extras
from latent_flow.data.datamodule import LatentDataModule
from latent_flow.flowturbo.module import RefinerModule
from latent_flow.training.checkpoints import load_flow_module
from latent_flow.utils.config import to_plain

__all__ = ["run_refiner_training"]

log = logging.getLogger(__name__)


def _check_latents(base, datamodule, data_name: str, base_path: str) -> None:
    recorded = (base.hparams.get("data") or {}).get("name")
    if recorded is not None and recorded != data_name:
        raise ValueError(
            f"base_ckpt_path={base_path} was trained on data {recorded!r}, but the config's data is {data_name!r}; "
            f"use data={recorded} (the <name>_refiner experiment of the base's experiment)"
        )
    if tuple(datamodule.latent_shape) != tuple(base.latent_shape):
        raise ValueError(
            f"latent shape of the data under the base's autoencoder is {datamodule.latent_shape}, but the base "
            f"checkpoint {base_path} expects {base.latent_shape}"
        )
    stats, saved = datamodule.latent_stats, base.hparams.get("latent_stats")
    if saved is not None:
        for key in ("mean", "std"):
            for a, b in zip(stats[key], saved[key]):
                if not math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4):
                    raise ValueError(
                        f"latent {key} of this data {stats[key]} differ from the base checkpoint's {saved[key]}: "
                        f"the data config is not the one {base_path} was trained on"
                    )


def run_refiner_training(cfg: DictConfig) -> dict:
    """Train a FlowTurbo refiner for ``cfg.base_ckpt_path``; returns the summary written to metrics.json."""
    start = time.time()
    if cfg.get("refiner") is None:
        raise ValueError(
            "base_ckpt_path is set but the config has no refiner section: train refiners with "
            "`python -m latent_flow.train +experiment=<name>_refiner base_ckpt_path=...` (e.g. shapes_refiner)"
        )
    if OmegaConf.is_missing(cfg, "base_ckpt_path") or cfg.get("base_ckpt_path") is None:
        raise ValueError(
            "refiner training needs the flow checkpoint it refines: add base_ckpt_path=<run>/checkpoints/last.ckpt "
            f"(experiment {cfg.get('task_name')})"
        )
    base_path = str(cfg.base_ckpt_path)
    if not Path(base_path).is_file():
        raise FileNotFoundError(
            f"base_ckpt_path={base_path} does not exist; expected a flow checkpoint written by latent_flow.train"
        )
    output_dir = Path(cfg.paths.output_dir)
    attempt = Attempt(cfg)  # config resolved, resume checkpoint verified; nothing written before the first step
    L.seed_everything(cfg.seed, workers=True)
    configure_torch(cfg)

    base = load_flow_module(base_path, device="cpu")
    dataset = instantiate(cfg.data.dataset)
    datamodule = LatentDataModule(
        dataset,
        base.autoencoder,  # rebuilt from the base checkpoint's spec: the latents it was trained on
        cache_dir=cfg.paths.cache_dir,
        name=cfg.data.name,
        flip=cfg.data.flip,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        cache_extras=cache_extras(dict(base.hparams.condition)),  # spatial conditions (masks, maps)
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    _check_latents(base, datamodule, cfg.data.name, base_path)

    r = to_plain(cfg.refiner)
    L.seed_everything(cfg.seed, workers=True)  # initial weights from the seed alone (not from the stages above)
    model = RefinerModule(
        base_ckpt_path=base_path,
        refiner={"num_blocks": r.get("num_blocks", 1)},
        optim=cfg.optim,
        ema=r.get("ema"),
        time_offset=r.get("time_offset"),
        label_dropout=r.get("label_dropout", 0.1),
        seed=cfg.seed,
        base_model=base,
    )
    trainer, metrics = fit(cfg, model, datamodule, attempt=attempt)
    hp = model.hparams
    summary = {
        "metrics": metrics,
        "global_step": trainer.global_step,
        "base_ckpt_path": hp.base_ckpt_path,
        "base_hash": hp.base_hash,
        "refiner_parameters": hp.refiner_parameters,
        "base_parameters": hp.base_parameters,
        "refiner_parameter_percent": round(100 * hp.parameter_ratio, 2),
        "seconds": round(time.time() - start, 1),
        "status": run_status(trainer),
    }
    finish_run(trainer, attempt, summary)
    if trainer.is_global_zero:
        log.info("refiner run directory: %s (%.1fs)", output_dir, time.time() - start)
    return summary
