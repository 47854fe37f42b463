"""Noise schedulers of affine probability paths.

Time convention (used everywhere in ``latent_flow``): ``t`` in [0, 1],
**t = 0 is noise, t = 1 is data**. An affine path is

    x_t = alpha_t * x_data + sigma_t * x_noise,
    u_t = d/dt x_t = d_alpha_t * x_data + d_sigma_t * x_noise,

and a scheduler maps ``t`` (shape ``(B,)``, or any shape) to the four
coefficients ``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)`` with the same shape
and dtype as ``t``. Reshaping for broadcasting against ``x`` of shape
``(B, ...)`` is the path's job (:class:`latent_flow.flow.path.AffinePath`).

Schedulers:

- :class:`CondOTScheduler` (conditional optimal transport / rectified flow):
  ``alpha_t = t``, ``sigma_t = 1 - (1 - sigma_min) t``.
- :class:`VPScheduler`: the variance-preserving ("diffusion conditional
  vector field") path of Lipman et al. (2023), written in our time direction.
  With ``s = 1 - t``, ``T(s) = beta_min s + (beta_max - beta_min) s^2 / 2`` and
  ``a(s) = exp(-T(s) / 2)``: ``alpha_t = a(1 - t)``,
  ``sigma_t = sqrt(1 - a(1 - t)^2)``. Derivatives are analytic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from latent_flow.utils.config import check_options

__all__ = [
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "VPScheduler",
    "SCHEDULERS",
    "build_scheduler",
]


@dataclass(frozen=True)
class SchedulerOutput:
    """Coefficients of an affine path at times ``t`` (t = 0 noise, t = 1 data).

    All four tensors have the shape and dtype of the ``t`` they were computed
    from: ``x_t = alpha_t x_data + sigma_t x_noise`` and
    ``u_t = d_alpha_t x_data + d_sigma_t x_noise``.
    """

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Scheduler(ABC):
    """Maps times ``t`` (t = 0 noise, t = 1 data) to path coefficients."""

    @abstractmethod
    def __call__(self, t: Tensor) -> SchedulerOutput:
        """Return ``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)``, each shaped like ``t``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _check_time(t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating point tensor, got dtype {t.dtype}")
    return t


class CondOTScheduler(Scheduler):
    """Conditional optimal-transport path (rectified flow), t = 0 noise, t = 1 data.

    ``alpha_t = t``, ``sigma_t = 1 - (1 - sigma_min) t``, so
    ``d_alpha_t = 1``, ``d_sigma_t = -(1 - sigma_min)`` and the target is
    ``u_t = x_data - (1 - sigma_min) x_noise``. With ``sigma_min = 0``,
    ``x_0`` is pure noise and ``x_1`` pure data.

    Args:
        sigma_min: noise level left at t = 1, in [0, 1).
    """

    def __init__(self, sigma_min: float = 0.0) -> None:
        sigma_min = float(sigma_min)
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min

    def __call__(self, t: Tensor) -> SchedulerOutput:
        t = _check_time(t)
        slope = 1.0 - self.sigma_min
        return SchedulerOutput(
            alpha_t=t,
            sigma_t=1.0 - slope * t,
            d_alpha_t=torch.ones_like(t),
            d_sigma_t=torch.full_like(t, -slope),
        )


class VPScheduler(Scheduler):
    """Variance-preserving path of Lipman et al. (2023), t = 0 noise, t = 1 data.

    With ``s = 1 - t`` (the diffusion time, s = 0 data, s = 1 noise),
    ``T(s) = beta_min s + (beta_max - beta_min) s^2 / 2`` and
    ``a(s) = exp(-T(s) / 2)``:

    - ``alpha_t = a(s)``;  ``d_alpha_t = a(s) T'(s) / 2`` with
      ``T'(s) = beta_min + (beta_max - beta_min) s``;
    - ``sigma_t = sqrt(1 - a(s)^2) = sqrt(-expm1(-T(s)))`` (computed with
      ``expm1`` for accuracy near t = 1);
    - ``d_sigma_t = -alpha_t d_alpha_t / sigma_t``.

    At t = 1 (data) ``sigma_t = 0`` and the exact ``d_sigma_t`` is -infinity
    (``sigma_t ~ sqrt(beta_min (1 - t))``). To keep targets finite, the
    denominator of ``d_sigma_t`` is clamped to at least ``min_sigma``, so at
    t = 1 exactly ``d_sigma_t = -beta_min / (2 min_sigma)`` (finite, large);
    for every t with ``sigma_t >= min_sigma`` the value is exact. In float32
    only t = 1 itself is affected for the default ``min_sigma``. At t = 0 the
    path is not exactly pure noise: ``alpha_0 = exp(-(beta_min + beta_max) / 4)``
    (about 6.6e-3 with the defaults).

    Args:
        beta_min: VP-SDE beta at the data end (>= 0).
        beta_max: VP-SDE beta at the noise end (>= beta_min, > 0).
        min_sigma: floor of ``sigma_t`` in the division giving ``d_sigma_t``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, min_sigma: float = 1e-6) -> None:
        beta_min, beta_max, min_sigma = float(beta_min), float(beta_max), float(min_sigma)
        if beta_min < 0.0:
            raise ValueError(f"beta_min must be >= 0, got {beta_min}")
        if beta_max < beta_min or beta_max <= 0.0:
            raise ValueError(f"beta_max must be > 0 and >= beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        if min_sigma <= 0.0:
            raise ValueError(f"min_sigma must be > 0, got {min_sigma}")
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.min_sigma = min_sigma

    def _T(self, s: Tensor) -> Tensor:
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s

    def _dT(self, s: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * s

    def __call__(self, t: Tensor) -> SchedulerOutput:
        t = _check_time(t)
        s = 1.0 - t
        T = self._T(s)
        alpha = torch.exp(-0.5 * T)
        # d alpha / dt = -d a / ds = a(s) T'(s) / 2
        d_alpha = 0.5 * alpha * self._dT(s)
        # 1 - a^2 = 1 - exp(-T) = -expm1(-T); clamp guards t slightly outside [0, 1] and rounding.
        sigma = torch.sqrt(torch.clamp(-torch.expm1(-T), min=0.0))
        d_sigma = -alpha * d_alpha / torch.clamp(sigma, min=self.min_sigma)
        return SchedulerOutput(alpha_t=alpha, sigma_t=sigma, d_alpha_t=d_alpha, d_sigma_t=d_sigma)


SCHEDULERS: dict[str, type[Scheduler]] = {
    "condot": CondOTScheduler,
    "vp": VPScheduler,
}


def build_scheduler(name: str, **options: Any) -> Scheduler:
    """Build a scheduler by name: ``"condot"`` or ``"vp"``.

    Raises:
        ValueError: unknown name, or an option the scheduler does not take
            (the message names it and lists the valid ones).
    """
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[key]
    check_options(cls, options, f"scheduler {key!r}")
    return cls(**options)
