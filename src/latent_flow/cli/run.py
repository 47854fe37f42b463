"""The run skeleton shared by every command: config location, callbacks / loggers, trainer, fit, summary.

Flow training (:mod:`latent_flow.cli.train`) and refiner training (:mod:`latent_flow.cli.train_refiner`)
start an :class:`Attempt` (the resolved config and the verified resume checkpoint; nothing written
yet), build their module and datamodule, then both call :func:`fit` and :func:`finish_run`.

Nothing is written into the run directory before the attempt's first training step (the attempt's record,
``config.yaml``, ``metrics.json``, ``interrupted.ckpt``, the CSV log, the log file; see
:class:`latent_flow.training.callbacks.RunAttempt`): a resume that fails at start-up leaves the run it
was resuming byte for byte as it was. Every checkpoint is written atomically with its checksum and a
resume checkpoint is verified before the stages run (:mod:`latent_flow.training.checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from latent_flow.training.callbacks import RunAttempt
from latent_flow.training.checkpoints import AtomicCheckpointIO, load_checkpoint
from latent_flow.training.lr_schedule import check_schedule
from latent_flow.training.module import BackboneMismatchError, LatentFlowModule
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import resolve_precision
from latent_flow.utils.io import write_json

__all__ = [
    "CONFIG_DIR",
    "Attempt",
    "build_trainer",
    "check_ckpt_path",
    "check_resume_matches",
    "configure_torch",
    "finish_run",
    "fit",
    "hydra_overrides",
    "instantiate_callbacks",
    "instantiate_loggers",
    "run_status",
    "save_resolved_config",
    "verify_resume_checkpoint",
    "write_summary",
]

log = logging.getLogger(__name__)

#: the Hydra config tree (``conf/`` at the repository root; override with LATENT_FLOW_CONF)
CONFIG_DIR = str(Path(os.environ.get("LATENT_FLOW_CONF", Path(__file__).resolve().parents[3] / "conf")))


def compose_train_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``python -m latent_flow.train``'s config with ``overrides``, composed outside a Hydra app (scripts,
    benchmarks); any Hydra instance an earlier call left is cleared first."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def bare_module(cfg: DictConfig, latent_shape, num_classes: int, **options):
    """The velocity model of a composed train config (backbone, condition, path, optimiser, EMA, objective)
    for latents of ``latent_shape``, with no data and no autoencoder: what step-cost measurements time.
    ``options`` go to :class:`~latent_flow.training.module.LatentFlowModule` (e.g. ``compile=``)."""
    return LatentFlowModule(
        backbone=cfg.backbone,
        condition=cfg.condition,
        path=cfg.path,
        optim=cfg.optim,
        ema=cfg.ema,
        latent_shape=tuple(latent_shape),
        num_classes=int(num_classes),
        autoencoder=None,
        objective=cfg.get("objective"),
        **options,
    )


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


def build_trainer(
    cfg: DictConfig, *, callbacks: list, loggers: list, checkpoint_io: AtomicCheckpointIO | None = None
) -> L.Trainer:
    """The ``cfg.trainer`` Trainer; its checkpoints are written and read by ``checkpoint_io`` (atomic, with
    a checksum, verified on load; a new :class:`AtomicCheckpointIO` by default)."""
    trainer_cfg = to_plain(cfg.trainer)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"))
    plugins = [instantiate(p, _convert_="object") for p in trainer_cfg.pop("plugins", None) or []]
    plugins.append(checkpoint_io or AtomicCheckpointIO())
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=plugins, _convert_="object")


def save_resolved_config(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def hydra_overrides() -> list[str]:
    """The command line's Hydra overrides (``[]`` outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return [str(o) for o in (HydraConfig.get().overrides.get("task") or [])]


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


def verify_resume_checkpoint(ckpt_path: str | None) -> dict[str, Any] | None:
    """``ckpt_path=`` of a resumed run, loaded and verified (checksum, readable, finite weights) before the
    run's stages; :func:`fit` hands it to Lightning, which does not read the file again."""
    path = check_ckpt_path(ckpt_path)
    return None if path is None else load_checkpoint(path)


