"""Exponential moving average of a module's weights.

The EMA copy is a submodule of the LightningModule, so it is saved in every
checkpoint and restored on resume together with its update counter.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """EMA weights ``w_ema <- d * w_ema + (1 - d) * w``.

    With ``warmup=True`` the decay ramps as ``min(decay, (1 + n) / (10 + n))``
    (n = number of updates), so that short runs are not dominated by the
    initial weights; with ``warmup=False`` the fixed ``decay`` is used (DiT: 0.9999).
    Buffers (e.g. fixed position embeddings) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
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
