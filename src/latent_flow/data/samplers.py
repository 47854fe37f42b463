"""A training sampler whose order and position are state: resuming mid-epoch continues the same order.

Epoch ``e`` visits ``range(num_items)`` in the permutation drawn from ``(seed, e)`` (its own
generator: the global RNG is not touched); under DDP rank ``r`` of ``R`` takes every ``R``-th item
from position ``r`` of the first ``R * (num_items // R)`` (like ``DistributedSampler`` with
``drop_last=True``), so the ranks see disjoint items and the same number of them.

The state (:meth:`ResumableSampler.state_dict`) is ``(epoch, consumed)``: ``consumed`` items of the
epoch's permutation (all ranks together) were trained on. ``LatentDataModule.state_dict`` fills
it in from the trainer's count of finished batches when a checkpoint is written (not from what
the sampler has yielded: the data loader prefetches) and ``load_state_dict`` gives it back, so the
first epoch after a resume starts at that position (``len()`` stays the full epoch's: Lightning
counts the batches it has already done). With another world size the remaining items of the epoch
are split over the new ranks.

The sampler yields ``(position, draw_key)`` pairs: ``draw_key`` (from ``(seed, epoch, position)``)
seeds the per-item random choices of :class:`~latent_flow.data.latent_cache.LatentDataset`
(flip, mask variant), which therefore do not depend on the global RNG, on the data loader's
prefetching, nor on worker processes.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableSampler", "draw_key"]

_MASK63 = (1 << 63) - 1


def draw_key(seed: int, epoch: int, position: int) -> int:
    """A 63-bit key of one access: item ``position`` in epoch ``epoch`` of a run seeded ``seed``."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + int(position) * 0x94D049BB133111EB) & (
        (1 << 64) - 1
    )
    # splitmix64 finaliser
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    return x & _MASK63


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha1(f"latent_flow sampler {int(seed)} {int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63


class _Length(Dataset):
    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):  # pragma: no cover - never read
        raise IndexError(i)


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch permutation, split over ranks, resumable mid-epoch (module docstring).

    A ``DistributedSampler`` subclass, so Lightning uses it as it is under DDP (it calls
    :meth:`set_epoch` every epoch) instead of wrapping it.

    Args:
        num_items: length of the dataset.
        seed: the run's seed (orders and per-item draws derive from it).
        num_replicas, rank: the DDP world size and this process's global rank.
        shuffle: permute each epoch (``False``: ``0, 1, 2, ...``).
    """

    def __init__(
        self, num_items: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0, shuffle: bool = True
    ) -> None:
        if num_items < 1:
            raise ValueError(f"ResumableSampler needs num_items >= 1, got {num_items}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        super().__init__(
            _Length(num_items), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.num_items = int(num_items)
        self.per_rank = self.num_items // self.num_replicas
        if self.per_rank < 1:
            raise ValueError(f"{num_items} items cannot be split over {num_replicas} ranks")
        self.num_samples = self.per_rank
        self.total_size = self.per_rank * self.num_replicas
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, consumed) to start from

    # ------------------------------------------------------------------ order
    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch ``epoch`` (all ranks), first ``total_size`` entries used."""
        if not self.shuffle:
            return torch.arange(self.num_items)
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=gen)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def start_position(self, epoch: int) -> int:
        """Items of epoch ``epoch`` (all ranks) skipped because they were trained on before the resume."""
        if self._resume is None or self._resume[0] != epoch:
            return 0
        return min(self._resume[1], self.total_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        start = self.start_position(epoch)
        self._resume = None  # only the first pass after a resume starts late
        order = self.order(epoch).tolist()
        for pos in range(start + self.rank, self.total_size, self.num_replicas):
            yield order[pos], draw_key(self.seed, epoch, pos)

    def __len__(self) -> int:
        return self.per_rank

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        """``{"epoch", "consumed", "seed", "num_items", "num_replicas"}`` (``consumed``: all ranks)."""
        return {
            "epoch": int(self.epoch),
            "consumed": int(consumed),
            "seed": int(self.seed),
            "num_items": self.num_items,
            "num_replicas": int(self.num_replicas),
            "shuffle": bool(self.shuffle),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start epoch ``state["epoch"]`` at position ``state["consumed"]`` (the next pass only).

        A state saved with another seed, dataset length or shuffle flag describes another order: it is
        ignored with a warning (the epoch starts from its beginning).
        """
        for key, mine in (("seed", self.seed), ("num_items", self.num_items), ("shuffle", self.shuffle)):
            if key in state and state[key] != mine:
                warnings.warn(
                    f"the checkpoint's data order was saved with {key}={state[key]!r}, this run has {key}={mine!r}: "
                    "the resumed epoch starts from its beginning (resume with the same seed and data to continue "
                    "exactly)",
                    stacklevel=2,
                )
                return
        self.epoch = int(state["epoch"])
        self._resume = (int(state["epoch"]), int(state["consumed"]))
