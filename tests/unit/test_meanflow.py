"""The flow-map (MeanFlow) objective in closed form: a Gaussian flow whose average velocity is known.

Data ``x_data ~ N(mu, diag(sd^2))``, noise ``N(0, I)``, the CondOT path ``x_tau = tau x_data + (1 - tau) x_noise``
(t = 0 noise, t = 1 data). The marginal at ``tau`` is ``N(tau mu, diag(sig(tau)^2))`` with
``sig(tau)^2 = tau^2 sd^2 + (1 - tau)^2``; each coordinate's ODE trajectory keeps its standardised value,
``z_tau = tau mu + sig(tau) eps``, so

    v(z, tau)   = mu + sig'(tau) / sig(tau) * (z - tau mu),          sig' = (tau sd^2 - (1 - tau)) / sig,
    u(z, s, t)  = (z_t - z_s) / (t - s) = mu + (sig(t) / sig(s) - 1) / (t - s) * (z - s mu).
"""

from __future__ import annotations

import math

import pytest
import torch

from latent_flow.flow.meanflow import (
    MeanFlowObjective,
    TimePairSampler,
    adaptive_weight,
    flow_map_target,
    ode_average_velocity,
    shortcut_average_velocity,
)
from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import CondOTScheduler, VPScheduler
from latent_flow.flow.time_sampling import LogitNormalTimeSampler, UniformTimeSampler
from latent_flow.sampling import FlowMapSolver, build_solver, time_grid

DTYPE = torch.float64
MU = torch.tensor([1.5, -2.0, 0.5, 3.0], dtype=DTYPE)
SD = torch.tensor([0.5, 2.0, 0.1, 1.0], dtype=DTYPE)


def _col(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (z.dim() - 1)))


def sig(tau: torch.Tensor) -> torch.Tensor:
    """Marginal standard deviation ``(B, D)`` of the Gaussian flow at ``tau`` ``(B, 1)``."""
    return torch.sqrt(tau**2 * SD**2 + (1 - tau) ** 2)


