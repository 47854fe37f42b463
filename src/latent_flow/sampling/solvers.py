"""ODE solvers that integrate a velocity field from noise (t = 0) to data (t = 1).

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**; every
solver integrates ``dx/dt = velocity_fn(x, t)`` forward from t = 0 to t = 1.

``velocity_fn(x, t)`` receives ``x`` of shape ``(B, ...)`` and ``t`` of shape
``(B,)`` (scalar times are expanded to the batch; ``t`` has ``x``'s dtype for
float32/float64 states and float32 for half-precision states), and returns a
tensor shaped like ``x``.

NFE (number of function evaluations) is the number of calls to
``velocity_fn``, counted by wrapping it in :class:`NFECounter`; it is the real
count, never a formula. With :func:`~latent_flow.sampling.guidance.classifier_free_guidance`
one velocity call is one (batched) model call, so NFE = model calls.

- :class:`EulerSolver`: ``x += h v(x, t)``; NFE = ``steps``.
- :class:`HeunSolver`: explicit trapezoid, ``d1 = v(x, t)``, ``x~ = x + h d1``,
  ``d2 = v(x~, t + h)``, ``x += h (d1 + d2) / 2``; the last step is not
  shortened to Euler, so NFE = ``2 * steps`` exactly.
- :class:`MidpointSolver`: ``d1 = v(x, t)``, ``d2 = v(x + h/2 d1, t + h/2)``,
  ``x += h d2``; NFE = ``2 * steps``.
- :class:`Dopri5Solver`: adaptive Dormand-Prince 5(4) of ``torchdiffeq``
  (``odeint(method="dopri5", atol, rtol)``) on [0, 1]; NFE as counted.

Gradients: ``Solver.sample(..., no_grad=True)`` (the default, for
convenience) runs under ``torch.no_grad()``. Pass ``no_grad=False`` to keep
the caller's grad mode (no graph is built unless the caller enabled grad, e.g.
inside ``torch.enable_grad()`` with inputs or parameters that require grad).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from latent_flow.sampling.time_grids import TIME_GRID_KINDS
from latent_flow.sampling.time_grids import time_grid as make_time_grid
from latent_flow.utils.config import check_options

__all__ = [
    "VelocityFn",
    "SampleResult",
    "NFECounter",
    "expand_time",
    "Solver",
    "FixedStepSolver",
    "EulerSolver",
    "HeunSolver",
    "MidpointSolver",
    "Dopri5Solver",
    "SOLVERS",
    "build_solver",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity_fn(x, t)`` with ``x`` ``(B, ...)``, ``t`` ``(B,)`` (t = 0 noise, t = 1 data) -> velocity like ``x``."""


@dataclass
class SampleResult:
    """Result of integrating from t = 0 (noise) to t = 1 (data).

    Attributes:
        x: final state at t = 1.
        nfe: number of ``velocity_fn`` calls actually made.
        trajectory: states at ``times`` (first entry = ``x_init``, last = ``x``)
            when ``return_trajectory=True``, else ``None``.
        times: ``(len(trajectory),)`` times of the trajectory entries, else ``None``.
    """

    x: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None
    times: Tensor | None = None


