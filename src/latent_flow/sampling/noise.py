"""Reproducible initial noise, seeded per sample index.

Sample ``i`` of a run with seed ``s`` always starts from the same noise, whatever
the batch size, the batch it falls in or the rank that draws it; exports and
evaluations can therefore be resumed and sharded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["noise_for_indices"]


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
    for index in (indices.tolist() if isinstance(indices, Tensor) else indices):
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(index))
        rows.append(torch.randn(tuple(shape), generator=gen, dtype=torch.float32))
    if not rows:
        return torch.empty((0, *shape), device=device, dtype=dtype)
    return torch.stack(rows).to(device=device, dtype=dtype)