def exact_velocity(z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    tau = _col(tau, z)
    s = sig(tau)
    d_sig = (tau * SD**2 - (1 - tau)) / s
    return MU + d_sig / s * (z - tau * MU)


def exact_average_velocity(z: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``u(z, s, t)`` (state ``z`` at ``s``, landing at ``t``); the velocity where ``t = s``."""
    s_, t_ = _col(s, z), _col(t, z)
    gap = t_ - s_
    safe = torch.where(gap == 0, torch.ones_like(gap), gap)
    avg = MU + (sig(t_) / sig(s_) - 1) / safe * (z - s_ * MU)
    return torch.where(gap == 0, exact_velocity(z, s), avg)


def _states(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=DTYPE) * 0.9 + 0.05
    b = torch.rand(n, generator=g, dtype=DTYPE) * 0.9 + 0.05
    s, t = torch.minimum(a, b), torch.maximum(a, b)
    z = _col(s, MU[None]) * MU + sig(_col(s, MU[None])) * torch.randn(n, MU.numel(), generator=g, dtype=DTYPE)
    return z, s, t


# ----------------------------------------------------------------------------- the closed form itself
def test_the_closed_form_average_velocity_is_the_ode_jump():
    """The test's own maths: ``z_0 + u(z_0, 0, 1)`` is where Heun on the exact velocity lands (and ``mu + sd z_0``)."""
    z0 = torch.randn(6, MU.numel(), dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    one = torch.ones(6, dtype=DTYPE)
    jump = z0 + exact_average_velocity(z0, 0 * one, one)
    assert torch.allclose(jump, MU + SD * z0, atol=1e-12)
    errors = [(build_solver("heun", steps=n).sample(exact_velocity, z0).x - jump).abs().max() for n in (100, 400)]
    assert errors[1] < 2e-5 and errors[0] / errors[1] > 10  # Heun converges to the jump at second order
    # and on inner intervals: classic RK4 from s to t
    z, s, t = _states(3, seed=2)
    x, n = z.clone(), 200
    h = (t - s) / n
    for k in range(n):
        tau = s + k * h
        k1 = exact_velocity(x, tau)
        k2 = exact_velocity(x + _col(h / 2, x) * k1, tau + h / 2)
        k3 = exact_velocity(x + _col(h / 2, x) * k2, tau + h / 2)
        k4 = exact_velocity(x + _col(h, x) * k3, tau + h)
        x = x + _col(h / 6, x) * (k1 + 2 * k2 + 2 * k3 + k4)
    assert torch.allclose(z + _col(t - s, z) * exact_average_velocity(z, s, t), x, atol=1e-8)


# ----------------------------------------------------------------------------- the identity and the target
def test_the_exact_average_velocity_is_the_fixed_point_of_the_target():
    z, s, t = _states(64)
    out = flow_map_target(exact_average_velocity, z, s, t, exact_velocity(z, s))
    assert torch.allclose(out.u, exact_average_velocity(z, s, t), atol=0)
    assert (out.target - out.u).abs().max() < 1e-10  # zero residual
    # the paper's sign (its time runs the other way) is wrong here: the residual is large
    wrong = exact_velocity(z, s) - _col(t - s, z) * out.dudt
    assert (wrong - out.u).abs().max() > 0.1


def test_the_jvp_is_the_derivative_along_the_flow():
    """``dudt`` = d/ds u(z_s, s, t) along the trajectory: a central difference moving z with the flow."""
    z, s, t = _states(8, seed=3)
    out = flow_map_target(exact_average_velocity, z, s, t, exact_velocity(z, s))
    eps = 1e-6
    # the trajectory through z at s, in closed form: standardised value fixed
    eps_std = (z - _col(s, z) * MU) / sig(_col(s, z))

    def on_path(tau):
        return _col(tau, z) * MU + sig(_col(tau, z)) * eps_std

    fd = (
        exact_average_velocity(on_path(s + eps), s + eps, t) - exact_average_velocity(on_path(s - eps), s - eps, t)
    ) / (2 * eps)
    assert torch.allclose(out.dudt, fd, rtol=1e-6, atol=1e-7)


def test_equal_times_give_the_flow_matching_target():
    z, s, _ = _states(16, seed=4)
    v = torch.randn_like(z)
    out = flow_map_target(exact_average_velocity, z, s, s, v)
    assert torch.equal(out.target, v)  # (t - s) = 0: the velocity itself, bit for bit
    assert torch.allclose(out.u, exact_velocity(z, s), atol=1e-14)


def test_the_conditional_target_is_unbiased():
    """With the path's *conditional* velocity (drawn from p(x_data | z_s)), the targets average to the exact u."""
    torch.manual_seed(5)
    z1, s1, t1 = _states(1, seed=5)
    n = 40000
    z, s, t = z1.expand(n, -1), s1.expand(n), t1.expand(n)
    s_ = s1.item()
    # x_data | z_s is Gaussian: mean mu + k (z - s mu), variance sd^2 (1 - s k), k = s sd^2 / sig(s)^2
    k = s_ * SD**2 / sig(torch.tensor([[s_]], dtype=DTYPE)) ** 2
    mean = MU + k * (z - s_ * MU)
    x_data = mean + torch.sqrt(SD**2 * (1 - s_ * k)) * torch.randn(n, MU.numel(), dtype=DTYPE)
    x_noise = (z - s_ * x_data) / (1 - s_)
    path = AffinePath(CondOTScheduler())
    sample = path.sample(x_noise, x_data, s)
    assert torch.allclose(sample.x_t, z, atol=1e-12)
    out = flow_map_target(exact_average_velocity, z, s, t, sample.target)
    err = out.target.mean(0) - exact_average_velocity(z1, s1, t1)[0]
    stderr = out.target.std(0) / math.sqrt(n)
    assert (err.abs() < 5 * stderr).all(), (err, stderr)
    # a biased target (the velocity alone) is refuted by the same test
    assert ((sample.target.mean(0) - exact_average_velocity(z1, s1, t1)[0]).abs() > 5 * stderr).any()


# ----------------------------------------------------------------------------- sampling with the exact map
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_flow_map_steps_land_on_the_flow_endpoint(steps):
    z0 = torch.randn(32, MU.numel(), dtype=DTYPE, generator=torch.Generator().manual_seed(6))
    calls = []

    def flow_map_fn(x, t, t_end):
        calls.append((t.clone(), t_end.clone()))
        return exact_average_velocity(x, t, t_end)

    result = FlowMapSolver(steps).sample(flow_map_fn, z0, return_trajectory=True)
    assert result.nfe == steps == len(calls)
    assert torch.allclose(result.x, MU + SD * z0, atol=1e-12)
    # every jump starts where the last one ended, on the uniform grid
    grid = torch.linspace(0, 1, steps + 1, dtype=DTYPE)
    for k, (t, t_end) in enumerate(calls):
        assert torch.allclose(t, grid[k].expand(32)) and torch.allclose(t_end, grid[k + 1].expand(32))
    # the intermediate states are the flow's marginals at the grid times
    for k, x in enumerate(result.trajectory):
        assert torch.allclose(x, grid[k] * MU + sig(grid[k].reshape(1, 1)) * z0, atol=1e-12)
    # Euler on the instantaneous velocity with the same NFE is far from the endpoint (what the map buys)
    euler = build_solver("euler", steps=steps).sample(exact_velocity, z0)
    assert (euler.x - (MU + SD * z0)).abs().max() > 1e-2


def test_flowmap_is_a_registered_solver():
    solver = build_solver("flowmap", steps=2, time_grid="shifted", shift=3.0)
    assert isinstance(solver, FlowMapSolver) and solver.expected_nfe == 2 and solver.flow_map
    with pytest.raises(ValueError, match="unknown"):
        build_solver("flowmap", steps=2, cfg=1)


# ----------------------------------------------------------------------------- the teacher's ODE as the target
def test_the_ode_target_is_heun_on_each_rows_own_grid_and_converges_at_second_order():
    """``target=ode``: the mean Heun slope over each pair is the exact average velocity up to O(h^2), every row
    gets ``ceil(max_steps (t - s))`` steps (2 evaluations each), and a pair with ``s = t`` is the velocity."""
    z, s, t = _states(48, seed=3)
    s[:4] = t[:4]  # flow-matching pairs
    s[4], t[4] = 0.0, 1.0  # the one-step jump
    z[4] = torch.randn(MU.numel(), generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    exact = exact_average_velocity(z, s, t)
    rows_seen = torch.zeros(48, dtype=torch.long)

    def velocity(x, tau, rows):
        rows_seen.index_add_(0, rows, torch.ones_like(rows))
        return exact_velocity(x, tau)

    errors = []
    for max_steps in (8, 16, 32, 64):
        rows_seen.zero_()
        u = ode_average_velocity(velocity, z, s, t, max_steps)
        errors.append((u - exact).abs().max().item())
        n = torch.ceil((t - s) * max_steps).clamp(min=1).long()
        assert torch.equal(rows_seen[4:], 2 * n[4:]) and (rows_seen[:4] == 1).all()
        assert torch.allclose(u[:4], exact_velocity(z[:4], s[:4]), rtol=0, atol=1e-12)
    assert errors[-1] < 2e-3
    orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert all(1.7 < p < 2.4 for p in orders[1:]), orders
    # the jump 0 -> 1 with max_steps Heun steps is HeunSolver's sample from that noise
    heun = build_solver("heun", steps=16).sample(exact_velocity, z[4:5])
    u_jump = ode_average_velocity(lambda x, tau, rows: exact_velocity(x, tau), z[4:5], s[4:5], t[4:5], 16)
    assert torch.allclose(z[4:5] + u_jump, heun.x, rtol=0, atol=1e-12)
    # a half-precision network (bf16 autocast) is evaluated in bf16, but the states and sums stay in z's dtype
    rounded = ode_average_velocity(lambda x, tau, rows: exact_velocity(x, tau).bfloat16(), z, s, t, 64)
    assert rounded.dtype == DTYPE
    assert (rounded - u).abs().max() < 0.02 * exact.abs().max()
    with pytest.raises(ValueError, match="s <= t"):
        ode_average_velocity(velocity, z, t, s, 4)
    with pytest.raises(ValueError, match="max_steps"):
        ode_average_velocity(velocity, z, s, t, 0)


def test_the_ode_target_needs_a_teacher():
    with pytest.raises(ValueError, match="objective.target=ode .*velocity=teacher"):
        MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), target="ode")
    with pytest.raises(ValueError, match="objective.target must be one of"):
        MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), target="euler")
    with pytest.raises(ValueError, match="teacher_steps"):
        MeanFlowObjective(
            AffinePath(CondOTScheduler()), UniformTimeSampler(), velocity="teacher", target="ode", teacher_steps=0
        )


