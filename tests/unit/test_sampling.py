"""Tests of latent_flow.sampling: solvers, time grids, guidance, NFE counting.

Convention under test: solvers integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latent_flow.flow import AffinePath, CondOTScheduler
from latent_flow.sampling import (
    Dopri5Solver,
    EulerSolver,
    GuidedVelocity,
    HeunSolver,
    MidpointSolver,
    NFECounter,
    SampleResult,
    build_solver,
    classifier_free_guidance,
    shift_time,
    time_grid,
)

FIXED = {"euler": (EulerSolver, 1), "heun": (HeunSolver, 2), "midpoint": (MidpointSolver, 2)}
EXPECTED_ORDER = {"euler": 1.0, "heun": 2.0, "midpoint": 2.0}

X0 = torch.tensor([[1.0, -0.5], [2.0, 0.25], [-1.5, 3.0]], dtype=torch.float64)
RATE = 1.5


def exp_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = a x, x(1) = x(0) exp(a)."""
    assert t.shape == (x.shape[0],)
    return RATE * x


def cos_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Time-dependent: dx/dt = cos(t) x, x(1) = x(0) exp(sin 1)."""
    assert t.shape == (x.shape[0],)
    return torch.cos(t)[:, None] * x


ODES = {
    "exp": (exp_velocity, lambda x0, t: x0 * math.exp(RATE * t)),
    "cos": (cos_velocity, lambda x0, t: x0 * math.exp(math.sin(t))),
}


def _error(solver, f, exact) -> float:
    r = solver.sample(f, X0)
    return (r.x - exact(X0, 1.0)).abs().max().item()


# ----------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("ode", sorted(ODES))
@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_step_convergence_order(name: str, ode: str) -> None:
    f, exact = ODES[ode]
    errors = [_error(build_solver(name, steps=n), f, exact) for n in (32, 64, 128)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    expected = EXPECTED_ORDER[name]
    for order in orders:
        assert abs(order - expected) < 0.15, (name, ode, errors, orders)
    # second-order methods are much more accurate than Euler at the same step count
    if expected == 2.0:
        assert errors[-1] < 1e-3


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_step_convergence_order_on_shifted_grid(name: str) -> None:
    f, exact = ODES["exp"]
    errors = [_error(build_solver(name, steps=n, time_grid="shifted", shift=3.0), f, exact) for n in (64, 128)]
    order = math.log2(errors[0] / errors[1])
    assert abs(order - EXPECTED_ORDER[name]) < 0.15, (name, errors, order)


@pytest.mark.parametrize("name", sorted(FIXED))
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_fixed_step_exact_nfe(name: str, steps: int) -> None:
    cls, per_step = FIXED[name]
    solver = cls(steps=steps)
    counter = NFECounter(exp_velocity)
    r = solver.sample(counter, X0)
    assert isinstance(r, SampleResult)
    assert r.nfe == per_step * steps == counter.count == solver.expected_nfe
    assert r.trajectory is None and r.times is None


def test_single_steps_match_formulas() -> None:
    """One step of each method against its textbook formula (t-dependent field)."""

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * t)[:, None] + x * t[:, None]

    x, h = X0, 1.0
    t0 = torch.zeros(3, dtype=torch.float64)
    t1 = torch.ones(3, dtype=torch.float64)
    d1 = f(x, t0)
    euler = x + h * d1
    heun = x + h * (d1 + f(x + h * d1, t1)) / 2
    midpoint = x + h * f(x + h / 2 * d1, t0 + h / 2)
    torch.testing.assert_close(EulerSolver(1).sample(f, x).x, euler)
    torch.testing.assert_close(HeunSolver(1).sample(f, x).x, heun)
    torch.testing.assert_close(MidpointSolver(1).sample(f, x).x, midpoint)


def test_scalar_time_is_expanded_and_dtype_follows_state() -> None:
    seen: list[torch.Tensor] = []

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    x = torch.zeros(4, 2, 3, 3)
    for solver in (EulerSolver(2), HeunSolver(2), MidpointSolver(2), Dopri5Solver()):
        seen.clear()
        r = solver.sample(f, x)
        assert r.x.shape == x.shape and r.x.dtype == x.dtype
        assert seen and all(t.shape == (4,) and t.dtype == torch.float32 for t in seen)
    seen.clear()
    EulerSolver(4).sample(f, x)
    assert [t[0].item() for t in seen] == [0.0, 0.25, 0.5, 0.75]


def test_velocity_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        EulerSolver(2).sample(lambda x, t: x[:, :1], X0)


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_step_trajectory(name: str) -> None:
    solver = build_solver(name, steps=5, time_grid="shifted", shift=2.0)
    r = solver.sample(exp_velocity, X0, return_trajectory=True)
    assert r.trajectory is not None and r.times is not None
    assert len(r.trajectory) == 6 and r.times.shape == (6,)
    torch.testing.assert_close(r.times, time_grid(5, "shifted", 2.0))
    assert torch.equal(r.trajectory[0], X0)
    assert torch.equal(r.trajectory[-1], r.x)
    # intermediate states are close to the exact solution at the grid times
    for xt, t in zip(r.trajectory, r.times.tolist()):
        torch.testing.assert_close(xt, X0 * math.exp(RATE * t), rtol=0.2, atol=0.0)


# ----------------------------------------------------------------------------- dopri5
@pytest.mark.parametrize("ode", sorted(ODES))
def test_dopri5_accuracy_and_counted_nfe(ode: str) -> None:
    f, exact = ODES[ode]
    counter = NFECounter(f)
    r = Dopri5Solver().sample(counter, X0)  # default atol = rtol = 1e-5
    rel = ((r.x - exact(X0, 1.0)).abs() / exact(X0, 1.0).abs()).max().item()
    assert rel < 1e-5
    assert r.nfe == counter.count > 0
    r_tight = Dopri5Solver(atol=1e-8, rtol=1e-8).sample(f, X0)
    assert (r_tight.x - exact(X0, 1.0)).abs().max().item() < 1e-6
    assert r_tight.nfe > r.nfe


def test_dopri5_float32_and_trajectory() -> None:
    x0 = X0.float()
    r = Dopri5Solver().sample(exp_velocity, x0, return_trajectory=True)
    assert r.x.dtype == torch.float32
    assert r.trajectory is not None and len(r.trajectory) == 2
    torch.testing.assert_close(r.times, torch.tensor([0.0, 1.0]))
    assert torch.equal(r.trajectory[0], x0)
    torch.testing.assert_close(r.x, x0 * math.exp(RATE), rtol=1e-4, atol=1e-5)

    solver = Dopri5Solver(atol=1e-7, rtol=1e-7, trajectory_times=[0.5, 0.25, 0.0, 1.0])
    r = solver.sample(exp_velocity, X0, return_trajectory=True)
    assert r.times.tolist() == [0.0, 0.25, 0.5, 1.0]
    assert len(r.trajectory) == 4
    for xt, t in zip(r.trajectory, r.times.tolist()):
        torch.testing.assert_close(xt, X0 * math.exp(RATE * t), rtol=1e-5, atol=1e-6)
    # without return_trajectory the extra times are not reported
    assert solver.sample(exp_velocity, X0).trajectory is None


def test_dopri5_max_num_steps() -> None:
    with pytest.raises(RuntimeError, match="max_num_steps"):
        Dopri5Solver(atol=1e-10, rtol=1e-10, max_num_steps=2).sample(cos_velocity, X0)


# ----------------------------------------------------------------------------- grad mode
def test_no_grad_default_and_opt_in_gradients() -> None:
    a = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return a * x

    with torch.enable_grad():
        r = EulerSolver(4).sample(f, X0)
    assert not r.x.requires_grad  # default no_grad=True
    r = EulerSolver(4).sample(f, X0, no_grad=False)
    assert r.x.requires_grad
    r.x.sum().backward()
    # x(1) = x0 (1 + a/4)^4  ->  d/da sum = sum(x0) (1 + a/4)^3
    expected = X0.sum().item() * (1 + 0.8 / 4) ** 3
    assert a.grad is not None and a.grad.item() == pytest.approx(expected)
    with torch.no_grad():
        assert not EulerSolver(2).sample(f, X0, no_grad=False).x.requires_grad


# ----------------------------------------------------------------------------- time grids
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_time_grids(steps: int) -> None:
    uniform = time_grid(steps)
    assert uniform.shape == (steps + 1,) and uniform.dtype == torch.float64
    torch.testing.assert_close(uniform, torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    torch.testing.assert_close(time_grid(steps, "shifted", 1.0), uniform)
    for shift in (0.5, 3.0):
        g = time_grid(steps, "shifted", shift)
        assert g[0].item() == 0.0 and g[-1].item() == 1.0
        assert (g[1:] > g[:-1]).all()
        if steps > 1:
            inner, u_inner = g[1:-1], uniform[1:-1]
            if shift > 1:  # points move towards noise (t = 0): small steps near noise
                assert (inner < u_inner).all()
                assert g[1] - g[0] < g[-1] - g[-2]
            else:
                assert (inner > u_inner).all()


def test_shift_formula() -> None:
    u = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_time(u, 3.0), u / (u + 3.0 * (1 - u)))
    assert shift_time(torch.tensor(0.5, dtype=torch.float64), 3.0).item() == pytest.approx(0.25)
    # consistent with SD3's shift in the reversed convention: sigma' = s sigma / (1 + (s - 1) sigma), t = 1 - sigma
    sigma = 1 - u
    torch.testing.assert_close(1 - shift_time(u, 3.0), 3.0 * sigma / (1 + 2.0 * sigma))


def test_time_grid_validation() -> None:
    with pytest.raises(ValueError):
        time_grid(0)
    with pytest.raises(ValueError, match="cosine"):
        time_grid(4, "cosine")
    with pytest.raises(ValueError):
        time_grid(4, "shifted", 0.0)
    with pytest.raises(ValueError, match="shift"):
        time_grid(4, "uniform", 2.0)


# ----------------------------------------------------------------------------- build_solver
def test_build_solver() -> None:
    assert isinstance(build_solver("euler", steps=3), EulerSolver)
    assert isinstance(build_solver("Heun", steps=3, time_grid="shifted", shift=2.0), HeunSolver)
    assert isinstance(build_solver("midpoint", steps=3), MidpointSolver)
    d = build_solver("dopri5", atol=1e-6, rtol=1e-4)
    assert isinstance(d, Dopri5Solver) and d.atol == 1e-6 and d.rtol == 1e-4
    with pytest.raises(ValueError, match=r"unknown solver 'rk4'.*dopri5.*euler.*heun.*midpoint"):
        build_solver("rk4", steps=4)
    with pytest.raises(ValueError, match=r"\['step'\].*valid options.*steps.*time_grid.*shift"):
        build_solver("euler", step=4)
    with pytest.raises(ValueError, match=r"\['steps'\].*dopri5.*atol.*rtol"):
        build_solver("dopri5", steps=4)
    with pytest.raises(ValueError, match="requires.*steps"):
        build_solver("heun")
    with pytest.raises(ValueError, match=r"flowturbo needs the trained model.*build_model_solver"):
        build_solver("flowturbo", schedule="H1P5R3")
    with pytest.raises(ValueError):
        build_solver("euler", steps=0)
    with pytest.raises(ValueError, match="time_grid"):
        build_solver("euler", steps=4, time_grid="cosine")
    with pytest.raises(ValueError):
        build_solver("dopri5", atol=-1.0)


# ----------------------------------------------------------------------------- guidance
class TinyCondNet(nn.Module):
    """Deterministic per-sample conditional velocity net (float64)."""

    def __init__(self, dim: int = 6, num_classes: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(dim, dim).double()
        self.emb = nn.Embedding(num_classes + 1, dim).double()  # last row = null class
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return torch.tanh(self.lin(x)) * (1 + t[:, None]) + self.emb(cond["y"]) * t[:, None] + cond["w"]


def _guidance_inputs(batch: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 6, generator=g, dtype=torch.float64)
    t = torch.rand(batch, generator=g, dtype=torch.float64)
    cond = {"y": torch.tensor([0, 1, 2, 3, 1][:batch]), "w": torch.randn(batch, 6, generator=g, dtype=torch.float64)}
    null = {"y": torch.full((batch,), 4), "w": torch.zeros(batch, 6, dtype=torch.float64)}
    return x, t, cond, null


def test_guidance_scale_one_is_conditional_single_call() -> None:
    net = TinyCondNet()
    x, t, cond, null = _guidance_inputs()
    v = classifier_free_guidance(net, cond, null, 1.0)
    out = v(x, t)
    assert net.calls == [5]
    assert v.model_calls == 1 and v.forward_samples == 5 and v.samples_per_row == 1
    net.calls.clear()
    torch.testing.assert_close(out, net(x, t, cond))


@pytest.mark.parametrize("scale", [0.0, 1.5, 4.0, -0.5])
def test_batched_guidance_equals_two_passes(scale: float) -> None:
    net = TinyCondNet()
    x, t, cond, null = _guidance_inputs()
    v = classifier_free_guidance(net, cond, null, scale)
    assert isinstance(v, GuidedVelocity)
    out = v(x, t)
    assert net.calls == [10]  # one batched call of 2B samples
    assert v.model_calls == 1 and v.forward_samples == 10 and v.samples_per_row == 2
    v_c, v_u = net(x, t, cond), net(x, t, null)
    torch.testing.assert_close(out, v_u + scale * (v_c - v_u))
    if scale == 0.0:
        torch.testing.assert_close(out, v_u)


def test_guidance_broadcasts_null_cond_and_validates() -> None:
    net = TinyCondNet()
    x, t, cond, null = _guidance_inputs()
    null1 = {"y": torch.tensor([4]), "w": torch.zeros(1, 6, dtype=torch.float64)}
    out = classifier_free_guidance(net, cond, null1, 2.0)(x, t)
    ref = classifier_free_guidance(net, cond, null, 2.0)(x, t)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="same keys"):
        classifier_free_guidance(net, cond, {"y": null["y"]}, 2.0)
    with pytest.raises(ValueError, match="batch"):
        classifier_free_guidance(net, {"y": cond["y"][:3], "w": cond["w"][:3]}, null, 2.0)(x, t)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guided_sampling_nfe_equals_model_calls(scale: float) -> None:
    net = TinyCondNet()
    x, _, cond, null = _guidance_inputs()
    v = classifier_free_guidance(net, cond, null, scale)
    r = HeunSolver(steps=6).sample(v, x)
    assert r.nfe == 12 == v.model_calls == len(net.calls)
    assert v.forward_samples == 12 * 5 * (1 if scale == 1.0 else 2)
    v.reset()
    r = Dopri5Solver(atol=1e-4, rtol=1e-4).sample(v, x)
    assert r.nfe == v.model_calls


# ----------------------------------------------------------------------------- flow-matching sanity
def _gaussian_marginal_velocity(mu: float, s: float):
    """Exact CondOT (sigma_min = 0) marginal velocity for data N(mu, s^2), noise N(0, 1).

    x_t ~ N(t mu, var_t), var_t = t^2 s^2 + (1 - t)^2; the linear field that keeps this
    Gaussian is v = mu + (d/dt log sqrt(var_t)) (x - t mu) = mu + (t s^2 - (1 - t)) / var_t (x - t mu).
    """

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x.dim() - 1)))
        var = t**2 * s**2 + (1 - t) ** 2
        return mu + (t * s**2 - (1 - t)) / var * (x - t * mu)

    return v


def test_marginal_velocity_matches_posterior_mean_of_target() -> None:
    """E[u_t | x_t] through the path's converter equals the closed form (checks path + formula)."""
    mu, s = 1.5, 0.5
    path = AffinePath(CondOTScheduler())
    v = _gaussian_marginal_velocity(mu, s)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    for tv in (0.1, 0.5, 0.9):
        t = torch.full((7,), tv, dtype=torch.float64)
        var = tv**2 * s**2 + (1 - tv) ** 2
        e_data = mu + tv * s**2 / var * (x - tv * mu)  # Gaussian posterior mean of x_data given x_t
        torch.testing.assert_close(path.data_to_velocity(x, e_data, t), v(x, t))


def test_heun_transports_noise_to_gaussian_data() -> None:
    mu, s = 1.5, 0.5
    g = torch.Generator().manual_seed(0)
    x_noise = torch.randn(5000, 2, generator=g, dtype=torch.float64)
    r = HeunSolver(steps=50).sample(_gaussian_marginal_velocity(mu, s), x_noise)
    assert r.nfe == 100
    # the exact flow map is x_noise -> mu + s x_noise
    torch.testing.assert_close(r.x, mu + s * x_noise, rtol=0, atol=1e-3)
    assert abs(r.x.mean().item() - mu) < 0.02
    assert abs(r.x.std().item() - s) < 0.02
