"""Affine probability paths and converters between parametrisations.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**. For a
scheduler giving ``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)``:

    x_t    = alpha_t * x_data + sigma_t * x_noise
    target = u_t = d_alpha_t * x_data + d_sigma_t * x_noise      (= d/dt x_t)

``t`` has shape ``(B,)`` (a 0-d tensor or a Python float is expanded to the
batch); the coefficients are reshaped to ``(B, 1, ..., 1)`` so they broadcast
against ``x`` of any rank ``(B, ...)``. Coefficients are computed in float64
when ``x`` is float64 and in float32 otherwise, then cast to ``x.dtype``.

Converters solve the 2x2 linear system
``[x_t; v] = [[alpha, sigma], [d_alpha, d_sigma]] [x_data; x_noise]`` with
determinant ``det = alpha d_sigma - sigma d_alpha`` (nonzero on (0, 1) for the
CondOT and VP paths: -(1 - sigma_min) and -d_alpha/sigma). Divisions are not
guarded: ``data_to_velocity`` divides by ``sigma_t`` (0 at t = 1 for CondOT
with sigma_min = 0 and for VP), ``noise_to_velocity`` divides by ``alpha_t``
(0 at t = 0 for CondOT); evaluate them away from those endpoints.

Score (Gaussian noise): ``score = grad log p_t(x_t) = -E[x_noise | x_t] / sigma_t``
= ``(alpha v - d_alpha x_t) / (sigma (d_alpha sigma - alpha d_sigma))``
(:meth:`AffinePath.velocity_to_score`), the one place the SDE sampler takes it from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latent_flow.flow.schedulers import Scheduler, SchedulerOutput

__all__ = ["PathSample", "AffinePath", "path_differences", "time_convention"]


@dataclass
class PathSample:
    """One training example of the path (t = 0 noise, t = 1 data).

    ``x_t = alpha_t x_data + sigma_t x_noise``; ``target = d/dt x_t``; ``t`` is ``(B,)``.
    """

    x_t: Tensor
    target: Tensor
    t: Tensor
    x_noise: Tensor
    x_data: Tensor


class AffinePath:
    """Affine path ``x_t = alpha_t x_data + sigma_t x_noise`` (t = 0 noise, t = 1 data).

    Args:
        scheduler: gives ``alpha_t, sigma_t`` and their time derivatives.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a Scheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _batch_time(t: Tensor | float, x: Tensor) -> Tensor:
        """Return ``t`` as a ``(B,)`` tensor on ``x.device`` (B = ``x.shape[0]``)."""
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension (shape (B, ...))")
        batch = x.shape[0]
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(compute_dtype)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise ValueError(f"t must have shape ({batch},) to match x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
        return t.to(device=x.device, dtype=torch.promote_types(t.dtype, compute_dtype))

    def coefficients(self, t: Tensor | float, x: Tensor) -> SchedulerOutput:
        """Scheduler output at ``t`` reshaped to ``(B, 1, ..., 1)`` and cast to ``x.dtype``."""
        t = self._batch_time(t, x)
        out = self.scheduler(t)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)

        def view(c: Tensor) -> Tensor:
            return c.reshape(shape).to(x.dtype)

        return SchedulerOutput(
            alpha_t=view(out.alpha_t),
            sigma_t=view(out.sigma_t),
            d_alpha_t=view(out.d_alpha_t),
            d_sigma_t=view(out.d_sigma_t),
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, x_noise: Tensor, x_data: Tensor, t: Tensor) -> PathSample:
        """Point on the path and its velocity target.

        Args:
            x_noise: noise sample ``(B, ...)`` (the t = 0 end).
            x_data: data sample, same shape (the t = 1 end).
            t: times ``(B,)`` in [0, 1].
        """
        if x_noise.shape != x_data.shape:
            raise ValueError(
                f"x_noise {tuple(x_noise.shape)} and x_data {tuple(x_data.shape)} must have the same shape"
            )
        c = self.coefficients(t, x_data)
        x_t = c.alpha_t * x_data + c.sigma_t * x_noise
        target = c.d_alpha_t * x_data + c.d_sigma_t * x_noise
        return PathSample(x_t=x_t, target=target, t=self._batch_time(t, x_data), x_noise=x_noise, x_data=x_data)

    # ------------------------------------------------------------------ converters
    def velocity_to_data(self, x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """``x_data = (d_sigma x_t - sigma v) / (alpha d_sigma - sigma d_alpha)``."""
        c = self.coefficients(t, x_t)
        det = c.alpha_t * c.d_sigma_t - c.sigma_t * c.d_alpha_t
        return (c.d_sigma_t * x_t - c.sigma_t * velocity) / det

    def velocity_to_noise(self, x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """``x_noise = (alpha v - d_alpha x_t) / (alpha d_sigma - sigma d_alpha)``."""
        c = self.coefficients(t, x_t)
        det = c.alpha_t * c.d_sigma_t - c.sigma_t * c.d_alpha_t
        return (c.alpha_t * velocity - c.d_alpha_t * x_t) / det

    def data_to_velocity(self, x_t: Tensor, x_data: Tensor, t: Tensor) -> Tensor:
        """``v = d_alpha x_data + d_sigma (x_t - alpha x_data) / sigma`` (singular where sigma_t = 0)."""
        c = self.coefficients(t, x_t)
        x_noise = (x_t - c.alpha_t * x_data) / c.sigma_t
        return c.d_alpha_t * x_data + c.d_sigma_t * x_noise

    def noise_to_velocity(self, x_t: Tensor, x_noise: Tensor, t: Tensor) -> Tensor:
        """``v = d_alpha (x_t - sigma x_noise) / alpha + d_sigma x_noise`` (singular where alpha_t = 0)."""
        c = self.coefficients(t, x_t)
        x_data = (x_t - c.sigma_t * x_noise) / c.alpha_t
        return c.d_alpha_t * x_data + c.d_sigma_t * x_noise

    # ------------------------------------------------------------------ score
    def velocity_to_score(self, x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """The score ``grad_x log p_t(x_t)`` of the marginal from the marginal velocity.

        For Gaussian noise ``x_noise ~ N(0, I)``, Tweedie gives ``score = -E[x_noise | x_t] / sigma_t``,
        and ``E[x_noise | x_t]`` is :meth:`velocity_to_noise` (the 2x2 system above), so

            score(x, t) = (alpha_t v - d_alpha_t x) / (sigma_t (d_alpha_t sigma_t - alpha_t d_sigma_t)).

        Derivation, t = 0 noise, t = 1 data: ``x = alpha E[x_data|x] + sigma E[x_noise|x]`` and
        ``v = d_alpha E[x_data|x] + d_sigma E[x_noise|x]``; eliminating ``E[x_data|x]`` gives
        ``alpha v - d_alpha x = (alpha d_sigma - sigma d_alpha) E[x_noise|x]``. CondOT
        (``sigma_min = 0``): ``score = (t v - x) / (1 - t)``, ``-x`` at t = 0; VP:
        ``score = (alpha v - d_alpha x) / d_alpha``. Singular where ``sigma_t = 0`` (t = 1 for
        CondOT with ``sigma_min = 0`` and for VP): evaluate it at t < 1 (the SDE sampler does).
        """
        c = self.coefficients(t, x_t)
        return (c.alpha_t * velocity - c.d_alpha_t * x_t) / (
            c.sigma_t * (c.d_alpha_t * c.sigma_t - c.alpha_t * c.d_sigma_t)
        )


# ---------------------------------------------------------------------- comparing paths
def time_convention(path: AffinePath) -> str:
    """Which end of ``path`` is noise, read from its coefficients at t = 0 and t = 1:
    ``"t = 0 noise, t = 1 data"`` (this package's convention), ``"t = 0 data, t = 1 noise"`` or
    ``"unknown"``."""
    ends = path.scheduler(torch.tensor([0.0, 1.0], dtype=torch.float64))
    alpha, sigma = ends.alpha_t.tolist(), ends.sigma_t.tolist()
    if sigma[0] > alpha[0] and alpha[1] > sigma[1]:
        return "t = 0 noise, t = 1 data"
    if alpha[0] > sigma[0] and sigma[1] > alpha[1]:
        return "t = 0 data, t = 1 noise"
    return "unknown"


def path_differences(mine: AffinePath, theirs: AffinePath, *, tol: float = 1e-6) -> list[tuple[str, str, str]]:
    """``(what, mine, theirs)`` for each way two paths differ (empty: the same path).

    Compared: the time convention (:func:`time_convention`) and the scheduler's ``alpha_t`` and
    ``sigma_t`` on 65 times of [0, 1] in float64 (so two spellings of one scheduler are the same
    path, and a velocity trained on one cannot be mixed with one of the other: autoguidance's
    ``v_guide + s (v - v_guide)`` needs both on one path). How times are drawn in training is not part of
    the path.
    """
    out = []
    convention = time_convention(mine), time_convention(theirs)
    if convention[0] != convention[1]:
        out.append(("time convention", *convention))
    t = torch.linspace(0.0, 1.0, 65, dtype=torch.float64)
    a, b = mine.scheduler(t), theirs.scheduler(t)
    gap = max(float((a.alpha_t - b.alpha_t).abs().max()), float((a.sigma_t - b.sigma_t).abs().max()))
    if not gap <= tol:  # also NaN
        out.append(
            (f"scheduler (alpha_t, sigma_t differ by up to {gap:.3g})", repr(mine.scheduler), repr(theirs.scheduler))
        )
    return out
