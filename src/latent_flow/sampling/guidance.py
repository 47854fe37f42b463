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

Guidance interval (``interval=(t_lo, t_hi)``, Kynkaenniemi et al. 2024, "Applying guidance in
a limited interval", in this project's time: t = 0 noise, t = 1 data): guidance only for
``t_lo <= t < t_hi`` (the right end closed when ``t_hi == 1``, like the last bin of
``numpy.histogram``: ``(0, 1)`` is all of [0, 1], ``(0, c)`` and ``(c, 1)`` split [0, 1] in
two, and ``(a, a)`` is empty, ``(1, 1)`` included); outside it the plain conditional velocity
``v_c``. Times are compared in ``t``'s dtype (a grid time 0.7 and an end 0.7 are equal).

- every row of the call inside: the batched ``[cond; null]`` call of ``2B`` rows, the same
  code path as without an interval (so ``(0, 1)`` equals plain CFG bit for bit);
- every row outside: the plain conditional call of ``B`` rows (as for ``scale == 1``);
- some rows inside (per-row times differ): one call on ``[cond (all B); null (the k inside)]``,
  ``B + k`` rows.

``interval=None`` guides everywhere. Invalid intervals (not two numbers, ``t_lo > t_hi``,
outside [0, 1]) raise ``ValueError``.

Counting: one velocity evaluation is one model call, so a solver's NFE equals
the number of model calls (a batched CFG call counts as 1 NFE). The returned
:class:`GuidedVelocity` also records ``model_calls``, ``forward_samples``
(rows pushed through the model: ``2B`` per call with guidance, ``B`` for
scale 1 or outside the guidance interval) and ``guided_calls`` (calls in which
some row was guided), for cost accounting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "GUIDE_ROW",
    "GuidedVelocity",
    "ModelFn",
    "autoguidance",
    "check_guidance_interval",
    "classifier_free_guidance",
    "guidance_rows",
]

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


def _check_same_keys(cond: Mapping[str, Tensor], null_cond: Mapping[str, Tensor]) -> None:
    if set(cond) != set(null_cond):
        raise ValueError(f"cond and null_cond must have the same keys, got {sorted(cond)} and {sorted(null_cond)}")


def guidance_rows(
    cond: Mapping[str, Tensor], null_cond: Mapping[str, Tensor], batch: int, scale: float
) -> dict[str, Tensor]:
    """The condition rows of one guided network call: ``cond`` (scale 1) or ``[cond; null]`` (2B rows).

    Every tensor is matched to ``batch`` (a batch of 1 is broadcast); ``cond`` and ``null_cond``
    must have the same keys when guiding. The one place that doubles a batch for guidance
    (:class:`GuidedVelocity` and FlowTurbo's blocks use it)."""
    if scale != 1.0:
        _check_same_keys(cond, null_cond)
    rows = {k: _match_batch(k, v, batch) for k, v in cond.items()}
    if scale == 1.0:
        return rows
    return {k: torch.cat([rows[k], _match_batch(k, null_cond[k], batch).to(rows[k].device)], dim=0) for k in rows}


def check_guidance_interval(interval) -> tuple[float, float] | None:
    """``None`` or a validated ``(t_lo, t_hi)`` with ``0 <= t_lo <= t_hi <= 1`` (t = 0 noise, t = 1 data).

    Raises:
        ValueError: not two numbers, NaN, ``t_lo > t_hi`` or an end outside [0, 1]; the message
            names the value and the convention.
    """
    if interval is None:
        return None
    hint = "cfg_interval=[t_lo, t_hi] with 0 <= t_lo <= t_hi <= 1 (t = 0 noise, t = 1 data), or null"
    try:
        values = [float(v) for v in interval]
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid guidance interval {interval!r}: expected {hint}") from err
    if len(values) != 2:
        raise ValueError(f"invalid guidance interval {interval!r}: expected two numbers, {hint}")
    lo, hi = values
    if math.isnan(lo) or math.isnan(hi) or not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise ValueError(f"invalid guidance interval {interval!r}: both ends must lie in [0, 1]; {hint}")
    if lo > hi:
        raise ValueError(f"invalid guidance interval {interval!r}: t_lo={lo} > t_hi={hi}; {hint}")
    return lo, hi