class NFECounter:
    """Callable wrapper around a velocity function that counts its calls in ``.count``."""

    def __init__(self, fn: VelocityFn) -> None:
        if not callable(fn):
            raise TypeError(f"velocity function must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.count = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.count += 1
        return self.fn(x, t)

    def reset(self) -> None:
        """Set ``count`` back to 0."""
        self.count = 0

    def __repr__(self) -> str:
        return f"NFECounter(count={self.count}, fn={self.fn!r})"


def time_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def expand_time(t: float | Tensor, x: Tensor) -> Tensor:
    """Times as a ``(B,)`` tensor on ``x.device`` (B = ``x.shape[0]``).

    Scalars (Python floats or 0-d tensors) are expanded; the dtype is ``x``'s
    for float32/float64 ``x`` and float32 otherwise.
    """
    dtype = time_dtype(x)
    batch = x.shape[0]
    if isinstance(t, Tensor):
        t = t.to(device=x.device, dtype=dtype)
        if t.dim() == 0:
            return t.reshape(1).expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return t
    return torch.full((batch,), float(t), dtype=dtype, device=x.device)


class Solver(ABC):
    """Integrates ``dx/dt = velocity_fn(x, t)`` from t = 0 (noise) to t = 1 (data)."""

    def sample(
        self,
        velocity_fn: VelocityFn,
        x_init: Tensor,
        *,
        return_trajectory: bool = False,
        no_grad: bool = True,
    ) -> SampleResult:
        """Integrate from ``x_init`` at t = 0 to t = 1.

        Args:
            velocity_fn: ``velocity_fn(x, t)`` with ``t`` of shape ``(B,)``.
            x_init: initial state (noise) ``(B, ...)``, floating point.
            return_trajectory: also return the states at the solver's times
                (fixed-step: every grid point; dopri5: 0, the configured
                ``trajectory_times`` and 1).
            no_grad: run under ``torch.no_grad()`` (default). ``False`` keeps
                the caller's grad mode.
        """
        if not isinstance(x_init, Tensor) or not x_init.is_floating_point() or x_init.dim() < 1:
            raise ValueError("x_init must be a floating point tensor of shape (B, ...)")
        counter = NFECounter(velocity_fn)

        def checked(x: Tensor, t: Tensor) -> Tensor:
            v = counter(x, t)
            if v.shape != x.shape:
                raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
            return v

        ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
        with ctx:
            x, trajectory, times = self._integrate(checked, x_init, return_trajectory)
        return SampleResult(x=x, nfe=counter.count, trajectory=trajectory, times=times)

    @abstractmethod
    def _integrate(
        self, f: VelocityFn, x_init: Tensor, return_trajectory: bool
    ) -> tuple[Tensor, list[Tensor] | None, Tensor | None]:
        """Return ``(x_final, trajectory or None, times or None)``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class FixedStepSolver(Solver):
    """Base of fixed-step solvers on a :func:`~latent_flow.sampling.time_grids.time_grid`.

    Args:
        steps: number of steps (>= 1).
        time_grid: ``"uniform"`` or ``"shifted"`` (more steps near noise for shift > 1).
        shift: shift of the ``"shifted"`` grid (must be 1 for ``"uniform"``).
    """

    evals_per_step: ClassVar[int] = 1

    def __init__(self, steps: int, time_grid: str = "uniform", shift: float = 1.0) -> None:
        if time_grid not in TIME_GRID_KINDS:
            raise ValueError(f"unknown time_grid {time_grid!r}; valid: {list(TIME_GRID_KINDS)}")
        self._grid = make_time_grid(steps, time_grid, shift)  # validates steps and shift
        self.steps = int(steps)
        self.time_grid = time_grid
        self.shift = float(shift)

    @property
    def expected_nfe(self) -> int:
        """NFE of one ``sample`` call: ``evals_per_step * steps``."""
        return self.evals_per_step * self.steps

    def grid(self) -> Tensor:
        """The ``(steps + 1,)`` float64 time grid from 0 (noise) to 1 (data)."""
        return self._grid.clone()

    @abstractmethod
    def step(self, f: VelocityFn, x: Tensor, t: float, t_next: float) -> Tensor:
        """Advance ``x`` from ``t`` to ``t_next``."""

    def _integrate(
        self, f: VelocityFn, x_init: Tensor, return_trajectory: bool
    ) -> tuple[Tensor, list[Tensor] | None, Tensor | None]:
        ts = self._grid.tolist()
        x = x_init
        trajectory = [x] if return_trajectory else None
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = self.step(f, x, t, t_next)
            if trajectory is not None:
                trajectory.append(x)
        times = self._grid.to(device=x.device, dtype=time_dtype(x)) if return_trajectory else None
        return x, trajectory, times


class EulerSolver(FixedStepSolver):
    """Explicit Euler, first order: ``x += h v(x, t)``; NFE = ``steps``."""

    evals_per_step = 1

    def step(self, f: VelocityFn, x: Tensor, t: float, t_next: float) -> Tensor:
        h = t_next - t
        return x + h * f(x, expand_time(t, x))


class HeunSolver(FixedStepSolver):
    """Heun (explicit trapezoid), second order; NFE = ``2 * steps`` exactly.

    ``d1 = v(x, t)``, ``x~ = x + h d1``, ``d2 = v(x~, t + h)``,
    ``x += h (d1 + d2) / 2`` on every step, the last one included.
    """

    evals_per_step = 2

    def step(self, f: VelocityFn, x: Tensor, t: float, t_next: float) -> Tensor:
        h = t_next - t
        d1 = f(x, expand_time(t, x))
        x_pred = x + h * d1
        d2 = f(x_pred, expand_time(t_next, x))
        return x + (0.5 * h) * (d1 + d2)


class MidpointSolver(FixedStepSolver):
    """Explicit midpoint, second order; NFE = ``2 * steps``.

    ``d1 = v(x, t)``, ``d2 = v(x + h/2 d1, t + h/2)``, ``x += h d2``.
    """

    evals_per_step = 2

    def step(self, f: VelocityFn, x: Tensor, t: float, t_next: float) -> Tensor:
        h = t_next - t
        d1 = f(x, expand_time(t, x))
        x_mid = x + (0.5 * h) * d1
        d2 = f(x_mid, expand_time(t + 0.5 * h, x))
        return x + h * d2


class Dopri5Solver(Solver):
    """Adaptive Dormand-Prince 5(4) via ``torchdiffeq.odeint`` on [0, 1] (t = 0 noise, t = 1 data).

    NFE is the counted number of velocity calls (torchdiffeq's initial step
    size selection and rejected steps included). Half-precision states are
    integrated in float32 (``velocity_fn`` still sees the original dtype) and
    cast back at the end.

    Args:
        atol, rtol: absolute and relative tolerances (> 0).
        trajectory_times: times in (0, 1) at which to report states when
            ``return_trajectory=True`` (dense output, does not change the steps);
            the endpoints 0 and 1 are always included. ``None``: endpoints only.
        max_num_steps: optional cap on accepted + rejected steps; exceeding it
            raises ``RuntimeError``.
    """

    def __init__(
        self,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        trajectory_times: Sequence[float] | None = None,
        max_num_steps: int | None = None,
    ) -> None:
        atol, rtol = float(atol), float(rtol)
        if not (atol > 0.0 and rtol > 0.0):
            raise ValueError(f"atol and rtol must be > 0, got atol={atol}, rtol={rtol}")
        times: tuple[float, ...] | None = None
        if trajectory_times is not None:
            vals = sorted({float(v) for v in trajectory_times})
            if any(not (0.0 <= v <= 1.0) or math.isnan(v) for v in vals):
                raise ValueError(f"trajectory_times must lie in [0, 1], got {list(trajectory_times)}")
            times = tuple(v for v in vals if 0.0 < v < 1.0)
        if max_num_steps is not None and (int(max_num_steps) != max_num_steps or max_num_steps < 1):
            raise ValueError(f"max_num_steps must be a positive integer or None, got {max_num_steps!r}")
        self.atol = atol
        self.rtol = rtol
        self.trajectory_times = times
        self.max_num_steps = None if max_num_steps is None else int(max_num_steps)

    def _integrate(
        self, f: VelocityFn, x_init: Tensor, return_trajectory: bool
    ) -> tuple[Tensor, list[Tensor] | None, Tensor | None]:
        from torchdiffeq import odeint

        orig_dtype = x_init.dtype
        work_dtype = time_dtype(x_init)
        y0 = x_init.to(work_dtype)
        t_list = [0.0]
        if return_trajectory and self.trajectory_times:
            t_list += list(self.trajectory_times)
        t_list.append(1.0)
        t_eval = torch.tensor(t_list, dtype=work_dtype, device=x_init.device)
        batch = x_init.shape[0]

        def func(t: Tensor, y: Tensor) -> Tensor:
            tb = t.to(dtype=work_dtype).reshape(1).expand(batch)
            return f(y.to(orig_dtype), tb).to(work_dtype)

        options = {"max_num_steps": self.max_num_steps} if self.max_num_steps is not None else None
        try:
            ys = odeint(func, y0, t_eval, method="dopri5", atol=self.atol, rtol=self.rtol, options=options)
        except AssertionError as err:  # torchdiffeq signals step limits / underflow with asserts
            raise RuntimeError(f"dopri5 failed: {err}") from err
        x = ys[-1].to(orig_dtype)
        if not return_trajectory:
            return x, None, None
        trajectory = [ys[i].to(orig_dtype) for i in range(ys.shape[0])]
        return x, trajectory, t_eval


SOLVERS: dict[str, type[Solver]] = {
    "euler": EulerSolver,
    "heun": HeunSolver,
    "midpoint": MidpointSolver,
    "dopri5": Dopri5Solver,
}


def build_solver(name: str, **options: Any) -> Solver:
    """Build a solver by name: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"dopri5"`` or ``"euler_maruyama"``.

    Fixed-step solvers take ``steps`` (required), ``time_grid`` and ``shift``;
    dopri5 takes ``atol``, ``rtol``, ``trajectory_times``, ``max_num_steps``;
    euler_maruyama (the SDE sampler of :mod:`latent_flow.sampling.sde`, registered on import of
    ``latent_flow.sampling``) takes ``steps``, ``diffusion``, ``diffusion_form``, ``time_grid``,
    ``shift`` and ``path`` (``model.sample_latents`` passes the model's path).

    Raises:
        ValueError: unknown name, unknown option (the message names it and
            lists the valid ones), missing required option, or invalid value.
    """
    key = str(name).lower()
    if key == "flowturbo":
        raise ValueError(
            "sampler=flowturbo needs the trained model and its velocity refiner, not a velocity function: "
            "build it with latent_flow.generation.build_model_solver(model, 'flowturbo', refiner_ckpt_path=...) "
            "(python -m latent_flow.sample / evaluate do); here use one of " + str(sorted(SOLVERS))
        )
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid names: {sorted(SOLVERS)}")
    cls = SOLVERS[key]
    check_options(cls, options, f"solver {key!r}", required=True)
    return cls(**options)