def test_the_trajectory_state_is_the_ode_solution_from_the_noise():
    """``ode_start=teacher``: the state at ``s`` is the ODE's solution from the noise at 0, ``s mu + sig(s) eps`` on
    the Gaussian flow, up to Heun's second-order error; at ``s = 0`` it is the noise itself, bit for bit.
    ``ode_start=student``: the exact flow map's jump 0 -> s lands there exactly."""
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(32, MU.numel(), generator=g, dtype=DTYPE)
    s = torch.rand(32, generator=g, dtype=DTYPE)
    s[:3] = 0.0
    s[3] = 1.0
    exact = _col(s, noise) * MU + sig(_col(s, noise)) * noise
    errors = []
    for steps in (16, 32, 64):
        objective = MeanFlowObjective(
            AffinePath(CondOTScheduler()), UniformTimeSampler(), velocity="teacher", target="ode",
            teacher_steps=steps, ode_start="teacher",
        )  # fmt: skip
        state = objective.trajectory_state(lambda x, tau, rows: exact_velocity(x, tau), noise, s)
        assert torch.equal(state[:3], noise[:3])
        errors.append((state - exact).abs().max().item())
    assert errors[-1] < 1e-3
    assert all(1.7 < math.log2(a / b) < 2.4 for a, b in zip(errors[:-1], errors[1:])), errors
    with pytest.raises(ValueError, match="ode_start must be one of"):
        MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), ode_start="data")
    # ode_start=student: one jump of the exact flow map from the noise lands on the same solution, exactly
    jumped = objective.student_state(exact_average_velocity, noise, s)
    assert torch.equal(jumped[:3], noise[:3])
    assert torch.allclose(jumped, exact, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="ode_start=teacher .*target=ode"):
        MeanFlowObjective(
            AffinePath(CondOTScheduler()), UniformTimeSampler(), velocity="teacher", target="shortcut",
            ode_start="teacher",
        )  # fmt: skip


