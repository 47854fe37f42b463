"""Content hashes: of files (checkpoint checksums and identities) and of module weights (what a refiner was
trained on)."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable

import torch
import xxhash
from torch import nn

__all__ = ["FILE_HASHES", "file_digest", "file_sha256", "update_with_state_dict", "weights_hash"]

#: the file hashes of :func:`file_digest`: ``xxh128`` is XXH3-128 (``xxhash``; a non-cryptographic 128-bit
#: hash at memory speed, over 10x faster than SHA-256 on one core; its hex digest as ``xxh128sum`` prints
#: it), ``sha256`` is SHA-256
FILE_HASHES = {"xxh128": xxhash.xxh3_128, "sha256": hashlib.sha256}
_MAPPED_CHUNK = 64 << 20  # bytes per hash update of a mapped file (each update releases the GIL)
_READ_CHUNK = 1 << 20  # the read buffer when a file cannot be mapped (1 MiB stays in the CPU cache: faster than 16 MiB)


def file_digest(path: str | os.PathLike, algorithm: str = "xxh128") -> str:
    """Hex digest of a file's bytes with ``algorithm`` (a key of :data:`FILE_HASHES`).

    The file is mapped into memory and hashed where it lies in the page cache, with no copy through a
    read buffer (half the CPU time of reading it into one, ``benchmarks/checkpoint_integrity.py``); the
    hash releases the GIL, so another thread (``torch.load``) runs meanwhile. A file that cannot be
    mapped (empty, or on a file system without ``mmap``) is read through one reusable 1 MiB buffer.
    As with every mapped file, truncating it in place *while* it is hashed ends the process (SIGBUS);
    the files checked here are only ever replaced by a rename, which leaves the mapped bytes intact.
    """
    digest = FILE_HASHES[algorithm]()
    with open(path, "rb", buffering=0) as handle:
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # empty file, or not mappable
            mapped = None
        if mapped is None:
            view = memoryview(bytearray(_READ_CHUNK))
            while read := handle.readinto(view):
                digest.update(view[:read])
        else:
            with mapped, memoryview(mapped) as view:
                for start in range(0, len(view), _MAPPED_CHUNK):
                    digest.update(view[start : start + _MAPPED_CHUNK])
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, *, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256 (the checkpoint's identity in metrics.json)."""
    return file_digest(path, "sha256")[:length]


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
