"""Euler-Maruyama SDE sampling from a velocity, and the score on the path (t = 0 noise, t = 1 data)."""

from __future__ import annotations

import math

import pytest
import torch

from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import CondOTScheduler, VPScheduler
from latent_flow.sampling import EulerMaruyamaSolver, EulerSolver, build_solver
from latent_flow.sampling.noise import IndexedNoiseStream, noise_for_indices

MEAN = torch.tensor([1.5, -0.5], dtype=torch.float64)
STD = torch.tensor([0.5, 1.3], dtype=torch.float64)
PATHS = {"condot": AffinePath(CondOTScheduler()), "vp": AffinePath(VPScheduler())}


def gaussian_velocity(path: AffinePath, mean=MEAN, std=STD):
    """Exact marginal velocity of data N(mean, diag(std^2)) under ``path`` (noise N(0, I))."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = path.coefficients(t, x)
        var = c.alpha_t**2 * std.to(x.dtype) ** 2 + c.sigma_t**2
        m = mean.to(x.dtype)
        return (
            c.d_alpha_t * m
            + (c.d_alpha_t * c.alpha_t * std.to(x.dtype) ** 2 + c.d_sigma_t * c.sigma_t) * (x - c.alpha_t * m) / var
        )

    return velocity


@pytest.mark.parametrize("name", ["condot", "vp"])
def test_score_from_velocity_matches_the_gaussian_closed_form(name) -> None:
    path = PATHS[name]
    v = gaussian_velocity(path)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for t in (0.0, 0.05, 0.3, 0.7, 0.99):
        tb = torch.full((7,), t, dtype=torch.float64)
        c = path.coefficients(tb, x)
        var = c.alpha_t**2 * STD**2 + c.sigma_t**2
        exact = -(x - c.alpha_t * MEAN) / var  # grad log N(x; alpha m, V)
        torch.testing.assert_close(path.velocity_to_score(x, v(x, tb), tb), exact, rtol=1e-9, atol=1e-9)


def test_condot_score_is_t_v_minus_x_over_one_minus_t() -> None:
    path = PATHS["condot"]
    x, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.8], dtype=torch.float64)
    ref = (t[:, None] * v - x) / (1 - t[:, None])
    torch.testing.assert_close(path.velocity_to_score(x, v, t), ref)


def test_zero_diffusion_is_the_odes_euler_bit_for_bit() -> None:
    v = gaussian_velocity(PATHS["condot"])
    x0 = noise_for_indices(range(6), (2,), seed=3, dtype=torch.float64)
    for grid, shift in (("uniform", 1.0), ("shifted", 3.0)):
        ode = EulerSolver(steps=9, time_grid=grid, shift=shift).sample(v, x0)
        sde = EulerMaruyamaSolver(steps=9, diffusion=0.0, time_grid=grid, shift=shift).sample(v, x0)
        assert torch.equal(ode.x, sde.x) and sde.nfe == ode.nfe == 9
    # also when built by name without a path (diffusion 0 needs no score)
    assert torch.equal(
        build_solver("euler_maruyama", steps=9, diffusion=0).sample(v, x0).x, EulerSolver(steps=9).sample(v, x0).x
    )


@pytest.mark.filterwarnings("ignore:sampler=euler_maruyama:RuntimeWarning")  # the constant form is capped
@pytest.mark.parametrize("name, form, w", [("condot", "sigma", 1.0), ("condot", "constant", 0.5), ("vp", "sigma", 1.0)])
def test_sde_samples_have_the_datas_mean_and_covariance(name, form, w) -> None:
    path = PATHS[name]
    n, steps = 4000, 200
    x0 = noise_for_indices(range(n), (2,), seed=0, dtype=torch.float64)
    solver = EulerMaruyamaSolver(steps=steps, diffusion=w, diffusion_form=form, path=path)
    res = solver.sample(gaussian_velocity(path), x0, noise_indices=range(n), noise_seed=0)
    assert res.nfe == steps
    x = res.x
    mean, var = x.mean(0), x.var(0)
    se_mean = STD / math.sqrt(n)
    se_var = STD**2 * math.sqrt(2 / (n - 1))
    assert ((mean - MEAN).abs() < 4 * se_mean).all(), (mean, MEAN)
    assert ((var - STD**2).abs() < 4 * se_var).all(), (var, STD**2)
    corr = torch.corrcoef(x.T)[0, 1]
    assert corr.abs() < 4 / math.sqrt(n)
    # the noise changes the samples (it is an SDE), but not their law
    ode = EulerSolver(steps=steps).sample(gaussian_velocity(path), x0)
    assert (ode.x - x).abs().mean() > 0.05


def test_per_step_noise_is_seeded_per_sample_index() -> None:
    path = PATHS["condot"]
    v = gaussian_velocity(path)
    idx = [4, 9, 2, 7, 11, 0]
    x0 = noise_for_indices(idx, (2,), seed=1, dtype=torch.float64)
    solver = EulerMaruyamaSolver(steps=12, diffusion=1.0, path=path)
    whole = solver.sample(v, x0, noise_indices=idx, noise_seed=1).x
    a = solver.sample(v, x0[:2], noise_indices=idx[:2], noise_seed=1).x
    b = solver.sample(v, x0[2:], noise_indices=idx[2:], noise_seed=1).x
    assert torch.equal(torch.cat([a, b]), whole)
    rev = solver.sample(v, x0.flip(0), noise_indices=idx[::-1], noise_seed=1).x
    assert torch.equal(rev.flip(0), whole)
    other_seed = solver.sample(v, x0, noise_indices=idx, noise_seed=2).x
    assert not torch.allclose(other_seed, whole)
    # the step noise is a stream apart from the initial noise of the same index and seed
    first = IndexedNoiseStream(idx, (2,), seed=1).draw(dtype=torch.float64)
    assert not torch.allclose(first, x0)
    with pytest.raises(ValueError, match="stream"):
        IndexedNoiseStream(idx, (2,), seed=1, stream=0)


def test_sample_latents_passes_path_and_indices_any_batch_split_same_samples() -> None:
    from latent_flow.training.module import LatentFlowModule

    torch.manual_seed(0)
    model = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[4, 8, 8],
        num_classes=3,
    )
    solver = build_solver("euler_maruyama", steps=4, diffusion=1.0)  # no path: the model passes its own
    labels = torch.tensor([0, 1, 2, 0])
    whole = model.sample_latents(solver, indices=range(4), labels=labels, cfg_scale=2.0, seed=5)
    assert whole.nfe == 4
    parts = [
        model.sample_latents(solver, indices=range(lo, lo + 2), labels=labels[lo : lo + 2], cfg_scale=2.0, seed=5).x
        for lo in (0, 2)
    ]
    torch.testing.assert_close(torch.cat(parts), whole.x, rtol=1e-5, atol=1e-5)
    ode = model.sample_latents(build_solver("euler", steps=4), indices=range(4), labels=labels, cfg_scale=2.0, seed=5)
    assert not torch.allclose(ode.x, whole.x)


def test_invalid_options_and_missing_path_raise() -> None:
    with pytest.raises(ValueError, match="diffusion"):
        EulerMaruyamaSolver(steps=3, diffusion=-1.0)
    with pytest.raises(ValueError, match="diffusion_form"):
        EulerMaruyamaSolver(steps=3, diffusion_form="cosine")
    with pytest.raises(ValueError, match="unknown option"):
        build_solver("euler_maruyama", steps=3, noise=1.0)
    with pytest.raises(ValueError, match="needs the path"):
        EulerMaruyamaSolver(steps=3).sample(lambda x, t: -x, torch.zeros(2, 2))


# ------------------------------------------------------------------ stability near the data end
NARROW_MEAN = torch.tensor([2.0], dtype=torch.float64)
NARROW_STD = torch.tensor([0.01], dtype=torch.float64)


def _narrow_samples(form: str, w: float, steps: int, name: str = "condot", n: int = 2000) -> torch.Tensor:
    """Samples of data N(2, 0.01^2) by Euler-Maruyama with the exact velocity."""
    path = PATHS[name]
    x0 = noise_for_indices(range(n), (1,), seed=0, dtype=torch.float64)
    solver = EulerMaruyamaSolver(steps=steps, diffusion=w, diffusion_form=form, path=path)
    return solver.sample(gaussian_velocity(path, NARROW_MEAN, NARROW_STD), x0, noise_indices=range(n)).x


@pytest.mark.parametrize("steps", [50, 200])
def test_the_constant_form_is_stabilised_on_narrow_data_with_a_warning(steps) -> None:
    """Uncapped, the constant form's std was 0.41 (50 steps) and 150 (200 steps) for data of std 0.01."""
    with pytest.warns(RuntimeWarning, match=r"gain h\*g\(t\)\^2/\(2 sigma_t\^2\) of up to .* capped"):
        x = _narrow_samples("constant", 1.0, steps)
    assert torch.isfinite(x).all()
    assert abs(float(x.mean()) - 2.0) < 0.005
    assert 0.005 < float(x.std()) < 0.02, float(x.std())


