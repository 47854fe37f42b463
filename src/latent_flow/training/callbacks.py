"""Training callbacks: sample grids from the EMA weights, metrics.json, ``interrupted.ckpt``, and the
record of each attempt at a run (what may be written into the run directory, and when).

A run directory is written only once the attempt's first training step has finished
(:class:`RunAttempt`, :class:`InterruptedCheckpoint`, :class:`MetricsJSONCallback`): a resume that fails
at start-up leaves the run it was resuming as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from omegaconf import OmegaConf

from latent_flow.evaluation import oracle as oracle_mod
from latent_flow.evaluation.feature_metrics import FEATURE_METRICS, ReferenceSet, feature_metrics, scores
from latent_flow.evaluation.metrics import compute_features, count_label, metric_names
from latent_flow.evaluation.reference import (
    SPLITS,
    build_feature_extractor,
    check_reference_data,
    compute_reference,
    extractor_fingerprint,
    extractor_identity,
    load_reference_stats,
    reference_indices,
)
from latent_flow.sampling.solvers import build_solver
from latent_flow.training.grids import spatial_training_grid
from latent_flow.utils.distributed import gather_rows, rank_indices
from latent_flow.utils.images import make_grid_image, save_png, to_uint8
from latent_flow.utils.io import atomic_write_text, write_json
from latent_flow.utils.logfiles import release_deferred_file_logs

__all__ = [
    "InterruptedCheckpoint",
    "MetricsJSONCallback",
    "RunAttempt",
    "SCORE_KEYS",
    "SampleGridCallback",
    "SampleMetricsCallback",
    "check_guidance",
    "grid_labels",
    "legacy_key",
]

log = logging.getLogger(__name__)


def check_guidance(pl_module, cfg_scale: float, callback: str) -> None:
    """Fail before training when a callback would guide an unconditional model (it can't)."""
    cond = getattr(pl_module, "condition", None)
    if cfg_scale != 1.0 and cond is not None and not (cond.uses_label or cond.spatial_channels):
        raise ValueError(
            f"{callback}: cfg_scale={cfg_scale} (samples.cfg_scale) needs a conditional model, but this run "
            "trains condition=none; set samples.cfg_scale=1.0"
        )


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
        if pl_module.condition.spatial_channels:  # inpaint / semantic: a row per validation item's condition
            images, ncol, nfe = spatial_training_grid(
                pl_module,
                trainer.datamodule,
                self.solver,
                per_row=self.per_class,
                rows=min(self.max_rows, 4),
                seed=self.seed,
                cfg_scale=self.cfg_scale,
            )
        else:
            labels = grid_labels(
                pl_module.num_classes if pl_module.condition.uses_label else 0, self.per_class, self.max_rows
            )
            count = len(labels) if labels is not None else self.per_class * min(self.max_rows, 4)
            result = pl_module.sample_latents(
                self.solver, indices=range(count), labels=labels, cfg_scale=self.cfg_scale, seed=self.seed
            )
            images, ncol, nfe = pl_module.decode(result.x), self.per_class, result.nfe
        path = save_png(make_grid_image(images, ncol, upscale=self.upscale), self.out_dir / f"step_{step:07d}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B, Neptune, ...
                logger.log_image(key="samples/ema_grid", images=[str(path)], step=step)
        log.info("sample grid (NFE %d) -> %s", nfe, path)
        return path

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        check_guidance(pl_module, self.cfg_scale, "sample grids")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step  # the step resumed from has its grid (an attempt without steps: none)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._grid(trainer, pl_module)


class _AttemptSteps:
    """The global step at which this attempt's training started (``None`` before ``on_train_start``)."""

    _start_step: int | None = None

    def _trained(self, trainer: L.Trainer) -> bool:
        """Whether this attempt has finished at least one training step."""
        return self._start_step is not None and trainer.global_step > self._start_step


class MetricsJSONCallback(_AttemptSteps, L.Callback):
    """Write the final (and latest) logged metrics to ``metrics.json`` in the run directory.

    Only once this attempt has trained: a run that stops before its first step (a config error when
    resuming) leaves the ``metrics.json`` of the run it resumed as it was.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start = time.time()
        self._start_step = trainer.global_step

    def _write(self, trainer: L.Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        seconds = time.time() - self._start if self._start else None
        steps = trainer.global_step - (self._start_step or 0)
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
        if not trainer.sanity_checking and self._trained(trainer):
            self._write(trainer, "running")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._trained(trainer):
            self._write(trainer, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if self._trained(trainer):
            self._write(trainer, f"interrupted ({type(exception).__name__})")


class InterruptedCheckpoint(_AttemptSteps, OnExceptionCheckpoint):
    """``interrupted.ckpt`` on Ctrl-C, SIGTERM or a crash: Lightning's ``OnExceptionCheckpoint``, but only
    when this attempt has trained since it started (or resumed).

    A run that fails before its first step (a config error on resume, a bad schedule) would otherwise
    write a step-0 checkpoint over the ``interrupted.ckpt`` it may be resuming from; here it writes
    nothing. The file of an earlier attempt is removed at the end of a finished run only when this
    attempt trained, as Lightning does.
    """

    def __init__(self, dirpath: str | os.PathLike, filename: str = "interrupted") -> None:
        super().__init__(dirpath=dirpath, filename=filename)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._trained(trainer):
            log.info("no training step in this attempt: %s is not written", self.ckpt_path)
            return
        super().on_exception(trainer, *args, **kwargs)

    def teardown(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self._trained(trainer):
            super().teardown(trainer, *args, **kwargs)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunAttempt(_AttemptSteps, L.Callback):
    """One attempt at a run (a fresh start, or a resume into the same directory): it writes nothing into
    the run directory before its first training step has finished.

    At that step every rank releases its deferred log file (:mod:`latent_flow.utils.logfiles`) and rank 0
    records the attempt in ``attempts/<nnn>/`` (``001``, ``002``, ...): ``config.yaml`` (resolved, also
    written as the run's ``config.yaml``), ``overrides.yaml`` (the command line's Hydra overrides) and
    ``status.json`` (``running``; ``finished`` or ``interrupted (<exception>)`` with the step reached, from
    :meth:`finish` / ``on_exception``). A run directory written before attempts were recorded keeps its
    ``config.yaml`` and ``metrics.json`` status as ``attempts/001/`` when it is resumed.

    Args:
        output_dir: the run directory.
        config_yaml: the attempt's resolved config (YAML).
        overrides: the Hydra overrides of the command line.
        ckpt_path: the checkpoint the attempt resumes from (``None``: a fresh start).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        config_yaml: str,
        overrides: Sequence[str] = (),
        ckpt_path: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.config_yaml = config_yaml
        self.overrides = [str(o) for o in overrides]
        self.ckpt_path = ckpt_path
        self.started = False
        self.number: int | None = None
        self._started_at: str | None = None

    @property
    def folder(self) -> Path | None:
        """``attempts/<nnn>`` of this attempt, once recorded (rank 0)."""
        return None if self.number is None else self.output_dir / "attempts" / f"{self.number:03d}"

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.started and self._trained(trainer):
            self._begin(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if self.started:
            self._write_status(trainer, f"interrupted ({type(exception).__name__})")

    def finish(self, trainer: L.Trainer, status: str) -> None:
        """Record how the attempt ended (after ``trainer.fit`` returned)."""
        if self.started:
            self._write_status(trainer, status)

    def _begin(self, trainer: L.Trainer) -> None:
        self.started = True
        self._started_at = _now()
        release_deferred_file_logs()
        if not trainer.is_global_zero:
            return
        root = self.output_dir / "attempts"
        if not root.exists() and (self.output_dir / "config.yaml").is_file():
            self._record_earlier_run(root / f"{1:03d}")
        numbers = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
        self.number = max(numbers, default=0) + 1
        atomic_write_text(self.folder / "config.yaml", self.config_yaml)
        atomic_write_text(self.folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(self.overrides)))
        self._write_status(trainer, "running")
        atomic_write_text(self.output_dir / "config.yaml", self.config_yaml)
        log.info("attempt %d of run %s started at step %d", self.number, self.output_dir, self._start_step)

    def _record_earlier_run(self, folder: Path) -> None:
        """Keep what a run directory of an earlier version says about its first attempt."""
        atomic_write_text(folder / "config.yaml", (self.output_dir / "config.yaml").read_text())
        overrides = self.output_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            atomic_write_text(folder / "overrides.yaml", overrides.read_text())
        status: dict[str, Any] = {"attempt": 1, "recorded_at": _now(), "note": "recorded when attempt 2 started"}
        try:
            summary = json.loads((self.output_dir / "metrics.json").read_text())
            status.update({k: summary[k] for k in ("status", "global_step") if k in summary})
        except (OSError, json.JSONDecodeError):
            status["status"] = "unknown"
        write_json(folder / "status.json", status)

    def _write_status(self, trainer: L.Trainer, status: str) -> None:
        if not trainer.is_global_zero or self.folder is None:
            return
        write_json(
            self.folder / "status.json",
            {
                "attempt": self.number,
                "status": status,
                "ckpt_path": self.ckpt_path,
                "start_step": self._start_step,
                "global_step": int(trainer.global_step),
                "started_at": self._started_at,
                "updated_at": _now(),
            },
        )


#: stable logged key of each score (``eval/fid`` whatever N: monitor it, plot it across runs)
SCORE_KEYS = {
    "fid": "eval/fid",
    "kid_mean": "eval/kid",
    "kid_std": "eval/kid_std",
    "precision": "eval/precision",
    "recall": "eval/recall",
    "is_mean": "eval/is",
    "is_std": "eval/is_std",
}


def legacy_key(score: str, num_samples: int) -> str:
    """The key of a score before the stable names (``eval/fid@5k``, ``eval/kid@5k_mean``), kept one release."""
    stem, _, rest = score.partition("_")
    return f"eval/{stem}@{count_label(num_samples)}" + (f"_{rest}" if rest else "")


class SampleMetricsCallback(L.Callback):
    """Every ``every_n_steps`` (and at the last step): sample ``num_samples`` images with the EMA weights and
    log metrics that ``ModelCheckpoint(monitor=...)``, ``EarlyStopping`` and the sweeper can use.

    ``metrics`` (any of):

    * ``fd_shapes``, ``label_accuracy`` (models trained on ``shapes``, offline): FD-shapes against
      real renders and the shapes oracle's label accuracy of class-conditional samples;
    * ``fid``, ``kid``, ``precision_recall``, ``is``: in the feature space of ``feature_extractor``
      (a ``{_target_: ...}`` config, the FID Inception by default through ``callbacks=eval_fid``)
      against ``reference_stats`` (the out_dir of ``python -m latent_flow.reference_stats``; refused at
      the start of training when it is of other data or another resolution than the model's, unless
      ``allow_reference_mismatch``) or,
      when that is ``null``, against statistics of ``reference_num_images`` images of the
      training data's ``reference_split``, computed once (every rank its share of the chunks of
      ``reference_chunk_size`` images) and cached on
      disk under ``<cache_dir>/references/`` (keyed by the dataset fingerprint, the images and the extractor).

    Every rank takes part: rank ``r`` of ``W`` samples the indices ``i % W == r`` (the noise and the label of
    sample ``i`` depend on ``(seed, i)`` alone, so the images are those of a one-process run), quantises them to
    uint8 like the PNGs that ``latent_flow.evaluate`` scores, and updates the
    :mod:`~latent_flow.evaluation.feature_metrics` Metrics; ``compute`` syncs them (sums of the features and
    outer products for FID, the features with their indices for KID / precision-recall / IS), so every rank
    holds the value of the whole set. The shapes metrics gather the images' pixels instead (rank 0 scores, the
    value is broadcast).

    Logged under stable keys (``eval/fid``, ``eval/kid``, ``eval/kid_std``, ``eval/precision``,
    ``eval/recall``, ``eval/is``, ``eval/fd_shapes``, ``eval/label_accuracy``) with ``pl_module.log`` on every
    rank (the same value everywhere; ``sync_dist=False``: the Metric already synced), to every logger at the
    step, and appended to ``metrics_path`` (``eval_history``: one entry per evaluation with N, the reference,
    NFE and seconds; ``eval_settings``: N, the reference and the keys). ``legacy_keys`` adds the keys of
    earlier versions (``eval/fid@N``, ``eval/kid@N_mean``, ...) for one release. Cost is bounded by
    ``num_samples`` and the sampler (e.g. Heun 10 steps = 20 NFE per sample), divided over the ranks.
    """

    SHAPES_METRICS = ("fd_shapes", "label_accuracy")
    FEATURE_METRICS = FEATURE_METRICS

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
        metrics: Any = ("fd_shapes", "label_accuracy"),
        feature_extractor: dict | None = None,
        reference_stats: str | None = None,
        reference_split: str = "train",
        reference_num_images: int | None = None,
        allow_reference_mismatch: bool = False,
        reference_chunk_size: int = 1000,
        legacy_keys: bool = True,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"SampleMetricsCallback needs num_samples >= 2, got {num_samples}")
        metrics = tuple(str(m) for m in metrics)
        unknown = set(metrics) - set(self.SHAPES_METRICS) - set(self.FEATURE_METRICS)
        if unknown or not metrics:
            raise ValueError(
                f"SampleMetricsCallback: unknown metrics {sorted(unknown)} (got {list(metrics)}); valid: "
                f"{list(self.SHAPES_METRICS + self.FEATURE_METRICS)}"
            )
        self.metrics = metrics
        self.feature_metrics = tuple(m for m in metrics if m in self.FEATURE_METRICS)
        if self.feature_metrics and feature_extractor is None:
            raise ValueError(f"metrics {list(self.feature_metrics)} need a feature_extractor ({{_target_: ...}})")

        if reference_split not in SPLITS:
            raise ValueError(f"reference_split={reference_split!r} is not one of {SPLITS}")
        self.feature_spec = extractor_identity(feature_extractor) if feature_extractor is not None else None
        self.reference_stats = reference_stats
        self.reference_split = reference_split
        self.reference_num_images = reference_num_images
        self.allow_reference_mismatch = bool(allow_reference_mismatch)
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
        self.reference_chunk_size = int(reference_chunk_size)
        self.legacy_keys = bool(legacy_keys)
        self._oracle = None
        self._reference = None
        self._extractor = None
        self._extractor_weights = None  # its weights' fingerprint: checks and keys the reference statistics
        self._feature_reference: ReferenceSet | None = None
        self._feature_metrics = None  # the MetricCollection, built once the reference is known
        self._reference_dir: str | None = None
        self._last_step = -1
        self._train_start: float | None = None  # monotonic time of this attempt's start
        self._elapsed_before = 0.0  # training-stage seconds of earlier attempts (restored with the checkpoint)
        self._eval_seconds = 0.0  # seconds spent in these evaluations so far, all attempts

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_seconds": self.elapsed_seconds(), "eval_seconds": self._eval_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._elapsed_before = float(state_dict.get("elapsed_seconds", 0.0))
        self._eval_seconds = float(state_dict.get("eval_seconds", 0.0))

    def elapsed_seconds(self) -> float:
        """Wall-clock seconds of the training stage so far (all attempts), evaluations included."""
        now = time.monotonic() - self._train_start if self._train_start is not None else 0.0
        return self._elapsed_before + now

    # ------------------------------------------------------------------ references
    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        # fail before training, not hours into it: missing weights, a bad reference file. Every rank builds its
        # extractor and its share of a missing reference (a reference built by rank 0 alone would keep the other
        # ranks waiting at the next collective, past DDP's timeout for a large one)
        check_guidance(pl_module, self.cfg_scale, "sample metrics")
        if self.num_samples < trainer.world_size:
            raise ValueError(
                f"SampleMetricsCallback: num_samples={self.num_samples} is fewer than the {trainer.world_size} ranks"
            )
        if self.feature_metrics:
            self._prepare_features(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step  # the step resumed from was evaluated (an attempt without steps: none)
        self._train_start = time.monotonic()

    def _prepare_features(self, trainer: L.Trainer, pl_module) -> None:
        if self._extractor is None:
            self._extractor = build_feature_extractor(self.feature_spec)
            if isinstance(self._extractor, torch.nn.Module):
                self._extractor.to(pl_module.device)
            self._extractor_weights = extractor_fingerprint(self._extractor)
        if self._feature_reference is not None:
            return
        if self.reference_stats is not None:
            ref = load_reference_stats(
                self.reference_stats, feature_extractor=self.feature_spec, extractor_weights=self._extractor_weights
            )
            # statistics of other data / another resolution than the model's are refused before training
            data = pl_module.hparams.get("data") or {}
            check_reference_data(
                self.reference_stats,
                ref["info"],
                data=data.get("name"),
                resolution=data.get("resolution"),
                allow_mismatch=self.allow_reference_mismatch,
                flag="callbacks.sample_metrics.allow_reference_mismatch=true",
            )
            name, self._reference_dir = str(self.reference_stats), str(self.reference_stats)
        else:
            ref = self._cached_reference(trainer, pl_module)
            name = self.reference_split  # "fid@5k vs 10k train"
        self._feature_reference = ReferenceSet.from_stats(ref, name=name)
        self._feature_metrics = feature_metrics(
            self.feature_metrics,
            self._feature_reference,
            has_logits=bool(getattr(self._extractor, "has_logits", False)),
            kid_subset_size=min(1000, self.num_samples),
        ).to(_metric_device(pl_module.device))

    def _cached_reference(self, trainer: L.Trainer, pl_module) -> dict:
        dm = trainer.datamodule
        dataset = getattr(dm, "dataset", None)
        if dataset is None or not hasattr(dataset, "fingerprint"):
            raise ValueError(
                "SampleMetricsCallback: reference_stats=null needs the training datamodule's image dataset (with a "
                "fingerprint) to compute reference statistics; pass reference_stats=<dir> from latent_flow.reference_stats"
            )
        num = self.reference_num_images
        indices = reference_indices(
            len(dataset),
            split=self.reference_split,
            val_fraction=float(dm.val_fraction),
            seed=int(dm.seed),
            num_images=num,
        )
        key = hashlib.sha1(
            json.dumps(
                [dataset.fingerprint(), indices.tolist(), self.feature_spec, self._extractor_weights],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        out_dir = Path(self.cache_dir) / "references" / key
        if not (out_dir / "stats.npz").exists():
            # every rank its chunks (k % world_size == rank); rank 0 waits for the others' files and merges
            log.info(
                "[rank %d/%d] computing reference statistics of %d %s images -> %s",
                trainer.global_rank,
                trainer.world_size,
                len(indices),
                self.reference_split,
                out_dir,
            )
            compute_reference(
                dataset,
                indices,
                self._extractor,
                out_dir,
                extractor_spec=self.feature_spec,
                info={"split": self.reference_split, "data": (pl_module.hparams.get("data") or {}).get("name")},
                device=pl_module.device,
                chunk_size=self.reference_chunk_size,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                progress=trainer.is_global_zero,
            )
        trainer.strategy.barrier("sample_metrics_reference")  # rank 0 has merged stats.npz
        self._reference_dir = str(out_dir)
        ref = load_reference_stats(
            out_dir, feature_extractor=self.feature_spec, extractor_weights=self._extractor_weights
        )
        if ref["features"] is None:
            raise ValueError(f"{out_dir} holds only mean / covariance; delete it to recompute the reference features")
        return ref

    # ------------------------------------------------------------------ evaluation
    def _sample(self, pl_module, indices: list[int], labels: torch.Tensor | None):
        """Decoded images of sample ``indices`` (in batches of ``batch_size``) and the NFE per sample."""
        images, result = [], None
        for lo in range(0, len(indices), self.batch_size):
            idx = indices[lo : lo + self.batch_size]
            result = pl_module.sample_latents(
                self.solver,
                indices=idx,
                labels=None if labels is None else labels[lo : lo + self.batch_size],
                cfg_scale=self.cfg_scale,
                seed=self.seed,
            )
            images.append(pl_module.decode(result.x).cpu())
        return torch.cat(images), result.nfe

    def score(
        self, pl_module, *, rank: int = 0, world_size: int = 1, broadcast: Callable[[Any], Any] = lambda obj: obj
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """This rank's share of the samples scored; under ``torch.distributed`` every rank calls it and gets the
        scores of all ``num_samples`` samples. Returns ``(scores, details)``: ``{"fid": ..., "kid_mean": ...,
        "fd_shapes": ...}`` and ``{"nfe", "named", "is_unavailable"?}``."""
        indices = rank_indices(self.num_samples, rank, world_size)
        labels = torch.tensor(indices) % pl_module.num_classes if pl_module.condition.uses_label else None
        images, nfe = self._sample(pl_module, indices, labels)
        u8 = to_uint8(images)  # what evaluate's PNGs hold
        out: dict[str, float] = {}
        details: dict[str, Any] = {"nfe": nfe}
        shapes_metrics = [m for m in self.metrics if m in self.SHAPES_METRICS]
        if shapes_metrics:  # the oracle scores uint8 pixels read back (u8 / 127.5 - 1), as evaluate's PNGs
            pixels = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            device = _metric_device(pl_module.device)
            pixels = gather_rows(pixels.to(device), indices).cpu()
            all_labels = None if labels is None else gather_rows(labels.to(device), indices).cpu()
            out.update(broadcast(self._shapes_scores(pl_module, pixels, all_labels) if rank == 0 else None))
        if self.feature_metrics:
            collection = self._feature_metrics
            collection.reset()
            features, logits = compute_features(self._extractor, u8, device=pl_module.device)
            collection.update(features, torch.tensor(indices), logits)
            values = scores(collection)  # syncs: every rank gets the scores of all the samples
            if "is_unavailable" in values:
                details["is_unavailable"] = values.pop("is_unavailable")
            out.update({k: v for k, v in values.items() if v is not None})
            ref = self._feature_reference
            details["named"] = metric_names(
                values, num_samples=self.num_samples, num_reference=ref.num_images, reference=ref.name
            )
        return out, details

    def _shapes_scores(self, pl_module, pixels: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        data = pl_module.hparams.get("data") or {}
        if data.get("name") != "shapes":
            raise ValueError(
                f"SampleMetricsCallback metrics {[m for m in self.metrics if m in self.SHAPES_METRICS]} need a model "
                f"trained on data=shapes (this one: data={data.get('name')}); use metrics=[fid] with a feature "
                "extractor instead"
            )
        if self._oracle is None:
            resolution = int(data["resolution"])
            self._oracle = oracle_mod.load_or_train_oracle(self.cache_dir, resolution).to(pl_module.device)
            self._reference = oracle_mod.oracle_features(
                self._oracle, oracle_mod.real_images(self.num_samples, resolution, self.reference_seed)
            )
        out = {}
        if "fd_shapes" in self.metrics:
            out["fd_shapes"] = oracle_mod.fd_shapes(self._oracle, pixels, self._reference)
        if "label_accuracy" in self.metrics and labels is not None:
            out["label_accuracy"] = oracle_mod.oracle_metrics_on_samples(self._oracle, pixels, labels=labels)[
                "label_accuracy"
            ]
        return out

    def _keys(self, values: dict[str, float]) -> dict[str, float]:
        """The logged keys: stable ones (``eval/fid``), and those of earlier versions with ``legacy_keys``."""
        logged = {SCORE_KEYS.get(k, f"eval/{k}"): v for k, v in values.items()}
        if self.legacy_keys:
            logged.update({legacy_key(k, self.num_samples): v for k, v in values.items() if k in SCORE_KEYS})
        return logged

    def _evaluate(self, trainer: L.Trainer, pl_module, *, in_train_end: bool = False) -> dict | None:
        step = trainer.global_step
        if step == self._last_step:
            return None
        self._last_step = step
        elapsed = self.elapsed_seconds()  # before this evaluation
        start = time.perf_counter()
        values, details = self.score(
            pl_module,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            broadcast=lambda obj: trainer.strategy.broadcast(obj, src=0),
        )
        logged = self._keys(values)
        # every rank logs the value the synced Metric gave it (the same everywhere): the monitors of ModelCheckpoint
        # / EarlyStopping agree across ranks; loggers get it once, at this step
        if in_train_end:  # Lightning refuses self.log in on_train_end: the callback metrics directly
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in logged.items()})
        else:
            for key, value in logged.items():
                pl_module.log(
                    key, value, on_step=True, on_epoch=False, logger=False, sync_dist=False, batch_size=self.num_samples
                )
        seconds = time.perf_counter() - start
        eval_before, self._eval_seconds = self._eval_seconds, self._eval_seconds + seconds
        if not trainer.is_global_zero:
            return logged
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
        reference = self._feature_reference
        settings = {
            "num_samples": self.num_samples,
            "world_size": trainer.world_size,
            "keys": sorted(logged),
            "reference": None
            if reference is None
            else {"name": reference.name, "num_images": reference.num_images, "dir": self._reference_dir},
        }
        entry = {
            "step": step,
            **logged,
            "nfe": details["nfe"],
            "seconds": round(seconds, 2),
            # wall clock of the training stage when this evaluation began (all attempts, earlier evaluations
            # included) and the training time in it: elapsed minus the earlier evaluations (FID vs time curves)
            "elapsed_seconds": round(elapsed, 2),
            "train_seconds": round(elapsed - eval_before, 2),
            "num_samples": self.num_samples,
        }
        for key in ("named", "is_unavailable"):
            if key in details:
                entry[key] = details[key]
        history = json.loads(self.metrics_path.read_text()) if self.metrics_path.exists() else {}
        history["eval_settings"] = settings
        history.setdefault("eval_history", []).append(entry)
        write_json(self.metrics_path, history)
        log.info("step %d: %s", step, logged)
        return logged

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        last = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if (self.every_n_steps > 0 and step % self.every_n_steps == 0) or last:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module, in_train_end=True)  # stopped off the interval (max_time, early stopping)


def _metric_device(device: torch.device) -> torch.device:
    """Where the Metrics' float64 states live: the module's device (NCCL gathers CUDA tensors), the CPU for MPS
    (no float64 there)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device