# ----------------------------------------------------------------------------- self-distillation by half jumps
def test_the_exact_flow_map_is_the_fixed_point_of_the_half_jumps():
    """``target=shortcut``: two exact half jumps are the exact jump (the semigroup property), at s = t the target is
    the velocity; a flow map that is wrong by a term growing with the interval is corrected toward the exact one."""
    z, s, t = _states(64, seed=7)
    s[:3] = t[:3]
    s[3], t[3] = 0.0, 1.0
    calls = []

    def exact(x, a, b):
        calls.append((a.clone(), b.clone()))
        return exact_average_velocity(x, a, b)

    target = shortcut_average_velocity(exact, z, s, t)
    assert torch.allclose(target, exact_average_velocity(z, s, t), rtol=0, atol=1e-12)
    assert torch.allclose(target[:3], exact_velocity(z[:3], s[:3]), rtol=0, atol=1e-12)
    (a1, b1), (a2, b2) = calls  # two evaluations: s -> m, then m -> t from the half jump's landing state
    assert torch.allclose(b1, (s + t) / 2) and torch.equal(a1, s) and torch.equal(a2, b1) and torch.equal(b2, t)

    # a map with an error (t - s)^2 c: its halves carry 2 (gap / 2)^2 c / 2 = gap^2 c / 4 less error than itself (up
    # to the landing state's shift), so repeated regression on the halves contracts the error toward zero
    c = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=DTYPE)

    def wrong(x, a, b):
        return exact_average_velocity(x, a, b) + _col(b - a, x) ** 2 * c

    exact_u = exact_average_velocity(z, s, t)
    err_map = (wrong(z, s, t) - exact_u)[3]
    err_target = (shortcut_average_velocity(wrong, z, s, t) - exact_u)[3]
    assert torch.allclose(err_map, c) and err_target.abs().max() < 0.5 * err_map.abs().max()
    with pytest.raises(ValueError, match="s <= t"):
        shortcut_average_velocity(exact, z, t, s)
    # the base case: halves shorter than velocity_below are two Euler half steps of the velocity
    gap = t - s
    below = 0.25
    short = (gap / 2 < below) & (gap > 0)
    assert 0 < int(short.sum()) < 60
    based = shortcut_average_velocity(exact_average_velocity, z, s, t, velocity_below=below)
    h = _col(gap / 2, z)
    v0 = exact_velocity(z, s)
    euler = 0.5 * (v0 + exact_velocity(z + h * v0, (s + t) / 2))
    assert torch.allclose(based[short], euler[short], rtol=0, atol=1e-12)
    assert torch.allclose(based[~short], exact_average_velocity(z, s, t)[~short], rtol=0, atol=1e-12)
    assert (based[short] - exact_average_velocity(z, s, t)[short]).abs().max() > 1e-4  # Euler's error, not exact
    objective = MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), target="shortcut")
    assert objective.target_kind == "shortcut" and objective.shortcut_velocity_below == 1 / 128
    assert torch.equal(
        objective.shortcut_target(exact_average_velocity, z, s, t),
        shortcut_average_velocity(exact_average_velocity, z, s, t, velocity_below=1 / 128),
    )
    with pytest.raises(ValueError, match="shortcut_velocity_below"):
        MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), shortcut_velocity_below=-0.1)


