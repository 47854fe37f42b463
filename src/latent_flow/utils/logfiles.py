"""A log file that is written only once a run has started.

``latent_flow.train`` logs to ``<run dir>/train.log`` through :class:`DeferredFileHandler`
(``conf/hydra/train.yaml``): records are held in memory until :func:`release_deferred_file_logs` is
called at the run's first training step, then written, and every later record goes straight to the
file. A run that fails before its first step (a config error when resuming into an existing run
directory) leaves the log file as it was; its records were on the console.
"""

from __future__ import annotations

import logging
import os

__all__ = ["DeferredFileHandler", "release_deferred_file_logs"]


class DeferredFileHandler(logging.FileHandler):
    """A ``logging.FileHandler`` that neither opens nor writes its file before :meth:`start_writing`.

    Args:
        filename, mode, encoding: as for ``logging.FileHandler`` (the file is appended to by default).
        max_held: records held before writing starts, at most (older ones are dropped first).
    """

    def __init__(
        self, filename: str | os.PathLike, mode: str = "a", encoding: str | None = None, max_held: int = 100_000
    ) -> None:
        super().__init__(filename, mode=mode, encoding=encoding, delay=True)
        self.max_held = int(max_held)
        self._held: list[logging.LogRecord] | None = []

    @property
    def writing(self) -> bool:
        """Whether records go to the file (after :meth:`start_writing`)."""
        return self._held is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._held is None:
            super().emit(record)
            return
        if record.args:  # format now: the arguments may change before they are written
            record.msg, record.args = record.getMessage(), None
        self._held.append(record)
        if len(self._held) > self.max_held:
            del self._held[0]

    def start_writing(self) -> None:  # not ``release``: that is logging.Handler's lock
        """Write the held records, then write every later one as it comes."""
        if self._held is None:
            return
        held, self._held = self._held, None
        for record in held:
            super().emit(record)

    def close(self) -> None:
        """Close the file; records still held (writing never started) are dropped, the file is not created."""
        if self._held is not None:
            self._held = []
        super().close()


def release_deferred_file_logs(logger: logging.Logger | None = None) -> int:
    """Start writing every :class:`DeferredFileHandler` of ``logger`` (the root logger by default); returns
    how many there are."""
    handlers = [h for h in (logger or logging.getLogger()).handlers if isinstance(h, DeferredFileHandler)]
    for handler in handlers:
        handler.start_writing()
    return len(handlers)
