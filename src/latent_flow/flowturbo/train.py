"""Refiner training from a trained checkpoint (called by ``latent_flow.train`` when ``base_ckpt_path`` is set).

    python -m latent_flow.train +experiment=shapes_refiner base_ckpt_path=outputs/train/RUN/checkpoints/last.ckpt

The base checkpoint decides the autoencoder, latent statistics and architecture; the config gives
the data (which must be the base's training data: checked through the data name and the latent
statistics), the refiner options (``refiner.*``), ``optim``, ``trainer`` and callbacks.
Resume with ``ckpt_path=<refiner run>/checkpoints/last.ckpt`` (same ``base_ckpt_path``).
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

__all__ = ["run_refiner_training"]

log = logging.getLogger(__name__)


def _check_latents(base, datamodule, data_name: str, base_path: str) -> None:
    import math

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
    from hydra.utils import instantiate

    from latent_flow.api import load_model
    from latent_flow.data.datamodule import LatentDataModule
    from latent_flow.flowturbo.module import RefinerModule
    from latent_flow.runtime import (
        build_trainer,
        configure_torch,
        instantiate_callbacks,
        instantiate_loggers,
        save_resolved_config,
    )
    from latent_flow.train import _check_ckpt_path
    from latent_flow.utils.io import write_json

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
    save_resolved_config(cfg, output_dir)
    ckpt_path = _check_ckpt_path(cfg.get("ckpt_path"))
    L.seed_everything(cfg.seed, workers=True)
    configure_torch(cfg)

    base = load_model(base_path, device="cpu")
    dataset = instantiate(cfg.data.dataset)
    extras = {}
    if "cache_extras" in inspect.signature(LatentDataModule).parameters:  # spatial conditions (masks, maps)
        from latent_flow.conditioning import cache_extras

        extras["cache_extras"] = cache_extras(dict(base.hparams.condition))
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
        **extras,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    _check_latents(base, datamodule, cfg.data.name, base_path)

    r = OmegaConf.to_container(cfg.refiner, resolve=True)
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
    loggers = instantiate_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg, callbacks=instantiate_callbacks(cfg.get("callbacks")), loggers=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
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
        "status": "finished" if trainer.state.finished else str(trainer.state.status),
    }
    if trainer.is_global_zero:
        import json

        metrics_path = output_dir / "metrics.json"
        previous = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        previous.update(summary)
        write_json(metrics_path, previous)
        log.info("refiner run directory: %s (%.1fs)", output_dir, time.time() - start)
    return summary