def test_half_jumps_on_shifted_grids_split_at_the_finer_grids_point():
    """``shift``: a jump of the shifted n-step grid splits at the shifted 2n-step grid's point between its ends (two
    jumps the pair sampler trains with ``grid_shift``), the unequal halves weighted by their lengths: still the
    exact jump for the exact flow map; each half shorter than ``velocity_below`` takes the velocity on its own."""
    z, _, _ = _states(6, seed=3)
    fine = time_grid(8, "shifted", 2.0)  # float64: the grids of 4 and 8 steps share every other point
    s, t = fine[0:8:2].clone(), fine[2:9:2].clone()
    s, t = torch.cat([s, torch.tensor([0.3], dtype=DTYPE)]), torch.cat([t, torch.tensor([0.3], dtype=DTYPE)])
    s, t = torch.cat([s, torch.tensor([0.0], dtype=DTYPE)]), torch.cat([t, torch.tensor([1.0], dtype=DTYPE)])
    calls = []

    def exact(x, a, b):
        calls.append((a.clone(), b.clone()))
        return exact_average_velocity(x, a, b)

    target = shortcut_average_velocity(exact, z, s, t, shift=2.0)
    assert torch.allclose(target, exact_average_velocity(z, s, t), rtol=0, atol=1e-12)
    (a1, b1), (a2, b2) = calls
    assert torch.allclose(b1[:4], fine[1:8:2], rtol=0, atol=1e-12)  # the 8-step grid's odd points
    assert b1[5].item() == pytest.approx(1 / 3) and torch.equal(a2, b1) and torch.equal(b2, t)
    assert b1[4].item() == pytest.approx(0.3)  # s = t: the velocity
    # the plain midpoint is not exact here... (unequal halves averaged 50 / 50 would be wrong for a curved map)
    with torch.no_grad():
        assert (b1[:4] - (s[:4] + t[:4]) / 2).abs().max() > 1e-2
    # base case per half: with shift 4 the first half of [0, 1] (to 1/5) is shorter than 0.25, the second is not
    calls.clear()
    one = torch.zeros(1, dtype=DTYPE), torch.ones(1, dtype=DTYPE)
    shortcut_average_velocity(exact, z[:1], *one, velocity_below=0.25, shift=4.0)
    (a1, b1), (a2, b2) = calls
    assert b1.item() == 0.0 and a2.item() == pytest.approx(0.2) and b2.item() == 1.0
    with pytest.raises(ValueError, match="shift must be > 0"):
        shortcut_average_velocity(exact, z[:1], *one, shift=0.0)
    # the objective splits at its pair sampler's grid shift
    objective = MeanFlowObjective(
        AffinePath(CondOTScheduler()), UniformTimeSampler(), target="shortcut", grid_fraction=0.25, grid_shift=2.0
    )
    calls.clear()
    objective.shortcut_target(exact, z[:1], *one)
    assert calls[0][1].item() == pytest.approx(1 / 3)