class GuidedVelocity:
    """Velocity function with classifier-free guidance; see the module docstring.

    Attributes:
        scale: guidance scale (1 = no guidance).
        interval: ``(t_lo, t_hi)`` where guidance applies (``t_lo <= t < t_hi``, ``t <= 1`` when
            ``t_hi == 1``; empty when ``t_lo == t_hi``), or ``None`` (everywhere).
        model_calls: number of ``model_fn`` calls so far (= NFE).
        forward_samples: total number of samples (rows) passed to ``model_fn``.
        guided_calls: calls in which at least one row was guided.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        cond: Mapping[str, Tensor],
        null_cond: Mapping[str, Tensor],
        scale: float,
        interval: Sequence[float] | None = None,
    ) -> None:
        if not callable(model_fn):
            raise TypeError(f"model_fn must be callable, got {type(model_fn).__name__}")
        _check_same_keys(cond, null_cond)
        for name in cond:
            if not isinstance(cond[name], Tensor) or not isinstance(null_cond[name], Tensor):
                raise TypeError(f"condition {name!r} must be a Tensor in both cond and null_cond")
        self.model_fn = model_fn
        self.cond = dict(cond)
        self.null_cond = dict(null_cond)
        self.scale = float(scale)
        self.interval = check_guidance_interval(interval)
        self.model_calls = 0
        self.forward_samples = 0
        self.guided_calls = 0

    @property
    def batched(self) -> bool:
        """Whether guided calls run the doubled ``[cond; null]`` batch (``scale != 1``)."""
        return self.scale != 1.0

    @property
    def samples_per_row(self) -> int:
        """Model rows per input sample of a guided call: 2 with guidance, 1 for scale 1."""
        return 2 if self.batched else 1

    @property
    def interval_is_everywhere(self) -> bool:
        """Whether the guidance interval covers all of [0, 1] (``None`` or ``(0, 1)``)."""
        return self.interval is None or self.interval == (0.0, 1.0)

    def inside(self, t: Tensor) -> Tensor:
        """Boolean ``(B,)``: rows whose time lies in the guidance interval (all ``True`` without one)."""
        if self.interval is None:
            return torch.ones(t.shape, dtype=torch.bool, device=t.device)
        lo, hi = self.interval
        if lo == hi:  # empty
            return torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        # compared in t's dtype: a grid time and an interval end written alike (0.7) compare equal
        dtype = t.dtype if t.is_floating_point() else torch.float64
        tt = t.to(dtype)
        lo_t = torch.tensor(lo, dtype=dtype, device=t.device)
        hi_t = torch.tensor(hi, dtype=dtype, device=t.device)
        upper = (tt <= hi_t) if hi == 1.0 else (tt < hi_t)
        return (tt >= lo_t) & upper

    def reset(self) -> None:
        """Set the counters back to 0."""
        self.model_calls = 0
        self.forward_samples = 0
        self.guided_calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[0]
        cond = {k: _match_batch(k, v, batch) for k, v in self.cond.items()}
        if not self.batched:
            self.model_calls += 1
            self.forward_samples += batch
            return self.model_fn(x, t, cond)
        if self.interval is None:
            inside = None
        else:
            mask = self.inside(t.reshape(-1).expand(batch))
            n_in = int(mask.sum())
            inside = None if n_in == batch else mask
            if n_in == 0:  # outside the interval: the plain conditional velocity, B rows
                self.model_calls += 1
                self.forward_samples += batch
                return self.model_fn(x, t, cond)
        null = {k: _match_batch(k, v, batch) for k, v in self.null_cond.items()}
        self.model_calls += 1
        self.guided_calls += 1
        if inside is None:  # every row guided: [cond; null], 2B rows (plain CFG, bit for bit)
            both = guidance_rows(cond, null, batch, self.scale)
            x2 = torch.cat([x, x], dim=0)
            t2 = torch.cat([t, t], dim=0)
            self.forward_samples += 2 * batch
            out = self.model_fn(x2, t2, both)
            if out.shape[0] != 2 * batch:
                raise ValueError(f"model_fn returned batch {out.shape[0]}, expected {2 * batch}")
            v_c, v_u = out[:batch], out[batch:]
            return v_u + self.scale * (v_c - v_u)
        # some rows inside: [cond (all B); null (the k inside)], B + k rows in one call
        idx = inside.nonzero().reshape(-1)
        k = idx.numel()
        both = {
            key: torch.cat([cond[key], null[key].to(cond[key].device).index_select(0, idx.to(cond[key].device))], 0)
            for key in cond
        }
        idx = idx.to(x.device)
        out = self.model_fn(
            torch.cat([x, x.index_select(0, idx)], 0), torch.cat([t, t.index_select(0, idx.to(t.device))], 0), both
        )
        self.forward_samples += batch + k
        if out.shape[0] != batch + k:
            raise ValueError(f"model_fn returned batch {out.shape[0]}, expected {batch + k}")
        v_c, v_u = out[:batch], out[batch:]
        guided = v_u + self.scale * (v_c.index_select(0, idx) - v_u)
        return v_c.index_copy(0, idx, guided)

    def __repr__(self) -> str:
        return (
            f"GuidedVelocity(scale={self.scale}, interval={self.interval}, keys={sorted(self.cond)}, "
            f"model_calls={self.model_calls}, forward_samples={self.forward_samples})"
        )


def classifier_free_guidance(
    model_fn: ModelFn,
    cond: Mapping[str, Tensor],
    null_cond: Mapping[str, Tensor],
    scale: float,
    interval: Sequence[float] | None = None,
) -> GuidedVelocity:
    """Velocity function ``v_u + scale (v_c - v_u)`` on all channels, one model call per evaluation.

    Args:
        model_fn: ``model_fn(x, t, cond_dict) -> velocity``; ``t`` is ``(B,)``.
        cond: conditioning tensors, batch ``B`` (or 1, broadcast) along dim 0.
        null_cond: the "no condition" tensors with the same keys (e.g. the null class).
        scale: guidance scale; 1 gives the plain conditional model (no batching).
        interval: ``(t_lo, t_hi)``: guidance only for ``t_lo <= t < t_hi`` (``<= 1`` when
            ``t_hi == 1``), the conditional velocity elsewhere; ``None``: everywhere.
    """
    return GuidedVelocity(model_fn, cond, null_cond, scale, interval)


#: the condition key that marks the rows of an autoguided call that the guide model evaluates
GUIDE_ROW = "__guide_row__"


def autoguidance(
    model_fn: ModelFn,
    guide_fn: ModelFn,
    cond: Mapping[str, Tensor],
    scale: float,
    interval: Sequence[float] | None = None,
) -> GuidedVelocity:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
    ``v_guide + scale (v_main - v_guide)``, both velocities *conditional* on ``cond``.

    The guide is a weaker model of the same condition and the same latent space (an earlier
    checkpoint, a smaller backbone) in place of CFG's unconditional branch. It reuses
    :class:`GuidedVelocity` (intervals, the one batched call, the counters): its "null" rows are
    ``cond`` marked with :data:`GUIDE_ROW`, and the routed model function sends the marked rows
    to ``guide_fn``, the others to ``model_fn``. ``guided_calls`` counts the steps in which the
    guide ran (its NFE); ``scale = 1`` is the main model alone, without any guide call.
    """
    marker = next(iter(cond.values())).device if cond else None
    main_rows = {**cond, GUIDE_ROW: torch.zeros(1, dtype=torch.bool, device=marker)}
    guide_rows = {**cond, GUIDE_ROW: torch.ones(1, dtype=torch.bool, device=marker)}

    def routed(x: Tensor, t: Tensor, c: dict[str, Tensor]) -> Tensor:
        c = dict(c)
        rows = c.pop(GUIDE_ROW).to(x.device).reshape(-1)
        if rows.numel() == 1:
            rows = rows.expand(x.shape[0])
        if not bool(rows.any()):
            return model_fn(x, t, c)
        if bool(rows.all()):
            return guide_fn(x, t, c)
        main = ~rows

        def pick(mask: Tensor) -> dict[str, Tensor]:
            return {k: v[mask.to(v.device)] for k, v in c.items()}

        out = torch.empty_like(x)
        out[main] = model_fn(x[main], t[main.to(t.device)], pick(main)).to(x.dtype)
        out[rows] = guide_fn(x[rows], t[rows.to(t.device)], pick(rows)).to(x.dtype)
        return out

    return GuidedVelocity(routed, main_rows, guide_rows, scale, interval)
