"""The run skeleton shared by every command: config location, callbacks / loggers, trainer, fit, summary.

Flow training (:mod:`latent_flow.cli.train`) and refiner training (:mod:`latent_flow.cli.train_refiner`)
build their module and datamodule, then both call :func:`fit` and :func:`write_summary`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import resolve_precision
from latent_flow.utils.io import write_json

__all__ = [
    "CONFIG_DIR",
    "build_trainer",
    "check_ckpt_path",
    "configure_torch",
    "fit",
    "instantiate_callbacks",
    "instantiate_loggers",
    "run_status",
    "save_resolved_config",
    "write_summary",
]

log = logging.getLogger(__name__)

#: the Hydra config tree (``conf/`` at the repository root; override with LATENT_FLOW_CONF)
CONFIG_DIR = str(Path(os.environ.get("LATENT_FLOW_CONF", Path(__file__).resolve().parents[3] / "conf")))


def configure_torch(cfg: DictConfig) -> None:
    if cfg.get("tf32", True) and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")


def _instantiate_entries(cfg: DictConfig | None, group: str) -> list:
    """Instantiate every entry of a ``callbacks`` / ``logger`` group (each must name its ``_target_``).

    An entry set to ``null`` (``callbacks.sample_grid=null``) is removed, the lightning-hydra-template way."""
    objects = []
    for name, entry in (cfg or {}).items():
        if entry is None:
            continue
        if not (isinstance(entry, DictConfig) and "_target_" in entry):
            raise ValueError(f"{group}.{name} has no _target_; every {group} entry must name its class (or be null)")
        objects.append(instantiate(entry, _convert_="object"))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list:
    return _instantiate_entries(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list:
    return _instantiate_entries(cfg, "logger")


def build_trainer(cfg: DictConfig, *, callbacks: list, loggers: list) -> L.Trainer:
    trainer_cfg = to_plain(cfg.trainer)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"))
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, _convert_="object")


def save_resolved_config(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def check_ckpt_path(ckpt_path: str | None) -> str | None:
    """``ckpt_path=`` of a resumed run: must be a file (a clear error instead of Lightning's)."""
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
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            if getattr(callback, "_last_global_step_saved", -1) != trainer.global_step and trainer.state.finished:
                trainer.save_checkpoint(str(Path(callback.dirpath) / "last.ckpt"))
            return


def fit(cfg: DictConfig, model: L.LightningModule, datamodule: L.LightningDataModule) -> tuple[L.Trainer, dict]:
    """Loggers (with the resolved config as hyper-parameters), callbacks, trainer, ``fit`` (resuming from
    ``cfg.ckpt_path``), ``last.ckpt`` at the final step; returns ``(trainer, scalar metrics)``."""
    ckpt_path = check_ckpt_path(cfg.get("ckpt_path"))
    loggers = instantiate_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(to_plain(cfg))
    trainer = build_trainer(cfg, callbacks=instantiate_callbacks(cfg.get("callbacks")), loggers=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    _save_final_checkpoint(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return trainer, metrics


def run_status(trainer: L.Trainer) -> str:
    return "finished" if trainer.state.finished else str(trainer.state.status)


def write_summary(trainer: L.Trainer, output_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Merge ``summary`` into ``output_dir/metrics.json`` (rank 0 only; the metrics callback writes there too)."""
    if not trainer.is_global_zero:
        return
    path = Path(output_dir) / "metrics.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(summary)
    write_json(path, previous)