def test_the_ode_jumps_of_the_shortcut_target_are_the_long_ones():
    """``shortcut_ode_from``: the jumps at least that long (the grid's 0.5 included despite float rounding) take
    the teacher's ODE; without it none; it needs the half jumps and a teacher, and a length in (0, 1]."""
    path, times = AffinePath(CondOTScheduler()), UniformTimeSampler()
    hybrid = MeanFlowObjective(path, times, target="shortcut", velocity="teacher", shortcut_ode_from=0.5)
    s = torch.tensor([0.0, 0.5, 0.25, 0.0, 0.3, 0.7])
    t = torch.tensor([1.0, 1.0, 0.5, 0.25, 0.8 - 1e-8, 0.7])
    assert hybrid.ode_jumps(s, t).tolist() == [True, True, False, False, True, False]
    plain = MeanFlowObjective(path, times, target="shortcut", velocity="teacher")
    assert not plain.ode_jumps(s, t).any()
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="shortcut_ode_from must be null or in"):
            MeanFlowObjective(path, times, target="shortcut", velocity="teacher", shortcut_ode_from=bad)
    for target, velocity in (("shortcut", "path"), ("jvp", "teacher"), ("ode", "teacher")):
        with pytest.raises(ValueError, match="set objective.target=shortcut and objective.velocity=teacher"):
            MeanFlowObjective(path, times, target=target, velocity=velocity, shortcut_ode_from=0.5)


def test_grid_pairs_are_the_jumps_of_the_flowmap_samplers_grids():
    pairs = TimePairSampler(UniformTimeSampler(), 0.75, grid_fraction=1.0, grid_steps=[1, 2, 4])
    s, t = pairs(6000, generator=torch.Generator().manual_seed(0))
    jumps = {(round(a, 6), round(b, 6)) for a, b in zip(s.tolist(), t.tolist())}
    expected = {(k / n, (k + 1) / n) for n in (1, 2, 4) for k in range(n)}
    assert jumps == expected  # every jump of steps=1, 2, 4 and nothing else
    one_step = ((s == 0) & (t == 1)).float().mean().item()
    assert abs(one_step - 1 / 3) < 0.03  # n uniform over grid_steps
    # a share of grid pairs; the other pairs come from the time sampler as before
    mixed = TimePairSampler(UniformTimeSampler(), 1.0, grid_fraction=0.25, grid_steps=[1])
    s, t = mixed(20000, generator=torch.Generator().manual_seed(1))
    share = ((s == 0) & (t == 1)).float().mean().item()
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 20000)
    for bad in ([], [0, 2], [1.5]):
        with pytest.raises(ValueError, match="grid_steps"):
            TimePairSampler(UniformTimeSampler(), 0.5, grid_fraction=0.5, grid_steps=bad)
    with pytest.raises(ValueError, match="grid_fraction"):
        TimePairSampler(UniformTimeSampler(), 0.5, grid_fraction=-0.1)


