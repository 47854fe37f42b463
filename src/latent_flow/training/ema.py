"""Exponential moving average of a module's weights.

The EMA copy is a submodule of the LightningModule, so it is saved in every
checkpoint and restored on resume together with its update counter.

Power-function EMA (EDM2, Karras et al. 2024): after ``t`` updates the average with
exponent ``gamma`` weights the past like ``tau^gamma`` on ``[0, t]``; its length is
``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))``, the relative standard
deviation of that profile. The warm-up ramp ``(1 + n) / (10 + n)`` is close to
``gamma = 8`` (``sigma_rel`` ~0.09).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["EMA", "gamma_to_sigma_rel", "power_decay", "sigma_rel_to_gamma"]


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power profile ``tau^gamma`` on ``[0, 1]``."""
    g = float(gamma)
    return float(np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent with the given ``sigma_rel`` (the real root > -1 of EDM2's cubic)."""
    s2 = float(sigma_rel) ** 2
    if not 0 < sigma_rel < gamma_to_sigma_rel(0.0):  # gamma = 0 (uniform average) is the widest with gamma >= 0
        raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(0.0):.4f}), got {sigma_rel}")
    # s2 (g+2)^2 (g+3) = g+1  <=>  s2 g^3 + 7 s2 g^2 + (16 s2 - 1) g + 12 s2 - 1 = 0
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > -1]
    return float(max(real))


def power_decay(t: int, gamma: float) -> float:
    """Decay of update ``t`` (1, 2, ...) of the power-function EMA: ``(1 - 1/t)^(gamma + 1)``."""
    return (1.0 - 1.0 / int(t)) ** (float(gamma) + 1.0)


class EMA(nn.Module):
    """EMA weights ``w_ema <- d * w_ema + (1 - d) * w``.

    With ``warmup=True`` the decay ramps as ``min(decay, (1 + n) / (10 + n))``
    (n = number of updates), so that short runs are not dominated by the
    initial weights; with ``warmup=False`` the fixed ``decay`` is used (DiT: 0.9999).
    With ``sigma_rel`` the average is instead the power-function EMA of that length
    (update ``n + 1`` uses ``d = (1 - 1 / (n + 1)) ** (gamma + 1)``; ``decay`` and
    ``warmup`` are then unused): the same share of the run at any run length.
    Buffers (e.g. fixed position embeddings) are copied, not averaged.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, sigma_rel: float | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.gamma = None if sigma_rel is None else sigma_rel_to_gamma(float(sigma_rel))
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        if self.gamma is not None:
            return power_decay(n + 1, self.gamma)
        if self.warmup:
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA.update: the model's parameters do not match the EMA copy")
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        # the averaged copy is only ever used for inference
        super().train(False)
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
