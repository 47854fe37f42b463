"""Classifier-free guidance as a velocity function (t = 0 noise, t = 1 data).

``classifier_free_guidance(model_fn, cond, null_cond, scale)`` returns a
:data:`~latent_flow.sampling.solvers.VelocityFn` computing, on **all**
channels,

    v = v_u + scale * (v_c - v_u),   v_c = model_fn(x, t, cond),  v_u = model_fn(x, t, null_cond).

- ``scale == 1``: plain conditional call, one model call on ``B`` samples.
- otherwise (``scale == 0`` included): one model call on the batch
  ``[cond; null]`` of ``2B`` samples (``x`` and ``t`` repeated, every
  condition tensor concatenated with its null counterpart along dim 0), split
  in two halves and combined.

Counting: one velocity evaluation is one model call, so a solver's NFE equals
the number of model calls (a batched CFG call counts as 1 NFE). The returned
:class:`GuidedVelocity` also records ``model_calls`` and ``forward_samples``
(rows pushed through the model: ``2B`` per call with guidance, ``B`` for
scale 1), for cost accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["ModelFn", "GuidedVelocity", "classifier_free_guidance"]

ModelFn = Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor]
"""``model_fn(x, t, cond_dict) -> velocity`` with ``t`` ``(B,)`` (t = 0 noise, t = 1 data)."""


def _match_batch(name: str, value: Tensor, batch: int) -> Tensor:
    if value.dim() == 0:
        raise ValueError(f"condition {name!r} must have a batch dimension, got a 0-d tensor")
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"condition {name!r} has batch size {value.shape[0]}, expected {batch} (or 1)")


class GuidedVelocity:
    """Velocity function with classifier-free guidance; see the module docstring.

    Attributes:
        scale: guidance scale (1 = no guidance).
        model_calls: number of ``model_fn`` calls so far (= NFE).
        forward_samples: total number of samples (rows) passed to ``model_fn``.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        cond: Mapping[str, Tensor],
        null_cond: Mapping[str, Tensor],
        scale: float,
    ) -> None:
        if not callable(model_fn):
            raise TypeError(f"model_fn must be callable, got {type(model_fn).__name__}")
        if set(cond) != set(null_cond):
            raise ValueError(
                f"cond and null_cond must have the same keys, got {sorted(cond)} and {sorted(null_cond)}"
            )
        for name in cond:
            if not isinstance(cond[name], Tensor) or not isinstance(null_cond[name], Tensor):
                raise TypeError(f"condition {name!r} must be a Tensor in both cond and null_cond")
        self.model_fn = model_fn
        self.cond = dict(cond)
        self.null_cond = dict(null_cond)
        self.scale = float(scale)
        self.model_calls = 0
        self.forward_samples = 0

    @property
    def batched(self) -> bool:
        """Whether calls run the doubled ``[cond; null]`` batch (``scale != 1``)."""
        return self.scale != 1.0

    @property
    def samples_per_row(self) -> int:
        """Model rows per input sample: 2 with guidance, 1 for scale 1."""
        return 2 if self.batched else 1

    def reset(self) -> None:
        """Set the counters back to 0."""
        self.model_calls = 0
        self.forward_samples = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[0]
        cond = {k: _match_batch(k, v, batch) for k, v in self.cond.items()}
        if not self.batched:
            self.model_calls += 1
            self.forward_samples += batch
            return self.model_fn(x, t, cond)
        null = {k: _match_batch(k, v, batch) for k, v in self.null_cond.items()}
        both = {k: torch.cat([cond[k], null[k].to(device=cond[k].device)], dim=0) for k in cond}
        x2 = torch.cat([x, x], dim=0)
        t2 = torch.cat([t, t], dim=0)
        self.model_calls += 1
        self.forward_samples += 2 * batch
        out = self.model_fn(x2, t2, both)
        if out.shape[0] != 2 * batch:
            raise ValueError(f"model_fn returned batch {out.shape[0]}, expected {2 * batch}")
        v_c, v_u = out[:batch], out[batch:]
        return v_u + self.scale * (v_c - v_u)

    def __repr__(self) -> str:
        return (
            f"GuidedVelocity(scale={self.scale}, keys={sorted(self.cond)}, "
            f"model_calls={self.model_calls}, forward_samples={self.forward_samples})"
        )


def classifier_free_guidance(
    model_fn: ModelFn,
    cond: Mapping[str, Tensor],
    null_cond: Mapping[str, Tensor],
    scale: float,
) -> GuidedVelocity:
    """Velocity function ``v_u + scale (v_c - v_u)`` on all channels, one model call per evaluation.

    Args:
        model_fn: ``model_fn(x, t, cond_dict) -> velocity``; ``t`` is ``(B,)``.
        cond: conditioning tensors, batch ``B`` (or 1, broadcast) along dim 0.
        null_cond: the "no condition" tensors with the same keys (e.g. the null class).
        scale: guidance scale; 1 gives the plain conditional model (no batching).
    """
    return GuidedVelocity(model_fn, cond, null_cond, scale)