def test_shifted_grid_pairs_are_the_jumps_of_the_shifted_sampling_grids():
    """``grid_shift``: the jumps of ``sampler.time_grid=shifted`` (``time_grid``, the samplers' own grids) and no
    other; the 2-step midpoint moves to 1 / (1 + shift)."""
    pairs = TimePairSampler(UniformTimeSampler(), 0.0, grid_fraction=1.0, grid_steps=[1, 2, 4], grid_shift=2.0)
    s, t = pairs(6000, generator=torch.Generator().manual_seed(0))
    jumps = {(a, b) for a, b in zip(s.tolist(), t.tolist())}
    expected = set()
    for n in (1, 2, 4):
        grid = time_grid(n, "shifted", 2.0).float().tolist()
        expected |= set(zip(grid[:-1], grid[1:]))
    assert jumps == expected  # exactly, in float32
    assert sorted(b for a, b in jumps if a == 0.0) == pytest.approx([1 / 7, 1 / 3, 1.0])  # n = 4, 2, 1
    with pytest.raises(ValueError, match="grid_shift must be > 0"):
        TimePairSampler(UniformTimeSampler(), 0.5, grid_fraction=0.5, grid_shift=0.0)


# ----------------------------------------------------------------------------- time pairs, weighting, guidance
def test_time_pairs_are_ordered_with_the_requested_share_of_distinct_pairs():
    pairs = TimePairSampler(LogitNormalTimeSampler(0.4, 1.0), distinct_fraction=0.25)
    g = torch.Generator().manual_seed(0)
    s, t = pairs(20000, generator=g)
    assert s.shape == t.shape == (20000,) and s.dtype == torch.float32
    assert (s <= t).all() and (s > 0).all() and (t < 1).all()
    share = (s < t).float().mean().item()
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 20000)
    # the flow-matching pairs keep the smaller (noisier) draw: their times sit below the distinct pairs' ends
    assert s[s == t].mean() < t[s < t].mean()
    s2, t2 = pairs(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, s2) and torch.equal(t, t2)
    s0, t0 = TimePairSampler(UniformTimeSampler(), 0.0)(100)
    assert torch.equal(s0, t0)
    s1, t1 = TimePairSampler(UniformTimeSampler(), 1.0)(100)
    assert (s1 < t1).all()
    with pytest.raises(ValueError, match="distinct_fraction"):
        TimePairSampler(UniformTimeSampler(), 1.5)


def test_adaptive_weighting_with_power_one_is_the_gradient_of_the_log():
    delta = torch.tensor([0.01, 1.0, 30.0], dtype=DTYPE, requires_grad=True)
    squared = delta**2
    (adaptive_weight(squared, 1.0, 1e-3) * squared).sum().backward()
    grad = delta.grad.clone()
    delta.grad = None
    torch.log(delta**2 + 1e-3).sum().backward()
    assert torch.allclose(grad, delta.grad)
    assert torch.equal(adaptive_weight(squared, 0.0, 1e-3), torch.ones(3, dtype=DTYPE))
    assert not adaptive_weight(squared, 1.0).requires_grad


def test_the_loss_weights_each_sample_by_its_own_error():
    objective = MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler())
    u = torch.zeros(2, 3, 4, requires_grad=True)
    target = torch.stack([torch.full((3, 4), 0.1), torch.full((3, 4), 10.0)])
    loss, mse = objective.loss(u, target)
    squared = torch.tensor([12 * 0.01, 12 * 100.0])
    assert torch.allclose(loss, (squared / (squared + 1e-3)).mean())
    assert torch.allclose(mse, squared.mean() / 12)
    loss.backward()
    # both samples pull with a gradient of the same order despite errors 100x apart (log-like weighting)
    g = u.grad.flatten(1).norm(dim=1)
    assert 0.05 < (g[0] / g[1]).item() < 200
    plain = MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), weight_power=0.0)
    assert torch.allclose(plain.loss(u, target)[0], squared.mean())


