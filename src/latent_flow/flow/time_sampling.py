"""Training-time distributions over ``t`` in [0, 1] (t = 0 noise, t = 1 data).

- :class:`UniformTimeSampler`: ``t ~ U(0, 1)``.
- :class:`LogitNormalTimeSampler`: ``t = sigmoid(mean + std * z)``, ``z ~ N(0, 1)``
  (Esser et al. 2024); the median is ``sigmoid(mean)``, so ``mean = 0`` puts
  most weight around t = 0.5 and ``mean < 0`` shifts weight towards noise.

Samplers return float32 tensors of shape ``(B,)`` on the requested device. A
``torch.Generator`` may be passed for reproducibility; when it lives on another
device than the one requested, the draw is made on the generator's device and
moved, so the same generator state gives the same times on every device.

:func:`shift_time` is the SD3 timestep shift in this convention, the one definition behind the samplers'
``time_grid=shifted`` (:mod:`latent_flow.sampling.time_grids`) and the flow-map trainer's shifted grid jumps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from latent_flow.utils.config import check_options

__all__ = [
    "TimeSampler",
    "UniformTimeSampler",
    "LogitNormalTimeSampler",
    "TIME_SAMPLERS",
    "build_time_sampler",
    "shift_time",
]


def _draw_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


class TimeSampler(ABC):
    """Draws training times ``t`` in [0, 1] (t = 0 noise, t = 1 data)."""

    def __call__(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Return a float32 tensor of shape ``(batch_size,)`` on ``device``."""
        if int(batch_size) != batch_size or batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative integer, got {batch_size!r}")
        target = torch.device(device) if device is not None else torch.device("cpu")
        t = self._draw(int(batch_size), _draw_device(device, generator), generator)
        return t.to(device=target, dtype=torch.float32)

    @abstractmethod
    def _draw(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """Draw ``(batch_size,)`` float32 times on ``device``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class UniformTimeSampler(TimeSampler):
    """``t ~ U(0, 1)`` (t = 0 noise, t = 1 data)."""

    def _draw(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        return torch.rand(batch_size, device=device, dtype=torch.float32, generator=generator)


class LogitNormalTimeSampler(TimeSampler):
    """``t = sigmoid(mean + std * z)``, ``z ~ N(0, 1)``; median ``sigmoid(mean)``.

    t = 0 is noise and t = 1 data, so a negative ``mean`` samples more times
    near the noise end. Values lie in the open interval (0, 1) (up to float32
    rounding at extreme ``z``).

    Args:
        mean: location of the underlying normal.
        std: scale of the underlying normal (> 0).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        mean, std = float(mean), float(std)
        if not std > 0.0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean = mean
        self.std = std

    def _draw(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        z = torch.randn(batch_size, device=device, dtype=torch.float32, generator=generator)
        return torch.sigmoid(self.mean + self.std * z)


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformTimeSampler,
    "logit_normal": LogitNormalTimeSampler,
}


def build_time_sampler(name: str, **options: Any) -> TimeSampler:
    """Build a time sampler by name: ``"uniform"`` or ``"logit_normal"``.

    Raises:
        ValueError: unknown name, or an option the sampler does not take (the
            message names it and lists the valid ones).
    """
    key = str(name).lower()
    if key not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r}; valid names: {sorted(TIME_SAMPLERS)}")
    cls = TIME_SAMPLERS[key]
    check_options(cls, options, f"time sampler {key!r}")
    return cls(**options)


def shift_time(u: Tensor, shift: float) -> Tensor:
    """``u / (u + shift (1 - u))``: SD3 shift in our convention (t = 0 noise, t = 1 data).

    ``shift > 1`` concentrates times near the noise end (t = 0).
    """
    shift = float(shift)
    if not shift > 0.0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return u / (u + shift * (1.0 - u))
