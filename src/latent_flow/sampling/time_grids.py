"""Time grids for fixed-step ODE solvers (t = 0 noise, t = 1 data).

- ``"uniform"``: ``t_i = i / steps``.
- ``"shifted"``: the SD3 timestep shift (Esser et al. 2024) written in our
  time direction. SD3 shifts its noise level ``sigma`` (1 = noise) as
  ``sigma' = s sigma / (1 + (s - 1) sigma)``; with ``t = 1 - sigma`` this is

      t' = shift_time(u, s) = u / (u + s (1 - u)),   u = i / steps.

  It maps 0 -> 0 and 1 -> 1, is strictly increasing for s > 0, and equals the
  uniform grid for s = 1. For **s > 1, t' <= u: grid points move towards
  t = 0, i.e. more (smaller) steps near the noise end** and larger steps near
  the data end; 0 < s < 1 does the opposite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latent_flow.flow.time_sampling import shift_time  # the shift's one definition (flow-map training uses it too)

__all__ = ["TIME_GRID_KINDS", "shift_time", "time_grid"]

TIME_GRID_KINDS: tuple[str, ...] = ("uniform", "shifted")


def time_grid(
    steps: int,
    kind: str = "uniform",
    shift: float = 1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Increasing grid of ``steps + 1`` times from exactly 0 (noise) to exactly 1 (data).

    Args:
        steps: number of intervals (>= 1).
        kind: ``"uniform"`` or ``"shifted"`` (see module docstring).
        shift: shift factor for ``"shifted"`` (> 0; 1 gives the uniform grid).
            Must be 1 for ``"uniform"`` (a different value would be ignored,
            so it is rejected).
        dtype, device: of the returned tensor (computed in float64).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if kind not in TIME_GRID_KINDS:
        raise ValueError(f"unknown time grid {kind!r}; valid kinds: {list(TIME_GRID_KINDS)}")
    shift = float(shift)
    if not shift > 0.0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "shifted":
        grid = shift_time(u, shift)
    else:
        if shift != 1.0:
            raise ValueError(f"shift={shift} has no effect with time_grid='uniform'; use time_grid='shifted'")
        grid = u
    grid[0], grid[-1] = 0.0, 1.0
    return grid.to(dtype=dtype, device=device)
