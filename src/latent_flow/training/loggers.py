"""Loggers for run directories that are resumed: a CSV logger that keeps every step once, and a W&B logger
that writes nothing before the first step and continues the same W&B run when the directory is resumed."""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from latent_flow.utils.io import atomic_write_text

#: the W&B run id of a run directory, written when its W&B run starts: ``<run dir>/wandb/latent_flow_run_id``
WANDB_RUN_ID_FILE = "latent_flow_run_id"

__all__ = ["ResumableCSVWriter", "RunCSVLogger", "RunWandbLogger", "build_wandb_logger", "wandb_has_credentials"]


class ResumableCSVWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, for a run directory that an earlier attempt wrote.

    Lightning's writer deletes an existing ``metrics.csv`` as soon as it is created (at start-up, before
    any step) and writes ``hparams.yaml`` at once. This one touches nothing before it has rows to write:
    at the first save it keeps the earlier rows of steps before the first step it logs (rows of steps
    that the resumed attempt trains again are replaced, not duplicated; at that first step only the rows
    of the metrics it logs again), merges the columns, and then appends as Lightning does. ``hparams.yaml`` is written with the rows.
    """

    def __init__(self, log_dir: str) -> None:  # not super().__init__(): it deletes metrics.csv
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._fs = get_filesystem(log_dir)
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(self.log_dir, self.NAME_METRICS_FILE)
        self._adopted = False

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record hyper-parameters; written to ``hparams.yaml`` with the next rows."""
        self.hparams.update(params)
        if self._adopted:
            save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def _adopt_earlier_rows(self) -> None:
        """Keep the earlier attempts' rows of steps before this attempt's first logged step."""
        self._fs.makedirs(self.log_dir, exist_ok=True)
        self._adopted = True
        if self.hparams:
            save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        first_new = min(int(row["step"]) for row in self.metrics)
        # at the first step this attempt logs, only the rows of the metrics it logs again are replaced: a run
        # interrupted between a training step and the validation that follows it resumes by running that
        # validation, logged at the step of the training row before it (Lightning labels both with the
        # batches stepped so far), and that training row is not trained again
        again = {k for row in self.metrics if int(row["step"]) == first_new for k in row if k not in ("step", "epoch")}
        kept = [row for row in rows if _keep_earlier_row(row, first_new, again)]
        self.metrics_keys = sorted(set(header))
        if len(kept) != len(rows) or header != self.metrics_keys:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.metrics_file_path, out.getvalue())

    def save(self) -> None:
        if not self.metrics:
            return
        if not self._adopted:
            self._adopt_earlier_rows()
        super().save()


def _keep_earlier_row(row: dict[str, str], first_new: int, again: set[str]) -> bool:
    """An earlier attempt's row stays when its step comes before ``first_new``, or is ``first_new`` and
    none of its metrics is among those (``again``) the resumed attempt logs at that step."""
    step = _row_step(row)
    if step is None or step > first_new:
        return False
    return step < first_new or not any(row.get(k) not in (None, "") for k in again)


def _row_step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class RunCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` writing through :class:`ResumableCSVWriter`: nothing is created or deleted
    before the first rows, and a resumed run's ``metrics.csv`` holds every logged step exactly once
    (``conf/logger/csv.yaml``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableCSVWriter:
        if self._experiment is None:
            self._experiment = ResumableCSVWriter(log_dir=self.log_dir)
        return self._experiment


log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when an API key is available without asking (env var or ~/.netrc from `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(Path.home() / ".netrc").authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return auth is not None


class RunWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` for a run directory (``save_dir``) that may be an earlier attempt's.

    * Nothing is created before the first logged metrics: Lightning hands the hyper-parameters over at
      start-up, and the stock logger starts its W&B run (and its ``wandb/`` folder) right then, so a run
      that fails before its first step would leave an empty W&B run behind. They are kept here and sent
      when the run starts.
    * The W&B run id is written to ``<save_dir>/wandb/latent_flow_run_id`` when the run starts; a later
      attempt in the same directory (``ckpt_path=... hydra.run.dir=<run>``) reads it and continues that
      run (``resume="allow"``): one run in the W&B project per run directory, offline or online
      (``wandb sync`` of the attempts' offline folders uploads them into the one run).
    """

    def __init__(self, *, save_dir: str, **kwargs: Any) -> None:
        self._id_file = Path(save_dir) / "wandb" / WANDB_RUN_ID_FILE
        run_id = kwargs.pop("id", None) or self.previous_run_id(save_dir)
        if run_id is None:  # W&B's own ids: 8 characters of [a-z0-9]
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        self._resumes = self._id_file.is_file()
        self._pending_hparams: list[Any] = []
        super().__init__(save_dir=save_dir, id=run_id, **kwargs)

    @staticmethod
    def previous_run_id(save_dir: str | os.PathLike) -> str | None:
        """The W&B run id an earlier attempt in ``save_dir`` started, or ``None``."""
        path = Path(save_dir) / "wandb" / WANDB_RUN_ID_FILE
        return path.read_text().strip() or None if path.is_file() else None

    @property
    def resumes(self) -> bool:
        """Whether this logger continues the W&B run of an earlier attempt in the same directory."""
        return self._resumes

    @property
    @rank_zero_experiment
    def experiment(self):
        starting = self._experiment is None
        if starting:
            self._id_file.parent.mkdir(parents=True, exist_ok=True)
        run = WandbLogger.experiment.fget(self)
        if starting and self._experiment is not None:
            atomic_write_text(self._id_file, f"{self._id}\n")
            pending, self._pending_hparams = self._pending_hparams, []
            for params in pending:
                super().log_hyperparams(params)
        return run

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if self._experiment is None:
            self._pending_hparams.append(params)  # sent when the run starts (the first logged metrics)
        else:
            super().log_hyperparams(params)


def build_wandb_logger(
    *, project: str, name: str | None, save_dir: str, mode: str = "auto", group: str = "", tags: list | None = None
):
    """A Lightning ``WandbLogger`` that never blocks on a login prompt.

    ``mode="auto"`` logs online when credentials exist and offline otherwise
    (``wandb sync`` uploads an offline run later).
    """
    if mode not in {"auto", "online", "offline", "disabled"}:
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
        if mode == "offline":
            log.info("W&B: no API key found, logging offline to %s (upload later with `wandb sync`)", save_dir)
    if mode == "online" and not wandb_has_credentials():
        raise RuntimeError("logger.wandb.mode=online needs WANDB_API_KEY or `wandb login`; use mode=offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = RunWandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        mode=mode,
        group=group or None,
        tags=list(tags or []),
        log_model=False,
    )
    if logger.resumes:
        log.info("W&B: continuing run %s of %s (an earlier attempt in this directory)", logger.version, save_dir)
    return logger