def test_guidance_folded_into_the_velocity():
    objective = MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), cfg_scale=3.0, cfg_kappa=0.5)
    assert objective.guides and objective.effective_cfg_scale == 6.0
    v, vu, vc = torch.full((3, 2), 1.0), torch.full((3, 2), 2.0), torch.full((3, 2), 4.0)
    kept = torch.tensor([True, False, True])
    out = objective.guided_velocity(v, v_uncond=vu, v_cond=vc, guided=kept)
    expected = 3.0 * 1.0 + 0.5 * 4.0 + (1 - 3.0 - 0.5) * 2.0
    assert torch.allclose(out[0], torch.full((2,), expected)) and torch.allclose(out[2], out[0])
    assert torch.equal(out[1], v[1])  # a dropped condition keeps the plain conditional velocity
    # the fixed point: u(c) = omega v + kappa u(c) + (1 - omega - kappa) u(null) gives CFG scale omega / (1 - kappa)
    w = objective.effective_cfg_scale
    u_c = w * 1.0 + (1 - w) * 2.0
    fixed = objective.guided_velocity(v, v_uncond=vu, v_cond=torch.full((3, 2), u_c))
    assert torch.allclose(fixed, torch.full((3, 2), u_c))
    plain = MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler())
    assert not plain.guides and plain.guided_velocity(v, v_uncond=None) is v
    with pytest.raises(ValueError, match="v_uncond"):
        objective.guided_velocity(v, v_uncond=None)


def test_the_objective_refuses_other_paths():
    with pytest.raises(ValueError, match="CondOT"):
        MeanFlowObjective(AffinePath(VPScheduler()), UniformTimeSampler())


# ----------------------------------------------------------------------------- a tiny training run
def test_a_small_network_learns_the_gaussian_flow_map():
    """An MLP u(z, s, t) trained with the objective on 2-D Gaussian data approaches the exact map."""
    torch.manual_seed(0)
    mu, sd = torch.tensor([2.0, -1.0]), torch.tensor([0.3, 0.6])
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)
    )

    def u_fn(z, s, t):
        return net(torch.cat([z, s[:, None], (t - s)[:, None]], dim=1))

    def exact_u(z, s, t):  # the module's closed form with this test's mu, sd (float32)
        sig2 = lambda tau: torch.sqrt(tau**2 * sd**2 + (1 - tau) ** 2)  # noqa: E731
        return mu + (sig2(t[:, None]) / sig2(s[:, None]) - 1) / (t - s)[:, None] * (z - s[:, None] * mu)

    objective = MeanFlowObjective(AffinePath(CondOTScheduler()), UniformTimeSampler(), distinct_fraction=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    z_test = torch.randn(512, 2, generator=g)
    zero, one = torch.zeros(512), torch.ones(512)

    def one_step_error():
        with torch.no_grad():
            return (z_test + u_fn(z_test, zero, one) - (mu + sd * z_test)).square().mean().item()

    def map_error():
        s = torch.full((512,), 0.2)
        t = torch.full((512,), 0.9)
        z = 0.2 * mu + torch.sqrt(0.04 * sd**2 + 0.64) * z_test
        with torch.no_grad():
            return (u_fn(z, s, t) - exact_u(z, s, t)).square().mean().item()

    before, before_map = one_step_error(), map_error()
    losses = []
    for _ in range(400):
        x_data = mu + sd * torch.randn(256, 2)
        x_noise = torch.randn(256, 2)
        s, t = objective.pairs(256)
        sample = objective.path.sample(x_noise, x_data, s)
        out = objective.target(u_fn, sample.x_t, s, t, sample.target)
        loss, mse = objective.loss(out.u, out.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mse.item())
    after, after_map = one_step_error(), map_error()
    assert sum(losses[-50:]) < 0.5 * sum(losses[:50])
    assert after < 0.1 * before, (before, after)
    assert after_map < 0.1 * before_map, (before_map, after_map)
