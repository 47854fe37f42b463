"""Files written atomically: to a temporary name beside the target, flushed to disk, then renamed.

A reader (or a crash at any moment) sees either the old file or the new one, never a part of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "temporary_path", "write_json"]


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name a file is written under before it is renamed to ``path``: ``<name>.tmp``."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename in it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``<name>.tmp``, fsync, rename; the directory fsynced too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, sync: bool = True) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), sync=sync)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (keys sorted), written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))
