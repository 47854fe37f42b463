"""Tests of latent_flow.flow: schedulers, affine paths, time samplers.

Convention under test: t in [0, 1], t = 0 noise, t = 1 data;
x_t = alpha_t x_data + sigma_t x_noise, target = d/dt x_t.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from latent_flow.flow import (
    AffinePath,
    CondOTScheduler,
    LogitNormalTimeSampler,
    PathSample,
    SchedulerOutput,
    UniformTimeSampler,
    VPScheduler,
    build_scheduler,
    build_time_sampler,
)

SHAPES = [(5,), (5, 3), (5, 3, 4, 4)]
SCHEDULERS = {
    "condot": lambda: CondOTScheduler(),
    "condot_smin": lambda: CondOTScheduler(sigma_min=1e-2),
    "vp": lambda: VPScheduler(),
    "vp_custom": lambda: VPScheduler(beta_min=0.5, beta_max=10.0),
}
T_VALUES = [0.0, 0.1, 0.37, 0.5, 0.9, 1.0]


def _vp_reference(t: float, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[float, float, float, float]:
    """Closed form of the Lipman et al. VP path, written independently with math."""
    s = 1.0 - t
    T = beta_min * s + 0.5 * (beta_max - beta_min) * s * s
    dT = beta_min + (beta_max - beta_min) * s
    a = math.exp(-T / 2)
    sigma = math.sqrt(1.0 - a * a)
    d_alpha = a * dT / 2
    d_sigma = -a * d_alpha / sigma if sigma > 0 else float("nan")
    return a, sigma, d_alpha, d_sigma


def _data(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_noise = torch.randn(shape, generator=g, dtype=dtype)
    x_data = torch.randn(shape, generator=g, dtype=dtype) * 0.7 + 0.3
    return x_noise, x_data


# ----------------------------------------------------------------------------- schedulers
@pytest.mark.parametrize("sigma_min", [0.0, 1e-5, 0.1])
def test_condot_closed_form(sigma_min: float) -> None:
    t = torch.tensor(T_VALUES, dtype=torch.float64)
    out = CondOTScheduler(sigma_min)(t)
    assert isinstance(out, SchedulerOutput)
    torch.testing.assert_close(out.alpha_t, t)
    torch.testing.assert_close(out.sigma_t, 1.0 - (1.0 - sigma_min) * t)
    torch.testing.assert_close(out.d_alpha_t, torch.ones_like(t))
    torch.testing.assert_close(out.d_sigma_t, torch.full_like(t, -(1.0 - sigma_min)))
    for c in (out.alpha_t, out.sigma_t, out.d_alpha_t, out.d_sigma_t):
        assert c.shape == t.shape and c.dtype == t.dtype


def test_vp_closed_form() -> None:
    t = torch.tensor(T_VALUES[:-1], dtype=torch.float64)  # t = 1 checked separately (d_sigma singular)
    out = VPScheduler()(t)
    ref = torch.tensor([_vp_reference(v) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(out.alpha_t, ref[:, 0])
    torch.testing.assert_close(out.sigma_t, ref[:, 1])
    torch.testing.assert_close(out.d_alpha_t, ref[:, 2])
    torch.testing.assert_close(out.d_sigma_t, ref[:, 3])
    # variance preserving: alpha^2 + sigma^2 = 1
    torch.testing.assert_close(out.alpha_t**2 + out.sigma_t**2, torch.ones_like(t))


def test_vp_endpoints_and_guard() -> None:
    for dtype in (torch.float32, torch.float64):
        out = VPScheduler()(torch.tensor([0.0, 1.0], dtype=dtype))
        # t = 1 is pure data
        assert out.alpha_t[1].item() == 1.0 and out.sigma_t[1].item() == 0.0
        # t = 0 is almost pure noise: alpha_0 = exp(-(beta_min + beta_max) / 4)
        assert out.alpha_t[0].item() == pytest.approx(math.exp(-(0.1 + 20.0) / 4), rel=1e-6)
        for c in (out.alpha_t, out.sigma_t, out.d_alpha_t, out.d_sigma_t):
            assert torch.isfinite(c).all()
        # clamped denominator: d_sigma(1) = -alpha d_alpha / min_sigma = -(beta_min / 2) / min_sigma
        assert out.d_sigma_t[1].item() == pytest.approx(-0.05 / 1e-6, rel=1e-5)


def test_scheduler_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        CondOTScheduler(sigma_min=1.0)
    with pytest.raises(ValueError):
        CondOTScheduler(sigma_min=-0.1)
    with pytest.raises(ValueError):
        VPScheduler(beta_min=5.0, beta_max=1.0)
    with pytest.raises(TypeError):
        CondOTScheduler()(torch.tensor([0, 1]))


def test_build_scheduler() -> None:
    assert isinstance(build_scheduler("condot"), CondOTScheduler)
    assert build_scheduler("condot", sigma_min=1e-5).sigma_min == 1e-5
    vp = build_scheduler("vp", beta_min=0.2, beta_max=10.0)
    assert isinstance(vp, VPScheduler) and vp.beta_max == 10.0
    with pytest.raises(ValueError, match="unknown scheduler 'cosine'.*condot.*vp"):
        build_scheduler("cosine")
    with pytest.raises(ValueError, match=r"sigma_mn.*valid options.*sigma_min"):
        build_scheduler("condot", sigma_mn=0.1)
    with pytest.raises(ValueError, match="sigma_min"):
        build_scheduler("vp", sigma_min=0.1)


# ----------------------------------------------------------------------------- path
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_path_sample_matches_closed_form(name: str, shape: tuple[int, ...]) -> None:
    scheduler = SCHEDULERS[name]()
    path = AffinePath(scheduler)
    x_noise, x_data = _data(shape)
    t = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    ps = path.sample(x_noise, x_data, t)
    assert isinstance(ps, PathSample)
    assert ps.x_t.shape == shape and ps.target.shape == shape and ps.t.shape == (shape[0],)
    c = scheduler(t)
    view = (-1,) + (1,) * (len(shape) - 1)
    expected_xt = c.alpha_t.view(view) * x_data + c.sigma_t.view(view) * x_noise
    expected_target = c.d_alpha_t.view(view) * x_data + c.d_sigma_t.view(view) * x_noise
    torch.testing.assert_close(ps.x_t, expected_xt)
    torch.testing.assert_close(ps.target, expected_target)
    # per-sample check against scalar maths (no broadcasting involved)
    for i, ti in enumerate(t.tolist()):
        if name.startswith("condot"):
            smin = scheduler.sigma_min
            a, s = ti, 1.0 - (1.0 - smin) * ti
            da, ds = 1.0, -(1.0 - smin)
        else:
            a, s, da, ds = _vp_reference(ti, scheduler.beta_min, scheduler.beta_max)
        torch.testing.assert_close(ps.x_t[i], a * x_data[i] + s * x_noise[i])
        if not math.isnan(ds):
            torch.testing.assert_close(ps.target[i], da * x_data[i] + ds * x_noise[i])


@pytest.mark.parametrize("shape", SHAPES)
def test_condot_endpoints_are_pure(shape: tuple[int, ...]) -> None:
    path = AffinePath(CondOTScheduler(sigma_min=0.0))
    x_noise, x_data = _data(shape)
    b = shape[0]
    ps0 = path.sample(x_noise, x_data, torch.zeros(b, dtype=torch.float64))
    ps1 = path.sample(x_noise, x_data, torch.ones(b, dtype=torch.float64))
    assert torch.equal(ps0.x_t, x_noise)  # t = 0: pure noise
    assert torch.equal(ps1.x_t, x_data)  # t = 1: pure data
    torch.testing.assert_close(ps0.target, x_data - x_noise)
    # with sigma_min > 0, t = 1 keeps sigma_min noise
    ps1m = AffinePath(CondOTScheduler(sigma_min=0.01)).sample(x_noise, x_data, torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(ps1m.x_t, x_data + 0.01 * x_noise)
    # VP: t = 1 is pure data too
    ps1vp = AffinePath(VPScheduler()).sample(x_noise, x_data, torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(ps1vp.x_t, x_data)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_target_is_time_derivative(name: str, shape: tuple[int, ...]) -> None:
    path = AffinePath(SCHEDULERS[name]())
    x_noise, x_data = _data(shape)
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
    h = 1e-6
    fd = (path.sample(x_noise, x_data, t + h).x_t - path.sample(x_noise, x_data, t - h).x_t) / (2 * h)
    target = path.sample(x_noise, x_data, t).target
    torch.testing.assert_close(fd, target, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_converter_round_trips(name: str, shape: tuple[int, ...]) -> None:
    path = AffinePath(SCHEDULERS[name]())
    x_noise, x_data = _data(shape)
    t = torch.tensor([0.02, 0.25, 0.5, 0.75, 0.98], dtype=torch.float64)
    ps = path.sample(x_noise, x_data, t)
    v = ps.target
    torch.testing.assert_close(path.velocity_to_data(ps.x_t, v, t), x_data)
    torch.testing.assert_close(path.velocity_to_noise(ps.x_t, v, t), x_noise)
    torch.testing.assert_close(path.data_to_velocity(ps.x_t, x_data, t), v)
    torch.testing.assert_close(path.noise_to_velocity(ps.x_t, x_noise, t), v)
    # composition: velocity -> data -> velocity and velocity -> noise -> velocity
    torch.testing.assert_close(path.data_to_velocity(ps.x_t, path.velocity_to_data(ps.x_t, v, t), t), v)
    torch.testing.assert_close(path.noise_to_velocity(ps.x_t, path.velocity_to_noise(ps.x_t, v, t), t), v)


def test_path_dtype_scalar_time_and_validation() -> None:
    path = AffinePath(CondOTScheduler())
    x_noise, x_data = _data((4, 2, 3, 3), dtype=torch.float32)
    ps = path.sample(x_noise, x_data, torch.rand(4))
    assert ps.x_t.dtype == torch.float32 and ps.target.dtype == torch.float32
    # a 0-d time is expanded to the batch
    ps_scalar = path.sample(x_noise, x_data, torch.tensor(0.25))
    ps_vec = path.sample(x_noise, x_data, torch.full((4,), 0.25))
    torch.testing.assert_close(ps_scalar.x_t, ps_vec.x_t)
    with pytest.raises(ValueError):
        path.sample(x_noise, x_data, torch.rand(3))
    with pytest.raises(ValueError):
        path.sample(x_noise, x_data[:, :1], torch.rand(4))
    with pytest.raises(TypeError):
        AffinePath("condot")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- time samplers
def test_uniform_time_sampler() -> None:
    sampler = UniformTimeSampler()
    t = sampler(20000, "cpu", torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert (t >= 0).all() and (t <= 1).all()
    assert abs(t.mean().item() - 0.5) < 0.01
    assert abs(t.median().item() - 0.5) < 0.02
    t_a = sampler(16, "cpu", torch.Generator().manual_seed(3))
    t_b = sampler(16, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(t_a, t_b)
    assert sampler(0, "cpu").shape == (0,)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-1.0, 1.0), (0.5, 0.5)])
def test_logit_normal_time_sampler(mean: float, std: float) -> None:
    sampler = LogitNormalTimeSampler(mean=mean, std=std)
    t = sampler(20000, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert (t > 0).all() and (t < 1).all()
    expected_median = 1.0 / (1.0 + math.exp(-mean))
    assert abs(t.median().item() - expected_median) < 0.02
    logits = torch.logit(t.double())
    assert abs(logits.mean().item() - mean) < 0.03
    assert abs(logits.std().item() - std) < 0.03


def test_logit_normal_default_median_and_reproducibility() -> None:
    sampler = LogitNormalTimeSampler()
    t = sampler(20000, "cpu", torch.Generator().manual_seed(2))
    assert abs(t.median().item() - 0.5) < 0.02
    assert torch.equal(
        sampler(8, "cpu", torch.Generator().manual_seed(5)), sampler(8, "cpu", torch.Generator().manual_seed(5))
    )
    with pytest.raises(ValueError):
        LogitNormalTimeSampler(std=0.0)


def test_build_time_sampler() -> None:
    assert isinstance(build_time_sampler("uniform"), UniformTimeSampler)
    ln = build_time_sampler("logit_normal", mean=-0.5, std=2.0)
    assert isinstance(ln, LogitNormalTimeSampler) and ln.mean == -0.5 and ln.std == 2.0
    with pytest.raises(ValueError, match="unknown time sampler 'beta'.*logit_normal.*uniform"):
        build_time_sampler("beta")
    with pytest.raises(ValueError, match=r"\['mean'\].*uniform"):
        build_time_sampler("uniform", mean=0.0)
    with pytest.raises(ValueError, match=r"sd.*valid options.*mean.*std"):
        build_time_sampler("logit_normal", sd=1.0)


def test_the_noise_shifted_logit_normal_configs_comment_states_its_median_and_mode() -> None:
    """conf/path/condot_logitnormal_noise.yaml once called sigmoid(-0.5) = 0.38 the mode; it is the median."""
    import re

    import yaml

    from latent_flow.cli.run import CONFIG_DIR

    text = (Path(CONFIG_DIR) / "path" / "condot_logitnormal_noise.yaml").read_text()
    mean, std = yaml.safe_load(text)["time_sampler"]["mean"], 1.0  # std from condot_logitnormal
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    # the median of sigmoid(mean + std z) is sigmoid(mean); check it on the project's own sampler too
    t = LogitNormalTimeSampler(mean=mean, std=std)(200_000, "cpu", torch.Generator().manual_seed(0)).double()
    median = 1.0 / (1.0 + math.exp(-mean))
    assert abs(t.median().item() - median) < 0.005
    # the mode: the maximum of the density exp(-(logit t - mean)^2 / (2 std^2)) / (t (1 - t)), on a fine grid
    grid = torch.linspace(1e-6, 1 - 1e-6, 1_000_001, dtype=torch.float64)
    log_density = -((torch.logit(grid) - mean) ** 2) / (2 * std**2) - torch.log(grid * (1 - grid))
    mode = grid[log_density.argmax()].item()
    assert abs(mode - 0.2815) < 1e-4 and abs(median - 0.3775) < 1e-4
    stated_median = re.search(r"median (?:is )?t = (?:sigmoid\([^)]*\) = )?([0-9.]+)", comment)
    stated_mode = re.search(r"mode (?:is )?t = (?:sigmoid\([^)]*\) = )?([0-9.]+)", comment)
    assert stated_median and stated_mode, comment
    assert float(stated_median.group(1)) == pytest.approx(median, abs=0.005)
    assert float(stated_mode.group(1)) == pytest.approx(mode, abs=0.005)
