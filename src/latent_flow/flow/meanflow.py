"""Flow maps: the average velocity of the flow ODE over an interval (MeanFlow, Geng et al. 2025).

Time convention (everywhere in latent_flow): **t = 0 is noise, t = 1 is data**; generation integrates
``dz/dtau = v(z_tau, tau)`` *forward*, from tau = 0 to tau = 1. A jump therefore starts at the earlier
(noisier) time ``s`` and lands at the later time ``t >= s``.

Definition
----------
For a trajectory ``z_tau`` of the ODE and ``s <= t``, the average velocity of the jump from ``s`` to ``t``,
as a function of the state at its start, is

    u(z_s, s, t) = 1 / (t - s) * integral_s^t v(z_tau, tau) dtau,      so   z_t = z_s + (t - s) u(z_s, s, t),

and ``u(z, s, s) = v(z, s)`` (the limit ``t -> s``). A network ``u_theta(z, s, t)`` of it samples in
one evaluation, ``z_1 = z_0 + u_theta(z_0, 0, 1)``, or in a few through intermediate times
(:mod:`latent_flow.sampling.flowmap`). The backbones compute it as ``net(z, s, y, t_end=t)``: their
time argument stays the time of the state they are given, ``t_end`` is where the jump lands.

The identity (derived once, here)
---------------------------------
Hold the landing time ``t`` fixed and move the start ``s`` along the trajectory. With
``F(s) = (t - s) u(z_s, s, t) = integral_s^t v(z_tau, tau) dtau``:

- product rule:            ``dF/ds = -u(z_s, s, t) + (t - s) d/ds u(z_s, s, t)``;
- fundamental theorem:     ``dF/ds = -v(z_s, s)``  (``s`` is the *lower* limit of the integral).

Equating the two,

    u(z_s, s, t) = v(z_s, s) + (t - s) * d/ds u(z_s, s, t),

where ``d/ds`` is the total derivative along the trajectory (``dz_s/ds = v(z_s, s)``):

    d/ds u(z_s, s, t) = (du/dz) v(z_s, s) + du/ds + 0 * du/dt,

one Jacobian-vector product of ``u`` with the tangent ``(v, 1, 0)`` on ``(z, s, t)``
(:func:`torch.func.jvp`, forward mode: one pass, no second backward).

The paper writes the opposite time direction (its t = 0 is data, 1 noise; the state sits at the
*later* time ``t`` and jumps back to ``r < t``): there ``(t - r) u = integral_r^t v`` is differentiated in
its *upper* limit, giving ``u = v - (t - r) du/dt`` with the tangent ``(v, 0, 1)`` on ``(z, r, t)``.
With ``tau' = 1 - tau`` its ``v' = -v`` and ``u'(z, r', t') = -u(z, 1 - t', 1 - r')``: substituting gives
the identity above, whose sign is ``+`` and whose tangent's 1 sits on the state's own time ``s``.
``tests/unit/test_meanflow.py`` checks every sign on a Gaussian flow, where ``u`` is known in closed form.

The training objective
----------------------
As in flow matching, the marginal ``v`` is replaced by the path's *conditional* velocity at ``s``,
``v_c = d_alpha_s x_data + d_sigma_s x_noise``, at ``z_s = alpha_s x_data + sigma_s x_noise``. The
target is affine in ``v`` (the JVP is linear in its tangent), so its conditional expectation given
``z_s`` is the identity's right-hand side with the marginal velocity, and the true ``u`` is the fixed
point of the regression

    u_tgt = v_c + (t - s) * JVP(u_theta; (v_c, 1, 0)) at (z_s, s, t),      loss = || u_theta(z_s, s, t) - sg(u_tgt) ||^2,

with a stop-gradient ``sg`` on the target (no second-order gradients). With ``s = t`` the target is
``v_c``: plain flow matching. A fraction ``distinct_fraction`` of the pairs has ``s < t`` (MeanFlow's
best ImageNet setting: 25%), the rest ``s = t``.

- **Time pairs** (:class:`TimePairSampler`): two draws of a time sampler (logit-normal in the paper),
  sorted so that ``s <= t``; the pairs chosen to be flow-matching pairs keep the *noisier* time, ``t = s``
  (the paper keeps its state time, the noisier one, too). The paper's ``lognorm(-0.4, 1)`` in its time
  is ``logit_normal(mean=+0.4, std=1)`` here (``tau' = 1 - tau`` flips the sign of the mean).
- **Adaptive loss weighting** (:func:`adaptive_weight`): per sample ``d = ||u_theta - u_tgt||^2`` (the
  squared L2 norm over all latent elements), ``w = sg(1 / (d + eps)^p)``, loss ``mean(w d)``; ``p = 1``
  (the paper's default) makes the gradient that of ``log(d + eps)``, ``p = 0`` is the plain squared norm.
- **Classifier-free guidance folded into the target** (MeanFlow sec. 4.2, :meth:`MeanFlowObjective.guided_velocity`):
  for samples whose condition was kept, ``v_c`` is replaced (as tangent and as target) by

      v~ = omega * v_c + kappa * u_theta(z_s, s, s | c) + (1 - omega - kappa) * u_theta(z_s, s, s | null),

  the network's own instantaneous velocities under stop-gradient; samples whose condition was dropped
  (label dropout, as in the flow objective) keep ``v~ = v_c`` and learn the unconditional field. At the
  fixed point ``u(z, s, s | c) = (omega / (1 - kappa)) v(z, s | c) + (1 - omega / (1 - kappa)) v(z, s)``:
  one evaluation samples the guided ODE of CFG scale ``omega / (1 - kappa)`` (``kappa = 0``: ``omega``).

Distillation from a trained flow (``velocity="teacher"``)
--------------------------------------------------------
The identity holds pointwise with the *marginal* velocity ``v(z_s, s)``; the conditional ``v_c`` only
matches it in expectation given ``z_s``, and its spread around ``v`` (largest near the noise end, where
``z_s`` says little about ``x_data``) is noise in every target. A trained flow's velocity ``v_T(z_s, s)``
estimates ``v`` directly, so using it as the tangent and the target's velocity (the teacher's guided
``omega v_T(z_s, s | c) + (1 - omega) v_T(z_s, s | null)`` when guidance is folded in) keeps the same
fixed point, the teacher's own flow map, with a regression target that has no data noise: the conversion
of a flow checkpoint into a flow map (``init_from=`` the flow, the teacher its EMA network, frozen) then
fits a deterministic function. The student's quality is bounded by the teacher's, as for any distillation.

Distillation along the teacher's trajectories (``target="ode"``)
-----------------------------------------------------------------
The identity's target differentiates the network along the flow (the JVP), and so inherits the network's
roughness in its time input at scales finer than the flow (``experiments/one_step/README.md``). With a
teacher the definition itself gives a target with no derivative at all: integrate the teacher's ODE from
``z_s`` to ``t`` and regress on the jump,

    u_tgt = (z_t^T - z_s) / (t - s),      z_t^T = Heun(v_T; z_s, s -> t),      loss = || u_theta(z_s, s, t) - u_tgt ||^2,

the direct flow-map distillation of Luhman & Luhman (2021, "knowledge distillation", there only the jump
0 -> 1) for every interval, the Lagrangian flow-map matching of Boffi et al. (2024) with a solver in place of
its derivative. :func:`ode_average_velocity` gives each pair ``n = max(1, ceil(max_steps (t - s)))``
uniform Heun steps (a pair spanning [0, 1] gets ``max_steps``, a short one one step) and returns the mean of
the steps' trapezoid slopes, which *is* ``(z_t^T - z_s) / (t - s)`` and stays defined at ``t = s``, where it is
``v_T(z_s, s)``: flow-matching pairs keep the teacher's velocity. Its error is Heun's,
``O((t - s)^2 / n^2)`` in the average velocity (second order, tested on the Gaussian flow). The fixed point is the
teacher's flow map up to the solver's error; the regression target is deterministic given ``z_s``. Cost: about
``2 n`` teacher evaluations per pair (twice the rows with folded guidance), no backward through the teacher, and
the student's own pass is an ordinary forward (no JVP: the fused attention kernels and ``torch.compile`` apply).

**Starts on the teacher's trajectories** (``ode_start="teacher"``): the pairs' states ``z_s`` come from the path,
``(1 - s) x_0 + s x_1``, a sample of the *unguided* marginal at ``s``, while a few-step sampler's later jumps start
where its earlier ones landed, near the *guided* ODE's marginal (classifier-free guidance moves the trajectories
off the path's marginals). With ``ode_start="teacher"`` the state is the teacher's guided ODE integrated from the
noise ``x_0`` to ``s`` (:meth:`MeanFlowObjective.trajectory_state`, ``ceil(teacher_steps s)`` Heun steps), so every
jump is learnt where the sampler takes it (progressive distillation and consistency trajectory models train on the
teacher's own trajectories likewise); the data batch then gives the conditions only. Cost: the teacher integrates
``[0, t]`` instead of ``[s, t]``. With ``ode_start="student"`` the state is the student's own jump from the noise,
``x_0 + s u_theta(x_0, 0, s)`` without gradient (:meth:`MeanFlowObjective.student_state`): exactly where a 2-step
sampler's second jump starts, its first jump's error included (DMD2's backward simulation, for the regression);
the target is still the teacher's ODE from there. Cost: one forward pass of the student without gradient.

**Grid pairs** (``grid_fraction``, :class:`TimePairSampler`): a share of the pairs is drawn from the jumps that
``sampler=flowmap sampler.steps=n`` makes on its uniform grid (``(k / n, (k + 1) / n)`` for ``n`` in
``grid_steps``): under two uniform draws an interval as long as the one-step jump 0 -> 1 has density zero, and
the jumps a sampler takes are the ones that must be right (shortcut models, Frans et al. 2024, train on
exactly their dyadic step sizes).

Self-distillation by half jumps (``target="shortcut"``)
------------------------------------------------------
Without a teacher and without the JVP, the flow map's semigroup property gives a target too: for ``s < m < t``
the jump ``s -> t`` is the jump ``s -> m`` followed by ``m -> t``, so with ``m = (s + t) / 2``

    u(z_s, s, t) = (u(z_s, s, m) + u(z_m, m, t)) / 2,      z_m = z_s + (m - s) u(z_s, s, m),

and the network's own two half jumps, without gradient, are the target of its long jump
(:func:`shortcut_average_velocity`; shortcut models, Frans et al. 2024, on their dyadic step sizes; here any pair).
The pairs with ``s = t`` keep the flow-matching target (the path's conditional velocity, guided), and half jumps
shorter than ``shortcut_velocity_below`` are taken with that velocity (two Euler half steps), which anchors the
recursion: short jumps learn the velocity, twice as long ones their composition, and so on up to the jump
0 -> 1 (with ``grid_steps`` the dyadic grids ``[1, 2, 4, ..., 128]``, every grid jump's halves are grid jumps
themselves). The exact flow map is a fixed point (tested on the Gaussian flow); the cost is two forward passes
without gradient on the jumping rows, and the student's pass is an ordinary one (compiled, bf16 autocast).

Paths: the identity holds for any affine path, but the flow map is implemented and tested for the
CondOT path only; :class:`MeanFlowObjective` refuses other schedulers (the VP path's ``d_sigma`` grows
without bound at the data end, where the pairs' landing times concentrate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import CondOTScheduler
from latent_flow.flow.time_sampling import TimeSampler, shift_time

__all__ = [
    "FlowMapFn",
    "FlowMapTarget",
    "MeanFlowObjective",
    "TimePairSampler",
    "adaptive_weight",
    "flow_map_target",
    "ode_average_velocity",
    "shortcut_average_velocity",
]

FlowMapFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``u(z, s, t)``: average velocity of the jump from time ``s`` (state ``z`` ``(B, ...)``) to ``t >= s``, both ``(B,)``."""

RowVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``v(z, tau, rows)``: the velocity at states ``z`` ``(R, ...)`` and times ``tau`` ``(R,)`` of the batch rows ``rows``
``(R,)`` (int64 indices into the batch, so that a conditional velocity picks each row's condition)."""


def _batch_view(c: Tensor, x: Tensor) -> Tensor:
    return c.reshape((x.shape[0],) + (1,) * (x.dim() - 1)).to(x.dtype)


class TimePairSampler:
    """Draws flow-map time pairs ``(s, t)`` with ``0 <= s <= t <= 1`` (t = 0 noise, t = 1 data).

    ``s`` and ``t`` are the smaller and the larger of two draws of ``time_sampler``; then, per sample
    with probability ``1 - distinct_fraction``, the pair becomes a flow-matching pair ``t = s`` (the
    noisier of the two times is kept).

    Finally, per sample with probability ``grid_fraction``, the pair is replaced by a jump of a sampling grid:
    ``n`` drawn uniformly from ``grid_steps``, ``k`` from ``0 .. n - 1``, ``(s, t) = (g(k / n), g((k + 1) / n))``
    with ``g`` the timestep shift :func:`~latent_flow.flow.time_sampling.shift_time` by ``grid_shift`` (1: the
    identity), i.e. the jumps of ``sampler=flowmap sampler.steps=n`` (with ``sampler.time_grid=shifted
    sampler.shift=grid_shift`` when it is not 1).

    Args:
        time_sampler: the distribution of each draw (e.g. ``LogitNormalTimeSampler``).
        distinct_fraction: expected share of the drawn pairs with ``s < t``, in [0, 1].
        grid_fraction: expected share of grid jumps, in [0, 1] (0: none).
        grid_steps: the step counts whose grids give the jumps (positive integers).
        grid_shift: the grids' timestep shift (> 0; 1: uniform grids; > 1: finer toward the noise).
    """

    def __init__(
        self,
        time_sampler: TimeSampler,
        distinct_fraction: float = 0.25,
        grid_fraction: float = 0.0,
        grid_steps: Sequence[int] = (1, 2, 4),
        grid_shift: float = 1.0,
    ) -> None:
        if not isinstance(time_sampler, TimeSampler):
            raise TypeError(f"time_sampler must be a TimeSampler, got {type(time_sampler).__name__}")
        distinct_fraction, grid_fraction = float(distinct_fraction), float(grid_fraction)
        if not 0.0 <= distinct_fraction <= 1.0:
            raise ValueError(f"distinct_fraction must be in [0, 1], got {distinct_fraction}")
        if not 0.0 <= grid_fraction <= 1.0:
            raise ValueError(f"grid_fraction must be in [0, 1], got {grid_fraction}")
        steps = list(grid_steps)
        if not steps or any(isinstance(n, bool) or int(n) != n or int(n) < 1 for n in steps):
            raise ValueError(f"grid_steps must be a non-empty list of positive integers, got {grid_steps!r}")
        self.time_sampler = time_sampler
        self.distinct_fraction = distinct_fraction
        self.grid_fraction = grid_fraction
        self.grid_steps = [int(n) for n in steps]
        if isinstance(grid_shift, bool) or not float(grid_shift) > 0.0:
            raise ValueError(f"grid_shift must be > 0, got {grid_shift!r}")
        self.grid_shift = float(grid_shift)

    def __call__(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(s, t)``: float32 ``(batch_size,)`` each, ``s <= t`` elementwise."""
        a = self.time_sampler(batch_size, device, generator=generator)
        b = self.time_sampler(batch_size, device, generator=generator)
        s, t = torch.minimum(a, b), torch.maximum(a, b)
        draw_device = generator.device if generator is not None else a.device
        keep = torch.rand(batch_size, generator=generator, device=draw_device).to(a.device) < self.distinct_fraction
        t = torch.where(keep, t, s)
        if self.grid_fraction == 0.0:
            return s, t
        on_grid = torch.rand(batch_size, generator=generator, device=draw_device) < self.grid_fraction
        pick = torch.randint(len(self.grid_steps), (batch_size,), generator=generator, device=draw_device)
        n = torch.tensor(self.grid_steps, device=draw_device)[pick]
        k = (torch.rand(batch_size, generator=generator, device=draw_device) * n).floor().clamp(max=n - 1)
        grid_s, grid_t = (shift_time((j / n).double(), self.grid_shift).to(s.dtype).to(s.device) for j in (k, k + 1))
        on_grid = on_grid.to(s.device)
        return torch.where(on_grid, grid_s, s), torch.where(on_grid, grid_t, t)

    def __repr__(self) -> str:
        grid = (
            f", grid_fraction={self.grid_fraction}, grid_steps={self.grid_steps}, grid_shift={self.grid_shift}"
            if self.grid_fraction
            else ""
        )
        return f"TimePairSampler({self.time_sampler!r}, distinct_fraction={self.distinct_fraction}{grid})"


@dataclass
class FlowMapTarget:
    """The network's average velocity ``u = u_theta(z_s, s, t)`` (with its graph), the regression
    target ``target = v + (t - s) dudt`` (detached) and ``dudt``, the total derivative along the flow
    (the JVP with tangent ``(v, 1, 0)``, detached)."""

    u: Tensor
    target: Tensor
    dudt: Tensor


def flow_map_target(u_fn: FlowMapFn, z: Tensor, s: Tensor, t: Tensor, v: Tensor) -> FlowMapTarget:
    """``u_theta(z, s, t)`` and its MeanFlow target ``v + (t - s) * d/ds u_theta`` in one forward-mode pass.

    ``d/ds u_theta = (du/dz) v + du/ds`` is ``torch.func.jvp(u_fn, (z, s, t), (v, 1, 0))``; the primal
    output keeps its graph for the loss, the tangent and the target are detached (the stop-gradient).

    The pass runs with autocast disabled, in the dtype of ``z`` and of the network's weights: under
    bf16 autocast, forward-mode AD through GroupNorm (fp32 under autocast) and a following convolution
    leaves a float32 tangent beside a bf16 weight, and the convolution's tangent refuses the mix
    (torch 2.14.1, CPU: "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the
    same"). ``bf16-mixed`` training of a flow map therefore computes its loss in float32.

    Args:
        u_fn: ``u_fn(z, s, t) -> (B, ...)``, the network (t = 0 noise, t = 1 data).
        z: states at time ``s``, ``(B, ...)``.
        s, t: ``(B,)`` start and landing times, ``s <= t``.
        v: the velocity along which the state moves (the path's conditional velocity, guided or not).
    """
    if v.shape != z.shape:
        raise ValueError(f"v {tuple(v.shape)} must have the shape of z {tuple(z.shape)}")
    z, s, t = z.contiguous(), s.contiguous(), t.contiguous()  # (expanded inputs: jvp writes through its tangents)
    tangents = (v.to(z.dtype).contiguous(), torch.ones(s.shape, dtype=s.dtype, device=s.device), torch.zeros_like(t))
    with torch.autocast(z.device.type, enabled=False):
        u, dudt = torch.func.jvp(u_fn, (z, s, t), tangents)
    dudt = dudt.detach()
    target = (v.to(dudt.dtype) + _batch_view(t - s, dudt) * dudt).detach()
    return FlowMapTarget(u=u, target=target, dudt=dudt)


def ode_average_velocity(velocity_fn: RowVelocityFn, z: Tensor, s: Tensor, t: Tensor, max_steps: int) -> Tensor:
    """The average velocity ``(z_t - z_s) / (t - s)`` of the ODE ``dz/dtau = v(z, tau)`` from ``z`` at ``s`` to ``t``
    by Heun's method (module docstring, ``target="ode"``), each row on its own uniform grid.

    Row ``i`` takes ``n_i = max(1, ceil(max_steps (t_i - s_i)))`` steps of ``h_i = (t_i - s_i) / n_i``; the result
    is the mean of its steps' slopes ``(d1 + d2) / 2``, i.e. the jump divided by ``t_i - s_i``, and ``v(z_i, s_i)``
    where ``t_i = s_i`` (one evaluation). Every evaluation asks only for the rows still integrating, so the
    velocity is evaluated ``1 + sum_i (2 n_i - 1)`` times in rows (``2 n_i`` for a row with ``s_i < t_i``).
    Runs without gradient.

    Args:
        velocity_fn: ``v(z, tau, rows)`` (:data:`RowVelocityFn`).
        z: states at ``s``, ``(B, ...)``.
        s, t: ``(B,)`` start and landing times, ``s <= t``.
        max_steps: the Heun steps of a pair spanning the whole interval [0, 1] (>= 1).
    """
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or int(max_steps) < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if s.shape != (z.shape[0],) or t.shape != s.shape:
        raise ValueError(f"s {tuple(s.shape)} and t {tuple(t.shape)} must have shape ({z.shape[0]},)")
    gap = t - s
    if bool((gap < 0).any()):
        raise ValueError("ode_average_velocity needs s <= t in every row")
    with torch.no_grad():
        steps = torch.where(gap > 0, torch.ceil(gap * int(max_steps)).clamp(min=1), torch.zeros_like(gap)).long()
        h = gap / steps.clamp(min=1).to(gap.dtype)
        every = torch.arange(z.shape[0], device=z.device)
        # states and sums in z's dtype: a bf16 network output (autocast) is not accumulated in bf16
        first = velocity_fn(z, s, every).to(z.dtype)
        total = torch.zeros_like(z)
        x = z.clone()
        for k in range(int(steps.max().item()) if steps.numel() else 0):
            rows = every[steps > k]
            h_rows = h[rows]
            tau = s[rows] + k * h_rows
            d1 = first[rows] if k == 0 else velocity_fn(x[rows], tau, rows).to(z.dtype)
            x_euler = x[rows] + _batch_view(h_rows, d1) * d1
            d2 = velocity_fn(x_euler, tau + h_rows, rows).to(z.dtype)
            slope = 0.5 * (d1 + d2)
            x[rows] = x[rows] + _batch_view(h_rows, slope) * slope
            total[rows] = total[rows] + slope
        mean = total / _batch_view(steps.clamp(min=1), total)
        return torch.where(_batch_view(steps > 0, first).bool(), mean, first)


def shortcut_average_velocity(
    u_fn: FlowMapFn, z: Tensor, s: Tensor, t: Tensor, velocity_below: float = 0.0, shift: float = 1.0
) -> Tensor:
    """The average velocity of the jump ``s -> t`` composed of the flow map's own two half jumps (module docstring,
    ``target="shortcut"``): ``((m - s) u(z, s, m) + (t - m) u(z_m, m, t)) / (t - s)`` with ``z_m = z + (m - s) u(z,
    s, m)`` and ``m = (s + t) / 2`` (then the mean of the two) or, with ``shift``, the midpoint in the shifted time.
    Exact for an exact flow map; runs without gradient, in ``z``'s dtype.

    The recursion's base case: a half jump shorter than ``velocity_below`` is taken with the velocity (``u`` at
    ``t_end`` = its start), i.e. two Euler half steps (each half on its own with ``shift``), as shortcut models do
    below their finest step size. Without it the finest trained jumps would be built from jumps that are never
    trained themselves (a network whose interval embedding turns fast, e.g. ``sin(1000 (t - s))``, does not
    interpolate them from the velocity).

    Args:
        u_fn: ``u_fn(z, s, t) -> (B, ...)`` (t = 0 noise, t = 1 data).
        z: states at ``s``, ``(B, ...)``.
        s, t: ``(B,)`` start and landing times, ``s <= t`` (``s = t`` gives ``u(z, s, s)``, the velocity).
        velocity_below: half jumps with ``(t - s) / 2 < velocity_below`` use the velocity (0: never).
        shift: the midpoint in the shifted time of the grids of ``TimePairSampler(grid_shift=shift)``: ``m =
            g((g^-1(s) + g^-1(t)) / 2)`` with ``g`` = :func:`~latent_flow.flow.time_sampling.shift_time` (its inverse
            is the shift by ``1 / shift``), so a jump of the shifted n-step grid splits into two jumps of the
            shifted 2n-step grid, as the uniform grids' jumps do at ``(s + t) / 2`` (shift 1).
    """
    if s.shape != (z.shape[0],) or t.shape != s.shape:
        raise ValueError(f"s {tuple(s.shape)} and t {tuple(t.shape)} must have shape ({z.shape[0]},)")
    if bool((t < s).any()):
        raise ValueError("shortcut_average_velocity needs s <= t in every row")
    if not float(velocity_below) >= 0.0:
        raise ValueError(f"velocity_below must be >= 0, got {velocity_below!r}")
    if not float(shift) > 0.0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    with torch.no_grad():
        if float(shift) == 1.0:  # equal halves: the jump's average velocity is the mean of the two
            m, share = 0.5 * (s + t), 0.5
        else:  # in float64: the grid times of the two levels agree to float32 rounding
            u_s, u_t = (shift_time(x.double(), 1.0 / float(shift)) for x in (s, t))
            m = shift_time(0.5 * (u_s + u_t), float(shift)).to(s.dtype)
            m = torch.where(t > s, torch.minimum(torch.maximum(m, s), t), s)  # in [s, t] despite the round trip
            # unequal halves: each weighs its share of [s, t]
            gap = (t - s).clamp_min(torch.finfo(s.dtype).tiny)
            share = _batch_view(torch.where(t > s, (m - s) / gap, torch.full_like(s, 0.5)), z).to(z.dtype)
        below = float(velocity_below)
        first = u_fn(z, s, torch.where(m - s < below, s, m)).to(z.dtype)
        z_mid = z + _batch_view(m - s, first) * first
        second = u_fn(z_mid, m, torch.where(t - m < below, m, t)).to(z.dtype)
        return share * first + (1 - share) * second


def adaptive_weight(squared_error: Tensor, power: float = 1.0, eps: float = 1e-3) -> Tensor:
    """``sg(1 / (squared_error + eps)^power)`` per sample (MeanFlow's adaptive loss weighting)."""
    return (squared_error.detach() + eps).pow(-float(power))


class MeanFlowObjective:
    """The MeanFlow objective on an affine path (module docstring: time pairs, target, weighting, CFG).

    Args:
        path: the probability path; must use the CondOT scheduler.
        time_sampler: the distribution of each of the two draws of a time pair.
        distinct_fraction: expected share of pairs with ``s < t`` (MeanFlow: 0.25).
        weight_power, weight_eps: adaptive weighting ``1 / (||delta||^2 + eps)^power`` (p = 1, eps = 1e-3).
        cfg_scale: ``omega`` of the guidance folded into the target (1 = none).
        cfg_kappa: ``kappa`` of the same (improved MeanFlow's mix; 0 = MeanFlow's original form).
        velocity: ``"path"`` (the path's conditional velocity, MeanFlow) or ``"teacher"`` (a trained flow's
            velocity, distillation: the caller passes it, guided, to :meth:`target`); ``cfg_kappa`` mixes the
            student's own velocity and is refused with a teacher.
        target: ``"jvp"`` (MeanFlow's identity, :meth:`target`), ``"ode"`` (the teacher's ODE integrated over
            the pair, :meth:`ode_target`; needs ``velocity="teacher"``) or ``"shortcut"`` (the model's own two half
            jumps, :meth:`shortcut_target`; ``velocity`` is then the target of the ``s = t`` pairs only).
        teacher_steps: Heun steps of the teacher over a whole [0, 1] interval with ``target="ode"``.
        grid_fraction, grid_steps: the share of pairs that are sampling-grid jumps (:class:`TimePairSampler`).
        dmd_weight: weight of distribution matching (:mod:`latent_flow.flow.distribution_matching`) on the
            student's few-step samples, added to the regression (0: off; needs ``velocity="teacher"``).
        dmd_times: ``[t_min, t_max]``, the range of the uniform noise levels of distribution matching.
        dmd_steps: the step counts of the student's samples that distribution matching sees (one drawn per batch;
            the jumps before the last are taken without gradient, DMD2's backward simulation).
        dmd_fake_lr_scale: the fake flow's learning rate relative to the student's (> 1: it tracks the student's
            samples faster, in the spirit of DMD2's several fake updates per student update).
        gan_weight: weight of DMD2's adversarial term on the student's samples (the non-saturating
            :func:`~latent_flow.flow.distribution_matching.generator_loss` of a discriminator head on the fake flow's
            features, trained on noised real latents against noised student samples; 0: off; needs ``dmd_weight > 0``).
        gan_discriminator_weight: weight of the discriminator's logistic loss in the fake flow's and the head's
            update (DMD2: 1e-2 beside the fake network's own denoising loss; on the quick start its loss then stays
            at 2 log 2 for hundreds of steps: the head alone cannot tell, the trunk has to learn too).
        gan_times: ``[t_min, t_max]``, the range of the uniform noise levels the discriminator sees (closer to the
            data, t -> 1, it tells real from generated far sooner than over DMD's whole range).
        ode_start: ``"path"`` (the pairs' states from the path at ``s``), ``"teacher"`` (``target="ode"`` only: the
            teacher's guided ODE integrated from the noise to ``s``, :meth:`trajectory_state`) or ``"student"``
            (``target="ode"`` only: the student's own jump from the noise to ``s``, :meth:`student_state`).
        shortcut_velocity_below: ``target="shortcut"``: half jumps shorter than this are taken with the velocity
            (the recursion's base case; 1/128: the halves of the finest of shortcut models' 128-step grid).
    """

    VELOCITIES = ("path", "teacher")
    TARGETS = ("jvp", "ode", "shortcut")
    STARTS = ("path", "teacher", "student")

    def __init__(
        self,
        path: AffinePath,
        time_sampler: TimeSampler,
        *,
        distinct_fraction: float = 0.25,
        weight_power: float = 1.0,
        weight_eps: float = 1e-3,
        cfg_scale: float = 1.0,
        cfg_kappa: float = 0.0,
        velocity: str = "path",
        target: str = "jvp",
        teacher_steps: int = 10,
        grid_fraction: float = 0.0,
        grid_steps: Sequence[int] = (1, 2, 4),
        grid_shift: float = 1.0,
        dmd_weight: float = 0.0,
        dmd_times: Sequence[float] = (0.02, 0.98),
        dmd_steps: Sequence[int] = (1,),
        dmd_fake_lr_scale: float = 1.0,
        gan_weight: float = 0.0,
        gan_discriminator_weight: float = 1.0,
        gan_times: Sequence[float] = (0.5, 0.98),
        shortcut_velocity_below: float = 1.0 / 128,
        shortcut_ode_from: float | None = None,
        ode_start: str = "path",
    ) -> None:
        if velocity not in self.VELOCITIES:
            raise ValueError(f"objective.velocity must be one of {list(self.VELOCITIES)}, got {velocity!r}")
        if target not in self.TARGETS:
            raise ValueError(f"objective.target must be one of {list(self.TARGETS)}, got {target!r}")
        if target == "ode" and velocity != "teacher":
            raise ValueError(
                "objective.target=ode integrates a teacher flow's ODE over each pair: set objective.velocity=teacher "
                "(with init_from=<flow .ckpt>)"
            )
        if ode_start not in self.STARTS:
            raise ValueError(f"objective.ode_start must be one of {list(self.STARTS)}, got {ode_start!r}")
        if ode_start != "path" and target != "ode":
            raise ValueError(
                f"objective.ode_start={ode_start} starts the pairs off the path for target=ode: set objective.target=ode "
                f"(got {target!r})"
            )
        if isinstance(teacher_steps, bool) or int(teacher_steps) != teacher_steps or int(teacher_steps) < 1:
            raise ValueError(f"objective.teacher_steps must be a positive integer, got {teacher_steps!r}")
        if velocity == "teacher" and float(cfg_kappa) != 0.0:
            raise ValueError(
                "objective.velocity=teacher guides with the teacher's velocities (cfg_scale); cfg_kappa mixes the "
                f"student's own and is not defined with a teacher: set cfg_kappa=0 (got {cfg_kappa})"
            )
        if not float(dmd_weight) >= 0.0:
            raise ValueError(f"objective.dmd_weight must be >= 0, got {dmd_weight!r}")
        if float(dmd_weight) > 0.0 and velocity != "teacher":
            raise ValueError(
                "objective.dmd_weight > 0 matches the student's samples to a teacher flow's distribution: set "
                "objective.velocity=teacher (with init_from=<flow .ckpt>)"
            )
        times = [float(v) for v in dmd_times]
        if len(times) != 2 or not 0.0 < times[0] < times[1] < 1.0:
            raise ValueError(
                f"objective.dmd_times must be [t_min, t_max] with 0 < t_min < t_max < 1, got {dmd_times!r}"
            )
        adv_times = [float(v) for v in gan_times]
        if len(adv_times) != 2 or not 0.0 < adv_times[0] < adv_times[1] < 1.0:
            raise ValueError(
                f"objective.gan_times must be [t_min, t_max] with 0 < t_min < t_max < 1, got {gan_times!r}"
            )
        dsteps = list(dmd_steps)
        if not dsteps or any(isinstance(n, bool) or int(n) != n or int(n) < 1 for n in dsteps):
            raise ValueError(f"objective.dmd_steps must be a non-empty list of positive integers, got {dmd_steps!r}")
        if not 0.0 <= float(shortcut_velocity_below) < 1.0:
            raise ValueError(f"objective.shortcut_velocity_below must be in [0, 1), got {shortcut_velocity_below!r}")
        if shortcut_ode_from is not None:
            if isinstance(shortcut_ode_from, bool) or not 0.0 < float(shortcut_ode_from) <= 1.0:
                raise ValueError(f"objective.shortcut_ode_from must be null or in (0, 1], got {shortcut_ode_from!r}")
            if target != "shortcut" or velocity != "teacher":
                raise ValueError(
                    "objective.shortcut_ode_from gives the long jumps of target=shortcut the teacher's ODE as their "
                    "target: set objective.target=shortcut and objective.velocity=teacher (with init_from=<flow "
                    f".ckpt>), got target={target!r}, velocity={velocity!r}"
                )
        if not float(dmd_fake_lr_scale) > 0.0:
            raise ValueError(f"objective.dmd_fake_lr_scale must be > 0, got {dmd_fake_lr_scale!r}")
        if not float(gan_weight) >= 0.0 or not float(gan_discriminator_weight) > 0.0:
            raise ValueError(
                f"objective.gan_weight must be >= 0 and objective.gan_discriminator_weight > 0, got {gan_weight!r}, "
                f"{gan_discriminator_weight!r}"
            )
        if float(gan_weight) > 0.0 and not float(dmd_weight) > 0.0:
            raise ValueError(
                "objective.gan_weight > 0 puts its discriminator on distribution matching's fake flow: set "
                f"objective.dmd_weight > 0 too (got dmd_weight={dmd_weight!r})"
            )
        if not isinstance(path, AffinePath):
            raise TypeError(f"path must be an AffinePath, got {type(path).__name__}")
        if not isinstance(path.scheduler, CondOTScheduler):
            raise ValueError(
                f"objective=meanflow needs the CondOT path (path=condot, condot_logitnormal, ...), got "
                f"{path.scheduler!r}: the flow map is derived and tested for the linear path only"
            )
        if float(weight_power) < 0.0 or float(weight_eps) <= 0.0:
            raise ValueError(f"weight_power must be >= 0 and weight_eps > 0, got {weight_power}, {weight_eps}")
        if not 0.0 <= float(cfg_kappa) < 1.0:
            raise ValueError(f"cfg_kappa must be in [0, 1), got {cfg_kappa}")
        self.path = path
        self.pairs = TimePairSampler(time_sampler, distinct_fraction, grid_fraction, grid_steps, grid_shift)
        self.weight_power = float(weight_power)
        self.weight_eps = float(weight_eps)
        self.cfg_scale = float(cfg_scale)
        self.cfg_kappa = float(cfg_kappa)
        self.velocity = velocity
        self.target_kind = target
        self.teacher_steps = int(teacher_steps)
        self.dmd_weight = float(dmd_weight)
        self.dmd_times = (times[0], times[1])
        self.dmd_steps = [int(n) for n in dsteps]
        self.dmd_fake_lr_scale = float(dmd_fake_lr_scale)
        self.gan_weight = float(gan_weight)
        self.gan_discriminator_weight = float(gan_discriminator_weight)
        self.gan_times = (adv_times[0], adv_times[1])
        self.shortcut_velocity_below = float(shortcut_velocity_below)
        self.shortcut_ode_from = None if shortcut_ode_from is None else float(shortcut_ode_from)
        self.ode_start = ode_start

    @property
    def distils(self) -> bool:
        """Whether the target's velocity is a teacher flow's (``velocity="teacher"``)."""
        return self.velocity == "teacher"

    @property
    def matches_distribution(self) -> bool:
        """Whether distribution matching is on (``dmd_weight > 0``): the module then trains a fake flow too."""
        return self.dmd_weight > 0.0

    @property
    def adversarial(self) -> bool:
        """Whether DMD2's adversarial term is on (``gan_weight > 0``): the module then trains a discriminator head
        on the fake flow's features too."""
        return self.gan_weight > 0.0

    @property
    def guides(self) -> bool:
        """Whether the target folds in guidance (``cfg_scale != 1`` or ``cfg_kappa != 0``)."""
        return self.cfg_scale != 1.0 or self.cfg_kappa != 0.0

    @property
    def effective_cfg_scale(self) -> float:
        """The CFG scale one evaluation of the trained flow map samples with: ``omega / (1 - kappa)``."""
        return self.cfg_scale / (1.0 - self.cfg_kappa)

    def guided_velocity(
        self, v: Tensor, *, v_uncond: Tensor | None, v_cond: Tensor | None = None, guided: Tensor | None = None
    ) -> Tensor:
        """``omega v + kappa v_cond + (1 - omega - kappa) v_uncond`` on the rows marked ``guided``, ``v`` elsewhere.

        Args:
            v: the path's conditional velocity ``(B, ...)``.
            v_uncond: ``u_theta(z, s, s | null)`` (no gradient); required when :attr:`guides`.
            v_cond: ``u_theta(z, s, s | c)``; required when ``cfg_kappa != 0``.
            guided: bool ``(B,)``: rows whose condition was kept (``None``: all).
        """
        if not self.guides:
            return v
        if v_uncond is None or (self.cfg_kappa != 0.0 and v_cond is None):
            raise ValueError("guided_velocity needs v_uncond (and v_cond when cfg_kappa != 0)")
        out = self.cfg_scale * v + (1.0 - self.cfg_scale - self.cfg_kappa) * v_uncond.detach().to(v.dtype)
        if self.cfg_kappa != 0.0:
            out = out + self.cfg_kappa * v_cond.detach().to(v.dtype)
        if guided is None:
            return out
        return torch.where(_batch_view(guided, v).bool(), out, v)

    def target(self, u_fn: FlowMapFn, z: Tensor, s: Tensor, t: Tensor, v: Tensor) -> FlowMapTarget:
        """:func:`flow_map_target` (``v``: the tangent and the velocity of the target)."""
        return flow_map_target(u_fn, z, s, t, v)

    def ode_target(self, velocity_fn: RowVelocityFn, z: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """:func:`ode_average_velocity` with ``teacher_steps`` (``target="ode"``; ``velocity_fn``: the teacher's
        velocity, guided when :attr:`guides`)."""
        return ode_average_velocity(velocity_fn, z, s, t, self.teacher_steps)

    def trajectory_state(self, velocity_fn: RowVelocityFn, noise: Tensor, s: Tensor) -> Tensor:
        """The teacher's ODE state at ``s`` from ``noise`` at time 0 (``ode_start="teacher"``): ``noise + s u`` with
        ``u`` :func:`ode_average_velocity` over ``[0, s]`` (``ceil(teacher_steps s)`` Heun steps; ``noise`` itself
        where ``s = 0``), without gradient."""
        u = ode_average_velocity(velocity_fn, noise, torch.zeros_like(s), s, self.teacher_steps)
        return noise + _batch_view(s, noise) * u.to(noise.dtype)

    def student_state(self, u_fn: FlowMapFn, noise: Tensor, s: Tensor) -> Tensor:
        """The student's own jump from ``noise`` at time 0 to ``s`` (``ode_start="student"``): ``noise + s u(noise,
        0, s)`` (``noise`` itself where ``s = 0``), without gradient; ``u_fn``: the network being trained."""
        with torch.no_grad():
            u = u_fn(noise, torch.zeros_like(s), s)
        return noise + _batch_view(s, noise) * u.to(noise.dtype)

    def shortcut_target(self, u_fn: FlowMapFn, z: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """:func:`shortcut_average_velocity` (``target="shortcut"``; ``u_fn``: the network being trained), split at
        the midpoint of the grids' shifted time (``grid_shift``)."""
        return shortcut_average_velocity(u_fn, z, s, t, self.shortcut_velocity_below, self.pairs.grid_shift)

    def ode_jumps(self, s: Tensor, t: Tensor) -> Tensor:
        """Which rows of ``target="shortcut"`` take :meth:`ode_target` instead of the half jumps: ``t - s`` at least
        ``shortcut_ode_from`` (up to float rounding of the grid times); none when it is ``None``. The top levels of
        the half-jump chain (the 1- and 2-step jumps at 0.5) then learn the teacher's ODE directly instead of the
        composition of every level below them, which improves last."""
        if self.shortcut_ode_from is None:
            return torch.zeros_like(s, dtype=torch.bool)
        return (t - s) >= self.shortcut_ode_from - 1e-6

    def loss(self, u: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(weighted loss, mse)``: ``mean(w ||u - target||^2)`` with the adaptive weight, and the
        unweighted mean squared error per element (comparable with the flow objective's loss)."""
        delta = (u.float() - target.float()).flatten(1)
        squared = delta.square().sum(dim=1)
        weighted = (adaptive_weight(squared, self.weight_power, self.weight_eps) * squared).mean()
        return weighted, squared.mean().detach() / delta.shape[1]

    def __repr__(self) -> str:
        return (
            f"MeanFlowObjective({self.path!r}, {self.pairs!r}, weight_power={self.weight_power}, "
            f"weight_eps={self.weight_eps}, cfg_scale={self.cfg_scale}, cfg_kappa={self.cfg_kappa}, "
            f"velocity={self.velocity!r}, target={self.target_kind!r}, teacher_steps={self.teacher_steps}, "
            f"dmd_weight={self.dmd_weight}, dmd_times={list(self.dmd_times)}, dmd_steps={self.dmd_steps}, "
            f"dmd_fake_lr_scale={self.dmd_fake_lr_scale}, gan_weight={self.gan_weight}, "
            f"gan_discriminator_weight={self.gan_discriminator_weight}, gan_times={list(self.gan_times)}, "
            f"shortcut_velocity_below={self.shortcut_velocity_below}, "
            f"shortcut_ode_from={self.shortcut_ode_from}, ode_start={self.ode_start!r})"
        )
