"""Shared plumbing of the command-line entry points (config location, trainer, loggers)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CONFIG_DIR",
    "resolve_precision",
    "instantiate_callbacks",
    "instantiate_loggers",
    "build_trainer",
    "configure_torch",
    "save_resolved_config",
]

log = logging.getLogger(__name__)

#: the Hydra config tree (``conf/`` at the repository root; override with LATENT_FLOW_CONF)
CONFIG_DIR = str(Path(os.environ.get("LATENT_FLOW_CONF", Path(__file__).resolve().parents[2] / "conf")))


def resolve_precision(precision: Any) -> Any:
    """``"auto"`` -> ``"bf16-mixed"`` on a CUDA GPU with bf16 support, else ``"32-true"``."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def configure_torch(cfg: DictConfig) -> None:
    if cfg.get("tf32", True) and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")


def _instantiate_entries(cfg: DictConfig | None, group: str) -> list:
    """Instantiate every entry of a ``callbacks`` / ``logger`` group (each must name its ``_target_``).

    An entry set to ``null`` (``callbacks.sample_grid=null``) is removed, the lightning-hydra-template way."""
    from hydra.utils import instantiate

    objects = []
    for name, entry in (cfg or {}).items():
        if entry is None:
            continue
        if not (isinstance(entry, DictConfig) and "_target_" in entry):
            raise ValueError(f"{group}.{name} has no _target_; every {group} entry must name its class")
        objects.append(instantiate(entry, _convert_="object"))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list:
    return _instantiate_entries(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list:
    return _instantiate_entries(cfg, "logger")


def build_trainer(cfg: DictConfig, *, callbacks: list, loggers: list):
    from hydra.utils import instantiate

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"))
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, _convert_="object")


def save_resolved_config(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
