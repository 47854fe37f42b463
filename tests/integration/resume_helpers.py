"""Helpers that training subprocesses of the resume tests import (``PYTHONPATH=tests/integration``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigkillMidStep(L.Callback):
    """``kill -9`` this process in the middle of training step ``step`` (after its forward pass, RNG drawn).

    Nothing runs afterwards: no exception handler, no ``interrupted.ckpt``, no logger flush; what
    survives is what was on disk (the last periodic checkpoint).
    """

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step + 1 == self.step:  # global_step counts finished steps
            os.kill(os.getpid(), signal.SIGKILL)
