"""Training progress that reads well in a log file: the tqdm bar on a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns; written to a file (``python -m latent_flow.train > run.log``,
a batch job's output) it becomes one line of hundreds of kilobytes. :class:`ProgressBar` keeps Lightning's
bar when standard output is a terminal and otherwise writes one plain line every ``every_n_steps`` steps
or ``every_n_seconds`` seconds (whichever comes first), one after each validation and one at the end::

    step 120/2200 (5.5%) | train/loss 0.4123 | val/loss 0.3954 | 8.21 it/s | elapsed 0:00:15 | eta 0:04:13

The lines go through the ``latent_flow.progress`` logger, so they reach the console and the run's log
file alike. Only global rank 0 writes them; ``refresh_rate=0`` turns both the bar and the lines off.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from latent_flow.utils.progress import duration, is_terminal

__all__ = ["ProgressBar", "format_progress_line"]

log = logging.getLogger("latent_flow.progress")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_progress_line(
    step: int, max_steps: int | None, metrics: dict[str, Any], rate: float | None, elapsed: float
) -> str:
    """One progress line: step (of max and percent), the progress-bar metrics, it/s, elapsed time and ETA."""
    parts = [f"step {step}" + (f"/{max_steps} ({100.0 * step / max_steps:.1f}%)" if max_steps else "")]
    parts += [f"{k} {_number(v)}" for k, v in metrics.items() if k != "v_num"]
    if rate is not None and rate > 0:
        parts.append(f"{rate:.3g} it/s")
    parts.append(f"elapsed {duration(elapsed)}")
    if rate and max_steps and step < max_steps:
        parts.append(f"eta {duration((max_steps - step) / rate)}")
    return " | ".join(parts)


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar on a terminal; plain periodic lines otherwise (module docstring).

    Args:
        refresh_rate: the bar's refresh rate in batches; 0 disables the bar and the lines.
        every_n_steps: a line every this many optimizer steps (``None``: by time only).
        every_n_seconds: a line at least this often while training runs (``None``: by steps only).
        plain: ``True`` / ``False`` forces lines / the bar; ``None`` (default) decides by whether standard
            output is a terminal.
    """

    def __init__(
        self,
        refresh_rate: int = 10,
        every_n_steps: int | None = None,
        every_n_seconds: float | None = 30.0,
        plain: bool | None = None,
        process_position: int = 0,
        leave: bool = False,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null, got {every_n_steps}")
        if every_n_seconds is not None and not float(every_n_seconds) > 0:
            raise ValueError(f"every_n_seconds must be > 0 or null, got {every_n_seconds}")
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.every_n_seconds = None if every_n_seconds is None else float(every_n_seconds)
        self.plain = (not is_terminal(sys.stdout)) if plain is None else bool(plain)
        self._start = self._last_time = 0.0
        self._last_step = 0

    # the tqdm bars are drawn only on a terminal
    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and not self.plain

    @property
    def lines_enabled(self) -> bool:
        """Whether plain lines are written (plain mode, rank 0, refresh_rate > 0)."""
        return self.plain and self._enabled and self.refresh_rate > 0

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str = "") -> None:
        now = time.monotonic()
        step = trainer.global_step
        rate = (
            (step - self._last_step) / (now - self._last_time)
            if now > self._last_time and step > self._last_step
            else None
        )
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        line = format_progress_line(step, max_steps, self.get_metrics(trainer, pl_module), rate, now - self._start)
        log.info("%s%s", prefix, line)
        self._last_time, self._last_step = now, step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = self._last_time = time.monotonic()
        self._last_step = trainer.global_step  # a resumed run counts its rate from where it starts

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.lines_enabled:
            return
        step = trainer.global_step
        due_steps = self.every_n_steps is not None and step - self._last_step >= self.every_n_steps
        due_time = self.every_n_seconds is not None and time.monotonic() - self._last_time >= self.every_n_seconds
        if due_steps or due_time:
            self._line(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.lines_enabled and not trainer.sanity_checking and trainer.state.fn == "fit":
            log.info(
                "validation at step %d: %s",
                trainer.global_step,
                " | ".join(
                    f"{k} {_number(float(v))}"
                    for k, v in trainer.callback_metrics.items()
                    if k.startswith("val") and v.numel() == 1
                ),
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.lines_enabled:
            self._line(trainer, pl_module, prefix="done: ")