def check_resume_matches(cfg: DictConfig, checkpoint: dict[str, Any], ckpt_path: str) -> None:
    """The resumed checkpoint's backbone and condition against the config, before any stage runs (the
    module checks the rest, latent shape and class count, when Lightning restores it): a resume with
    another ``backbone=`` is refused in a second, not after minutes of autoencoder / latent-cache work."""
    saved = checkpoint.get("hyper_parameters") or {}
    for key in ("backbone", "condition"):
        if key in saved and cfg.get(key) is not None and to_plain(saved[key]) != to_plain(cfg[key]):
            raise BackboneMismatchError(
                f"ckpt_path={ckpt_path} was written with {key}={to_plain(saved[key])!r}, but the config asks for "
                f"{key}={to_plain(cfg[key])!r}; use the matching config (e.g. {key}=...) or another ckpt_path"
            )


class Attempt:
    """What a training command checks before its stages: the resolved config (every interpolation) and the
    verified resume checkpoint; and the :class:`RunAttempt` callback that writes the run directory once
    the first training step has finished. Nothing is written by creating it."""

    def __init__(self, cfg: DictConfig) -> None:
        self.output_dir = Path(cfg.paths.output_dir)
        if cfg.get("optim") is not None:  # the schedule against trainer.max_steps, before any stage runs
            check_schedule(to_plain(cfg.optim), cfg.trainer.get("max_steps"))
        self.ckpt_path = check_ckpt_path(cfg.get("ckpt_path"))
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.resume = verify_resume_checkpoint(self.ckpt_path)
        if self.resume is not None:
            check_resume_matches(cfg, self.resume, self.ckpt_path)
        self.record = RunAttempt(
            self.output_dir, config_yaml=self.config_yaml, overrides=hydra_overrides(), ckpt_path=self.ckpt_path
        )

    @property
    def started(self) -> bool:
        """Whether the attempt has trained (and so written its run directory)."""
        return self.record.started


def _save_final_checkpoint(trainer: L.Trainer) -> None:
    """``last.ckpt`` holds the final weights however training stopped (``max_time``, ``max_steps`` off the
    checkpoint interval): ModelCheckpoint alone leaves it at the last interval boundary."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            if getattr(callback, "_last_global_step_saved", -1) != trainer.global_step and trainer.state.finished:
                trainer.save_checkpoint(str(Path(callback.dirpath) / "last.ckpt"))
            return


def fit(
    cfg: DictConfig, model: L.LightningModule, datamodule: L.LightningDataModule, *, attempt: Attempt
) -> tuple[L.Trainer, dict]:
    """Loggers (with the resolved config as hyper-parameters), callbacks, trainer, ``fit`` (resuming from
    the attempt's verified checkpoint), ``last.ckpt`` at the final step; returns ``(trainer, scalar metrics)``."""
    loggers = instantiate_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(to_plain(cfg))
    checkpoint_io = AtomicCheckpointIO()
    if attempt.resume is not None:
        checkpoint_io.hold(attempt.ckpt_path, attempt.resume)
        attempt.resume = None  # Lightning owns it now (and frees it after restoring)
    callbacks = [attempt.record, *instantiate_callbacks(cfg.get("callbacks"))]
    trainer = build_trainer(cfg, callbacks=callbacks, loggers=loggers, checkpoint_io=checkpoint_io)
    trainer.fit(model, datamodule=datamodule, ckpt_path=attempt.ckpt_path)
    if attempt.started:
        _save_final_checkpoint(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return trainer, metrics


def run_status(trainer: L.Trainer) -> str:
    return "finished" if trainer.state.finished else str(trainer.state.status)


def finish_run(trainer: L.Trainer, attempt: Attempt, summary: dict[str, Any]) -> None:
    """Merge ``summary`` into ``metrics.json`` and record how the attempt ended, when it trained; an attempt
    that took no step (resumed at ``trainer.max_steps``) writes nothing."""
    if not attempt.started:
        if trainer.is_global_zero:
            log.warning(
                "no training step was taken (trainer.max_steps=%s, resumed at step %d): nothing written to %s",
                trainer.max_steps,
                trainer.global_step,
                attempt.output_dir,
            )
        return
    write_summary(trainer, attempt.output_dir, summary)
    attempt.record.finish(trainer, summary.get("status", run_status(trainer)))


def write_summary(trainer: L.Trainer, output_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Merge ``summary`` into ``output_dir/metrics.json`` (rank 0 only; the metrics callback writes there too)."""
    if not trainer.is_global_zero:
        return
    path = Path(output_dir) / "metrics.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(summary)
    write_json(path, previous)