def test_the_sigma_form_at_the_default_diffusion_needs_no_cap() -> None:
    import warnings

    path = PATHS["condot"]
    for steps in (10, 50, 200):
        used, gains = EulerMaruyamaSolver(steps=steps, diffusion=1.0, path=path).step_diffusion()
        # h w / (2 sigma_t) on a uniform CondOT grid: w / 4 at the second-to-last step, the largest
        assert max(gains) == pytest.approx(0.25) and gains[-1] == 0.0 and used[-1] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = _narrow_samples("sigma", 1.0, 200)
    assert 0.005 < float(x.std()) < 0.02


@pytest.mark.parametrize(
    "name, form, w", [("condot", "constant", 1.0), ("condot", "sigma", 8.0), ("vp", "constant", 4.0)]
)
def test_any_form_above_the_gain_limit_is_capped_there_and_only_there(name, form, w) -> None:
    from latent_flow.sampling.sde import MAX_GAIN

    path = PATHS[name]
    solver = EulerMaruyamaSolver(steps=50, diffusion=w, diffusion_form=form, path=path)
    used, gains = solver.step_diffusion()
    ts = solver.grid().tolist()
    assert max(gains) > MAX_GAIN  # the requested diffusion is unstable somewhere
    for i, (g2, gain) in enumerate(zip(used[:-1], gains[:-1])):
        h = ts[i + 1] - ts[i]
        sigma = float(path.scheduler(torch.tensor([ts[i]], dtype=torch.float64)).sigma_t)
        requested = solver.diffusion_squared(ts[i])
        if gain <= MAX_GAIN:
            assert g2 == requested
        else:
            assert g2 < requested and h * g2 / (2 * sigma**2) == pytest.approx(MAX_GAIN)
    with pytest.warns(RuntimeWarning, match=f"diffusion_form={form}"):
        x = _narrow_samples(form, w, 50, name)
    assert torch.isfinite(x).all() and float(x.std()) < 0.1
