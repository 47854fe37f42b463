"""Energy (classifier) guidance of a flow model's velocity, for any affine path and any solver.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**.

Derivation (the weighting ``w(t)``). On an affine path ``x_t = alpha_t x_data + sigma_t x_noise``
with Gaussian noise, Tweedie's formula gives ``E[x_data | x_t] = (x_t + sigma_t^2 s) / alpha_t``
and ``E[x_noise | x_t] = -sigma_t s`` with the score ``s = grad log p_t(x_t)``, so the marginal
velocity is

    v(x, t) = (d_alpha_t / alpha_t) x + b_t s,    b_t = sigma_t (sigma_t d_alpha_t - alpha_t d_sigma_t) / alpha_t.

Conditioning on ``c`` adds ``grad log p_t(c | x)`` = ``-grad E(x, t)`` to the score, so the
conditional velocity is ``v(x, t) - b_t grad E(x, t)``. With a strength ``lambda`` (the guidance
scale):

    v_guided(x, t) = v(x, t) - lambda * w(t) * grad_x E(x, t),    w(t) = b_t (clipped).

- CondOT (``alpha = t``, ``sigma = 1 - (1 - sigma_min) t``): ``w(t) = (1 - (1 - sigma_min) t) / t``,
  i.e. ``(1 - t) / t`` for ``sigma_min = 0``; it diverges at the noise end t -> 0 and is 0 at the data end.
- VP (``alpha^2 + sigma^2 = 1``): ``w(t) = d_alpha_t / alpha_t = beta(1 - t) / 2``, the ``1/2 beta``
  of the probability-flow ODE LACE integrates.

``w`` is clipped to ``max_weight`` (default 10: for CondOT that is t < 1/11) and set to 0 outside
``[t_min, t_max]`` (guidance restricted to a time interval). ``E`` is any energy
``E(x_t, t) -> (B,)``, e.g. :class:`~latent_flow.compositional.energy.ComposedEnergy`.

Solvers call ``velocity_fn(x, t)`` under ``torch.no_grad()``; :class:`EnergyGuidedVelocity`
computes ``grad_x E`` inside ``torch.enable_grad()`` on a detached copy of ``x``, so it works with
every fixed-step solver and dopri5 and never builds a graph through the flow model. The base
velocity may be classifier-free guided (label CFG): energy guidance adds to whatever it returns.
Counting: ``calls`` = velocity evaluations (= the solver's NFE), ``grad_evals`` = classifier
gradient evaluations (calls with ``w(t) > 0`` somewhere in the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from latent_flow.flow.path import AffinePath

__all__ = ["EnergyGuidedVelocity", "GuidanceSettings", "guidance_weight", "score_to_velocity_factor"]


def score_to_velocity_factor(path: AffinePath, t: Tensor, like: Tensor) -> Tensor:
    """``b_t = sigma_t (sigma_t d_alpha_t - alpha_t d_sigma_t) / alpha_t`` (B,) (inf where alpha_t = 0)."""
    c = path.coefficients(t, torch.zeros(like.shape[0], 1, dtype=torch.float64, device=like.device))
    b = c.sigma_t * (c.sigma_t * c.d_alpha_t - c.alpha_t * c.d_sigma_t) / c.alpha_t
    return b.reshape(-1)


@dataclass(frozen=True)
class GuidanceSettings:
    """Strength and time weighting of energy guidance.

    Args:
        scale: ``lambda`` (0 disables guidance).
        max_weight: clip of ``w(t)``.
        t_min, t_max: guidance only for ``t`` in ``[t_min, t_max]`` (t = 0 noise, t = 1 data).
    """

    scale: float = 1.0
    max_weight: float = 10.0
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")
        if not self.max_weight > 0:
            raise ValueError(f"guidance max_weight must be > 0, got {self.max_weight}")
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ValueError(f"guidance needs 0 <= t_min <= t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")


def guidance_weight(path: AffinePath, t: Tensor, like: Tensor, settings: GuidanceSettings) -> Tensor:
    """``w(t)`` (B,) in ``x``'s dtype: ``b_t`` clipped to ``[0, max_weight]``, 0 outside ``[t_min, t_max]``."""
    b = score_to_velocity_factor(path, t, like)
    b = torch.nan_to_num(b, nan=settings.max_weight, posinf=settings.max_weight).clamp(0.0, settings.max_weight)
    tt = t.reshape(-1).double()
    inside = (tt >= settings.t_min) & (tt <= settings.t_max)
    return torch.where(inside, b, torch.zeros_like(b)).to(like.dtype)


class EnergyGuidedVelocity:
    """``v_guided(x, t) = v(x, t) - scale * w(t) * grad_x E(x, t)`` (see the module docstring).

    Args:
        velocity_fn: the base ``velocity_fn(x, t)`` (e.g. the model, possibly with label CFG).
        energy_fn: ``E(x_t, t) -> (B,)``.
        path: the flow model's path (gives ``w(t)``).
        settings: strength and time weighting.
    """

    def __init__(
        self,
        velocity_fn: Callable[[Tensor, Tensor], Tensor],
        energy_fn: Callable[[Tensor, Tensor], Tensor],
        path: AffinePath,
        settings: GuidanceSettings | None = None,
    ) -> None:
        self.velocity_fn = velocity_fn
        self.energy_fn = energy_fn
        self.path = path
        self.settings = settings if settings is not None else GuidanceSettings()
        self.calls = 0
        self.grad_evals = 0
        self.grad_samples = 0

    def energy_grad(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(E (B,), grad_x E)`` at ``(x, t)``, computed with grad enabled on a detached copy of ``x``."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            energy = self.energy_fn(xg, t)
            if energy.shape != (x.shape[0],):
                raise ValueError(f"energy_fn must return shape ({x.shape[0]},), got {tuple(energy.shape)}")
            (grad,) = torch.autograd.grad(energy.sum(), xg)
        self.grad_evals += 1
        self.grad_samples += x.shape[0]
        return energy.detach(), grad

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        v = self.velocity_fn(x, t)
        if self.settings.scale == 0:
            return v
        w = guidance_weight(self.path, t, x, self.settings)
        if not bool((w > 0).any()):
            return v
        _, grad = self.energy_grad(x, t)
        coef = (self.settings.scale * w).reshape(-1, *([1] * (x.dim() - 1)))
        return v - coef * grad.to(v.dtype)

    def reset(self) -> None:
        self.calls = self.grad_evals = self.grad_samples = 0
