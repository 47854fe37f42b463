"""Reproducible initial noise, seeded per sample index.

Sample ``i`` of a run with seed ``s`` always starts from the same noise, whatever
the batch size, the batch it falls in or the rank that draws it; exports and
evaluations can therefore be resumed and sharded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["noise_for_indices", "IndexedNoiseStream"]

#: seed of sample ``index``'s initial noise under run seed ``seed``: ``seed * SEED_STRIDE + index``
SEED_STRIDE = 1_000_003
_STREAM_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: streams >= 1 land far from the initial-noise seeds


def noise_for_indices(
    indices: Sequence[int] | Tensor,
    shape: Sequence[int],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard-normal noise of shape ``(len(indices), *shape)``, row ``k`` drawn from seed ``(seed, indices[k])``."""
    rows = []
    for index in indices.tolist() if isinstance(indices, Tensor) else indices:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * SEED_STRIDE + int(index))
        rows.append(torch.randn(tuple(shape), generator=gen, dtype=torch.float32))
    if not rows:
        return torch.empty((0, *shape), device=device, dtype=dtype)
    return torch.stack(rows).to(device=device, dtype=dtype)


class IndexedNoiseStream:
    """A stream of standard-normal draws per sample index (e.g. an SDE sampler's per-step noise).

    Row ``k`` of every :meth:`draw` comes from its own CPU generator seeded by
    ``(seed, indices[k], stream)``, so sample ``i`` sees the same sequence of draws whatever the
    batch it is in, its position in it or the rank that samples it. ``stream`` (>= 1) separates
    independent uses of the same indices; stream 0 would be the initial noise of
    :func:`noise_for_indices`, so it is refused.

    Args:
        indices: the batch's sample indices, in row order.
        shape: the shape of one row's draw (e.g. the latent shape).
        seed: the run's seed (the one of :func:`noise_for_indices`).
        stream: which stream (>= 1).
    """

    #: draws generated per ``randn`` call of each row's generator
    CHUNK = 16

    def __init__(
        self, indices: Sequence[int] | Tensor, shape: Sequence[int], *, seed: int = 0, stream: int = 1
    ) -> None:
        if int(stream) < 1:
            raise ValueError(f"stream must be >= 1 (stream 0 is the initial noise), got {stream}")
        self.indices = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        self.shape = tuple(int(d) for d in shape)
        self.seed = int(seed)
        self.stream = int(stream)
        self.draws = 0
        self._buffer: Tensor | None = None
        mask = (1 << 63) - 1
        self._generators = [
            torch.Generator(device="cpu").manual_seed(
                ((self.seed * SEED_STRIDE + index) ^ (self.stream * _STREAM_MIX)) & mask
            )
            for index in self.indices
        ]

    def draw(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """The next ``(len(indices), *shape)`` standard-normal draw (float32 on the CPU, then cast / moved).

        Each generator fills ``CHUNK`` draws at a time (one ``randn`` call per row per ``CHUNK``
        draws); the sequence of row ``k`` depends only on its seed.
        """
        if not self._generators:
            self.draws += 1
            return torch.empty((0, *self.shape), device=device, dtype=dtype)
        slot = self.draws % self.CHUNK
        if slot == 0:
            self._buffer = torch.stack(
                [torch.randn((self.CHUNK, *self.shape), generator=g, dtype=torch.float32) for g in self._generators]
            )
        self.draws += 1
        return self._buffer[:, slot].to(device=device, dtype=dtype)
