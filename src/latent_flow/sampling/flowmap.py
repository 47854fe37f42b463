"""Flow-map sampling: a few jumps of a learned average velocity (t = 0 noise, t = 1 data).

A flow-map model (``objective=meanflow``, :mod:`latent_flow.flow.meanflow`) predicts the average
velocity ``u(z, t, t_end)`` of the ODE over ``[t, t_end]``, so on a time grid ``0 = t_0 < ... < t_N = 1``

    z_{t_{k+1}} = z_{t_k} + (t_{k+1} - t_k) * u(z_{t_k}, t_k, t_{k+1}),

one network evaluation per step: ``sampler=flowmap sampler.steps=1`` is one-step generation,
``z_1 = z_0 + u(z_0, 0, 1)``. NFE = ``steps``, counted by wrapping the flow-map function like the
ODE solvers count theirs (:class:`FlowMapCounter`).

The flow-map function has the signature ``flow_map_fn(x, t, t_end)`` (``t``, ``t_end`` ``(B,)``).
:class:`GuidedFlowMap` builds one from ``model_fn(x, t, t_end, cond)`` with classifier-free guidance
``u_u + scale (u_c - u_u)`` on top (``scale = 1``: none; a model trained with guidance folded into its
target samples guided at ``scale = 1``), through :class:`~latent_flow.sampling.guidance.GuidedVelocity`:
the landing time travels as one more condition tensor, so the batched ``[cond; null]`` call, the
guidance interval and the counters (``model_calls``, ``forward_samples``) are the ODE solvers'.
Spatial conditions (inpainting, semantic maps) are condition tensors like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from latent_flow.sampling.guidance import GuidedVelocity
from latent_flow.sampling.solvers import SOLVERS, FixedStepSolver, SampleResult, expand_time

__all__ = ["FLOW_MAP_END", "FlowMapCounter", "FlowMapModelFn", "FlowMapSolver", "GuidedFlowMap", "SampleFlowMapFn"]

SampleFlowMapFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``flow_map_fn(x, t, t_end)``: average velocity from ``t`` to ``t_end`` (``(B,)`` each) at ``x`` ``(B, ...)``."""

FlowMapModelFn = Callable[[Tensor, Tensor, Tensor, dict[str, Tensor]], Tensor]
"""``model_fn(x, t, t_end, cond) -> u``: the network with its condition tensors."""

#: the condition key under which :class:`GuidedFlowMap` passes the landing time through guidance
FLOW_MAP_END = "__flow_map_t_end__"


class FlowMapCounter:
    """Callable wrapper around a flow-map function that counts its calls in ``.count``."""

    def __init__(self, fn: SampleFlowMapFn) -> None:
        if not callable(fn):
            raise TypeError(f"flow-map function must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.count = 0

    def __call__(self, x: Tensor, t: Tensor, t_end: Tensor) -> Tensor:
        self.count += 1
        return self.fn(x, t, t_end)


class FlowMapSolver(FixedStepSolver):
    """``steps`` flow-map jumps on a time grid (``uniform`` or ``shifted``); NFE = ``steps``.

    ``sample(flow_map_fn, x_init)`` takes ``flow_map_fn(x, t, t_end)`` (not a velocity): a model's
    (``LatentFlowModule.sample_latents`` builds it for flow-map models, ``objective=meanflow``), or
    any closed-form flow map.
    """

    evals_per_step = 1
    #: tells ``LatentFlowModule.sample_latents`` to pass the flow map, not the velocity
    flow_map: ClassVar[bool] = True

    def step(self, f: SampleFlowMapFn, x: Tensor, t: float, t_next: float) -> Tensor:  # type: ignore[override]
        """``x + (t_next - t) u(x, t, t_next)``."""
        return x + (t_next - t) * f(x, expand_time(t, x), expand_time(t_next, x))

    def sample(  # type: ignore[override]
        self,
        flow_map_fn: SampleFlowMapFn,
        x_init: Tensor,
        *,
        return_trajectory: bool = False,
        no_grad: bool = True,
    ) -> SampleResult:
        """Jump from ``x_init`` at t = 0 to t = 1 along the grid (see :meth:`Solver.sample`)."""
        if not isinstance(x_init, Tensor) or not x_init.is_floating_point() or x_init.dim() < 1:
            raise ValueError("x_init must be a floating point tensor of shape (B, ...)")
        counter = FlowMapCounter(flow_map_fn)

        def checked(x: Tensor, t: Tensor, t_end: Tensor) -> Tensor:
            u = counter(x, t, t_end)
            if u.shape != x.shape:
                raise ValueError(f"flow_map_fn returned shape {tuple(u.shape)} for x of shape {tuple(x.shape)}")
            return u

        ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
        with ctx:
            x, trajectory, times = self._integrate(checked, x_init, return_trajectory)  # type: ignore[arg-type]
        return SampleResult(x=x, nfe=counter.count, trajectory=trajectory, times=times)


SOLVERS["flowmap"] = FlowMapSolver


class GuidedFlowMap:
    """``flow_map_fn(x, t, t_end)`` with classifier-free guidance ``u_u + scale (u_c - u_u)`` on all channels.

    One model call per evaluation (``[cond; null]`` batched when ``scale != 1``), counted like
    :class:`~latent_flow.sampling.guidance.GuidedVelocity`, which it wraps (``interval``: guidance only
    for ``t_lo <= t < t_hi``, by the jump's start time).
    """

    def __init__(
        self,
        model_fn: FlowMapModelFn,
        cond: Mapping[str, Tensor],
        null_cond: Mapping[str, Tensor],
        scale: float,
        interval: Sequence[float] | None = None,
    ) -> None:
        if not callable(model_fn):
            raise TypeError(f"model_fn must be callable, got {type(model_fn).__name__}")
        if FLOW_MAP_END in cond or FLOW_MAP_END in null_cond:
            raise ValueError(f"the condition key {FLOW_MAP_END!r} is reserved for the landing time")

        def routed(x: Tensor, t: Tensor, c: dict[str, Tensor]) -> Tensor:
            c = dict(c)
            t_end = c.pop(FLOW_MAP_END)
            return model_fn(x, t, t_end.to(t.device), c)

        self.guided = GuidedVelocity(routed, cond, null_cond, scale, interval)

    def __call__(self, x: Tensor, t: Tensor, t_end: Tensor) -> Tensor:
        t_end = expand_time(t_end, x) if not isinstance(t_end, Tensor) or t_end.dim() == 0 else t_end
        self.guided.cond[FLOW_MAP_END] = t_end
        self.guided.null_cond[FLOW_MAP_END] = t_end
        try:
            return self.guided(x, t)
        finally:
            del self.guided.cond[FLOW_MAP_END], self.guided.null_cond[FLOW_MAP_END]

    @property
    def scale(self) -> float:
        return self.guided.scale

    @property
    def model_calls(self) -> int:
        """Model calls so far (= NFE)."""
        return self.guided.model_calls

    @property
    def forward_samples(self) -> int:
        """Rows pushed through the model (``2B`` per guided call, ``B`` otherwise)."""
        return self.guided.forward_samples

    @property
    def guided_calls(self) -> int:
        """Calls in which some row was guided."""
        return self.guided.guided_calls

    def __repr__(self) -> str:
        return f"GuidedFlowMap({self.guided!r})"
