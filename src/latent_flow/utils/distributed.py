"""Ranks, devices and waiting for other ranks' files, from the launcher's environment (torchrun / srun)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "distributed_rank",
    "gather_rows",
    "rank_device",
    "rank_indices",
    "resolve_device",
    "resolve_precision",
    "wait_until",
]

#: seconds a rank waits for the others' files *without any progress* before failing
DEFAULT_WAIT_TIMEOUT = float(os.environ.get("LATENT_FLOW_CACHE_WAIT_TIMEOUT", 1800))


def distributed_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(global_rank, world_size)`` of this process from the launcher's environment.

    ``RANK`` / ``WORLD_SIZE`` (torchrun), ``SLURM_PROCID`` / ``SLURM_NTASKS`` (srun), or
    ``LOCAL_RANK`` / ``WORLD_SIZE`` (Lightning's subprocess launcher, which sets no ``RANK``;
    single node). Without a world size this is a single process: ``(0, 1)``. Note that the
    first process of ``python -m latent_flow.train trainer=ddp`` has no ``WORLD_SIZE`` before
    ``trainer.fit`` (Lightning launches the other ranks then), so it builds the whole cache.
    """
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE"):  # torchrun / Lightning: authoritative, even inside a SLURM allocation
        if int(env["WORLD_SIZE"]) <= 1:
            return 0, 1
        world = int(env["WORLD_SIZE"])
        if env.get("RANK") is not None:
            rank = int(env["RANK"])
        elif env.get("NODE_RANK", "0") == "0" and env.get("LOCAL_RANK") is not None:
            rank = int(env["LOCAL_RANK"])
        else:  # a rank we cannot place: behave like a single process (safe, just redundant)
            return 0, 1
        return rank, world
    if env.get("SLURM_NTASKS") and env.get("SLURM_PROCID") is not None and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return 0, 1


def rank_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """The sample indices rank ``rank`` of ``world_size`` generates: ``i % world_size == rank`` (disjoint,
    together complete; with per-index seeds the images are those of a one-process run)."""
    return list(range(rank, num_samples, world_size))


def gather_rows(rows: torch.Tensor, indices: list[int] | torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (one per sample index, any count per rank) in sample-index order, on every rank;
    ``rows`` as they are outside ``torch.distributed`` (or in a world of one). A collective: every rank calls it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    world = torch.distributed.get_world_size()
    if world == 1:
        return rows
    idx = torch.as_tensor(indices, dtype=torch.long, device=rows.device).reshape(-1)
    # rows per rank first (the ranks' shares may differ by one), then the rows padded to the largest share
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
    torch.distributed.all_gather(counts, torch.tensor([len(idx)], dtype=torch.long, device=rows.device))
    most = int(max(int(c) for c in counts))
    pad_rows = rows.new_zeros((most - len(idx), *rows.shape[1:]))
    pad_idx = idx.new_full((most - len(idx),), -1)
    all_rows = [rows.new_empty((most, *rows.shape[1:])) for _ in range(world)]
    all_idx = [idx.new_empty(most) for _ in range(world)]
    torch.distributed.all_gather(all_rows, torch.cat([rows, pad_rows]).contiguous())
    torch.distributed.all_gather(all_idx, torch.cat([idx, pad_idx]))
    flat_rows, flat_idx = torch.cat(all_rows), torch.cat(all_idx)
    keep = flat_idx >= 0
    flat_rows, flat_idx = flat_rows[keep], flat_idx[keep]
    return flat_rows[torch.argsort(flat_idx)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def rank_device(device: Any, rank: int) -> Any:
    """``device="auto"`` on a GPU machine: this rank's GPU (``LOCAL_RANK``, else the global rank, modulo the count)."""
    if str(device) == "auto" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    return device


def wait_until(
    done: Callable[[], bool],
    describe: Callable[[], str],
    *,
    timeout: float = DEFAULT_WAIT_TIMEOUT,
    poll: float = 2.0,
    progress: Callable[[], Any] = lambda: None,
) -> None:
    """Poll ``done()`` until true; raise ``TimeoutError(describe())`` after ``timeout`` seconds in which
    ``progress()`` did not change (so a slow but moving job is waited for)."""
    last, since = progress(), time.monotonic()
    while not done():
        time.sleep(poll)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > timeout:
            raise TimeoutError(describe())


def resolve_precision(precision: Any) -> Any:
    """``"auto"`` -> ``"bf16-mixed"`` on a CUDA GPU with bf16 support, else ``"32-true"``."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
