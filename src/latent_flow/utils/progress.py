"""Progress of long loops (encoding, rendering, features, sampling) that reads well in a log file.

:func:`progress_bar` returns a tqdm bar when standard error is a terminal and otherwise a
:class:`LineProgress`, which writes one plain line through the ``latent_flow.progress`` logger every
``every_seconds`` seconds and one at the end, instead of a bar's carriage returns (a batch job's log, or
``python -m latent_flow.prepare_data ... > prepare.log``, would otherwise hold one line of many kilobytes)::

    encoding latents -> emoji-9762c4b1: 512/3498 (14.6%) | 13.6 img/s | elapsed 0:00:37 | eta 0:03:39

Both take ``update(n)``, ``set_postfix(**values)`` and ``close()`` (also as a context manager).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["LineProgress", "duration", "is_terminal", "progress_bar"]

log = logging.getLogger("latent_flow.progress")


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an open terminal (a closed or replaced stream is not)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``H:MM:SS`` of a number of seconds."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


class LineProgress:
    """Plain progress lines (module docstring): one every ``every_seconds`` seconds of ``update``s, one at
    ``close`` (when anything was counted)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every_seconds: float = 30.0) -> None:
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
        self.total, self.desc, self.unit, self.every_seconds = total, desc, unit, float(every_seconds)
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._closed = False

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        count = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.1f}%)" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count}", *(f"{k} {v}" for k, v in self.postfix.items())]
        rate = self.n / elapsed if elapsed > 0 else None
        if rate:
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {duration(elapsed)}")
        if rate and self.total and self.n < self.total:
            parts.append(f"eta {duration((self.total - self.n) / rate)}")
        return " | ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            log.info("%s", self.line())

    def set_postfix(self, **values: Any) -> None:
        self.postfix = {k: v for k, v in values.items()}

    def close(self) -> None:
        if not self._closed and self.n:
            log.info("%s", self.line())
        self._closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(
    total: int | None,
    desc: str,
    *,
    unit: str = "it",
    disable: bool = False,
    every_seconds: float = 30.0,
    mininterval: float = 0.1,
    stream: IO[str] | None = None,
):
    """A tqdm bar on a terminal (``stream``, standard error by default), plain lines otherwise; nothing when
    ``disable``."""
    if disable:
        return tqdm(total=total, disable=True)
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, mininterval=mininterval, file=stream)
    return LineProgress(total, desc, unit=unit, every_seconds=every_seconds)
