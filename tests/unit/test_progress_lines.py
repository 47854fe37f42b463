"""Plain progress lines for long loops in a log file (utils/progress.py): no carriage returns, one line per
interval and one at the end, a tqdm bar only on a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from latent_flow.utils import progress as progress_mod
from latent_flow.utils.progress import LineProgress, progress_bar


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    return now


def test_lines_every_interval_and_at_close(clock, caplog):
    caplog.set_level(logging.INFO, logger="latent_flow.progress")
    bar = progress_bar(400, "encoding latents -> x", unit="img", every_seconds=30, stream=_Stream(False))
    assert isinstance(bar, LineProgress)
    for _ in range(4):
        clock[0] += 10.0
        bar.update(50)  # 10 s per 50 images: a line at 30 s only
    bar.set_postfix(loss="0.123")
    bar.close()
    bar.close()  # once
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "encoding latents -> x: 150/400 (37.5%) | 5 img/s | elapsed 0:00:30 | eta 0:00:50",
        "encoding latents -> x: 200/400 (50.0%) | loss 0.123 | 5 img/s | elapsed 0:00:40 | eta 0:00:40",
    ]
    assert not any("\r" in line for line in lines)


def test_a_terminal_gets_the_bar_and_disable_gets_nothing(caplog):
    caplog.set_level(logging.INFO, logger="latent_flow.progress")
    tty = _Stream(True)
    bar = progress_bar(3, "rendering", stream=tty)
    assert not isinstance(bar, LineProgress)
    bar.update(3)
    bar.close()
    assert "rendering" in tty.getvalue()
    off = progress_bar(3, "off", disable=True, stream=_Stream(False))
    off.update(3)
    off.close()
    assert not caplog.records
    with pytest.raises(ValueError, match="every_seconds"):
        LineProgress(3, "x", every_seconds=0)
