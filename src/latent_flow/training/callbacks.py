"""Training callbacks: sample grids from the EMA weights, and metrics.json."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from latent_flow.sampling.solvers import build_solver
from latent_flow.utils.images import make_grid_image, save_png
from latent_flow.utils.io import write_json

__all__ = ["SampleGridCallback", "MetricsJSONCallback", "SampleMetricsCallback", "grid_labels"]

log = logging.getLogger(__name__)


def grid_labels(num_classes: int, per_class: int, max_rows: int) -> torch.Tensor | None:
    """Labels of a class grid: one row per class (at most ``max_rows``), ``per_class`` columns."""
    if num_classes <= 0:
        return None
    rows = min(num_classes, max_rows)
    return torch.arange(rows).repeat_interleave(per_class)


class SampleGridCallback(L.Callback):
    """Every ``every_n_steps`` (and at the end of training) sample a grid with the EMA weights.

    Class-conditional models get one row per class; the grid is written to
    ``out_dir/step_XXXXXXX.png`` and logged to every logger that can take images.
    """

    def __init__(
        self,
        *,
        every_n_steps: int,
        per_class: int = 8,
        max_rows: int = 10,
        out_dir: str,
        sampler: dict,
        seed: int = 0,
        cfg_scale: float = 1.0,
        upscale: int = 4,
    ) -> None:
        self.every_n_steps = int(every_n_steps)
        self.per_class = int(per_class)
        self.max_rows = int(max_rows)
        self.out_dir = Path(out_dir)
        sampler = dict(sampler)
        self.solver = build_solver(sampler.pop("name"), **sampler)
        self.seed = int(seed)
        self.cfg_scale = float(cfg_scale)
        self.upscale = int(upscale)
        self._last_step = -1

    def _grid(self, trainer: L.Trainer, pl_module) -> Path | None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return None
        self._last_step = step
        labels = grid_labels(pl_module.num_classes if pl_module.condition.uses_label else 0, self.per_class, self.max_rows)
        count = len(labels) if labels is not None else self.per_class * min(self.max_rows, 4)
        result = pl_module.sample_latents(
            self.solver, indices=range(count), labels=labels, cfg_scale=self.cfg_scale, seed=self.seed
        )
        images = pl_module.decode(result.x)
        ncol = self.per_class
        path = save_png(make_grid_image(images, ncol, upscale=self.upscale), self.out_dir / f"step_{step:07d}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B, Neptune, ...
                logger.log_image(key="samples/ema_grid", images=[str(path)], step=step)
        log.info("sample grid (NFE %d) -> %s", result.nfe, path)
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._grid(trainer, pl_module)


class MetricsJSONCallback(L.Callback):
    """Write the final (and latest) logged metrics to ``metrics.json`` in the run directory."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._start: float | None = None
        self._start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start = time.time()
        self._start_step = trainer.global_step

    def _write(self, trainer: L.Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        seconds = time.time() - self._start if self._start else None
        steps = trainer.global_step - self._start_step
        data: dict[str, Any] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                data = {}
        data.update(
            {
                "status": status,
                "global_step": trainer.global_step,
                "metrics": metrics,
                "train_seconds_this_run": seconds,
                "steps_per_second": (steps / seconds) if seconds else None,
            }
        )
        write_json(self.path, data)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "running")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._write(trainer, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._write(trainer, f"interrupted ({type(exception).__name__})")


class SampleMetricsCallback(L.Callback):
    """Every ``every_n_steps``: sample ``num_samples`` images with the EMA weights and log metrics.

    For models trained on ``shapes``: FD-shapes against real renders (features cached once per
    run) and the oracle's label accuracy, offline. Logged to every logger as ``eval/fd_shapes``
    and ``eval/label_accuracy`` and appended to ``metrics_path`` (one entry per evaluation).
    Cost is bounded by ``num_samples`` and the sampler (e.g. Heun 10 steps = 20 NFE per sample).
    """

    def __init__(
        self,
        *,
        every_n_steps: int,
        num_samples: int = 500,
        batch_size: int = 250,
        sampler: dict,
        cfg_scale: float = 1.0,
        cache_dir: str,
        metrics_path: str,
        reference_seed: int = 1,
        seed: int = 0,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"SampleMetricsCallback needs num_samples >= 2, got {num_samples}")
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        sampler = dict(sampler)
        self.solver = build_solver(sampler.pop("name"), **sampler)
        self.cfg_scale = float(cfg_scale)
        self.cache_dir = cache_dir
        self.metrics_path = Path(metrics_path)
        self.reference_seed = int(reference_seed)
        self.seed = int(seed)
        self._oracle = None
        self._reference = None
        self._last_step = -1

    def _evaluate(self, trainer: L.Trainer, pl_module) -> dict | None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return None
        self._last_step = step
        from latent_flow.evaluation import oracle as oracle_mod

        data = pl_module.hparams.get("data") or {}
        if data.get("name") != "shapes":
            raise ValueError("SampleMetricsCallback computes FD-shapes: it needs a model trained on data=shapes")
        resolution = int(data["resolution"])
        if self._oracle is None:
            self._oracle = oracle_mod.load_or_train_oracle(self.cache_dir, resolution).to(pl_module.device)
            self._reference = oracle_mod.oracle_features(
                self._oracle, oracle_mod.real_images(self.num_samples, resolution, self.reference_seed)
            )
        labels = (
            torch.arange(self.num_samples) % pl_module.num_classes if pl_module.condition.uses_label else None
        )
        images, start = [], time.perf_counter()
        for lo in range(0, self.num_samples, self.batch_size):
            idx = list(range(lo, min(self.num_samples, lo + self.batch_size)))
            result = pl_module.sample_latents(
                self.solver, indices=idx, labels=None if labels is None else labels[idx],
                cfg_scale=self.cfg_scale, seed=self.seed,
            )
            images.append(pl_module.decode(result.x).cpu())
        images = torch.cat(images)
        metrics = {"eval/fd_shapes": oracle_mod.fd_shapes(self._oracle, images, self._reference)}
        if labels is not None:
            metrics["eval/label_accuracy"] = oracle_mod.oracle_metrics_on_samples(
                self._oracle, images, labels=labels
            )["label_accuracy"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        entry = {"step": step, **metrics, "nfe": result.nfe, "seconds": round(time.perf_counter() - start, 2)}
        history = json.loads(self.metrics_path.read_text()) if self.metrics_path.exists() else {}
        history.setdefault("eval_history", []).append(entry)
        write_json(self.metrics_path, history)
        log.info("step %d: %s", step, metrics)
        return metrics

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module)
