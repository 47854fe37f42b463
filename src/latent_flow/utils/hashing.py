"""Content hashes: of files (checkpoint identities) and of module weights (what a refiner was trained on)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["file_sha256", "update_with_state_dict", "weights_hash"]


def file_sha256(path: str | os.PathLike, *, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256 (the checkpoint's identity in metrics.json)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def update_with_state_dict(h, module: nn.Module, *, prefix: str = "", skip: Iterable[str] = ()) -> None:
    """Feed every parameter and buffer of ``module`` (name, dtype, shape, bytes) to the hash ``h``."""
    skip = set(skip)
    for name, tensor in module.state_dict().items():
        if name in skip:
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{prefix}{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_hash(module: nn.Module) -> str:
    """SHA-1 over every parameter and buffer of ``module`` (names, dtypes, shapes, bytes)."""
    h = hashlib.sha1()
    update_with_state_dict(h, module)
    return h.hexdigest()
