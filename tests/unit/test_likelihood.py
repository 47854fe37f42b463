"""Likelihood by the instantaneous change of variables, against closed forms (t = 0 noise, t = 1 data)."""

from __future__ import annotations

import math

import pytest
import torch

from latent_flow.flow.likelihood import (
    bits_per_dim,
    dequantize,
    log_likelihood,
    normalisation_log_det,
    pixel_bits_per_dim,
    standard_normal_logp,
)
from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import CondOTScheduler, VPScheduler


def gaussian_flow(path: AffinePath, mean: torch.Tensor, std: torch.Tensor):
    """Exact marginal velocity of data N(mean, diag(std^2)) under ``path`` (noise N(0, I)).

    x_t ~ N(alpha m, V_t), V_t = alpha^2 s^2 + sigma^2;  E[x_data | x] = m + alpha s^2 (x - alpha m) / V,
    E[x_noise | x] = sigma (x - alpha m) / V, so v = d_alpha m + (d_alpha alpha s^2 + d_sigma sigma) (x - alpha m) / V.
    """

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = path.coefficients(t, x)
        var = c.alpha_t**2 * std**2 + c.sigma_t**2
        return (
            c.d_alpha_t * mean
            + (c.d_alpha_t * c.alpha_t * std**2 + c.d_sigma_t * c.sigma_t) * (x - c.alpha_t * mean) / var
        )

    def marginal_logp(x: torch.Tensor, t: float) -> torch.Tensor:
        c = path.coefficients(torch.full((x.shape[0],), t, dtype=x.dtype), x)
        var = c.alpha_t**2 * std**2 + c.sigma_t**2
        z = (x - c.alpha_t * mean) ** 2 / var
        return -0.5 * (z + torch.log(2 * math.pi * var)).reshape(x.shape[0], -1).sum(1)

    return velocity, marginal_logp


MEAN = torch.tensor([1.5, -0.5], dtype=torch.float64)
STD = torch.tensor([0.5, 1.3], dtype=torch.float64)


def _points(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return MEAN + STD * torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5


def test_exact_divergence_matches_gaussian_closed_form_condot() -> None:
    path = AffinePath(CondOTScheduler())
    velocity, logp_true = gaussian_flow(path, MEAN, STD)
    x = _points()
    logp, nfe = log_likelihood(velocity, x, divergence="exact")
    exact = logp_true(x, 1.0)  # N(MEAN, STD^2) exactly
    assert nfe > 0
    assert (logp - exact).abs().max() / 2 < 1e-3  # nats per dimension
    assert (logp - exact).abs().max() < 1e-4  # in fact much better


def test_vp_path_with_its_exact_prior() -> None:
    """The VP path's t = 0 marginal is not exactly N(0, I) (alpha_0 ~ 6.6e-3): pass it as prior_logp."""
    path = AffinePath(VPScheduler())
    velocity, logp_true = gaussian_flow(path, MEAN, STD)
    x = _points()
    # VP's beta(s) makes the noise end stiff: dopri5 at 1e-5 gives ~7e-4 nats/dim here, 1e-7 gives ~2e-5
    res = log_likelihood(
        velocity, x, divergence="exact", prior_logp=lambda x0: logp_true(x0, 0.0), rtol=1e-7, atol=1e-7
    )
    assert (res.logp - logp_true(x, 1.0)).abs().max() / 2 < 1e-4


def test_hutchinson_agrees_with_exact_within_its_standard_error() -> None:
    path = AffinePath(CondOTScheduler())
    # a field with off-diagonal Jacobian, so that the Hutchinson estimate really varies over probes
    a = torch.tensor([[0.3, 1.1], [-0.7, 0.2]], dtype=torch.float64)

    def velocity(x, t):
        return torch.tanh(x @ a.T) * (1 + t[:, None]) - x

    x = _points(4)
    exact = log_likelihood(velocity, x, divergence="exact")
    for probe in ("rademacher", "gaussian"):
        est = log_likelihood(velocity, x, divergence="hutchinson", probe=probe, num_probes=64, seed=1)
        assert est.logp_probes.shape == (4, 64) and est.standard_error.shape == (4,)
        assert (est.standard_error > 0).all()
        z = (est.logp - exact.logp) / est.standard_error
        assert z.abs().max() < 4.0, (probe, z)
        # exact and estimated trajectories are the same ODE: the same x_0
        torch.testing.assert_close(est.x_noise, exact.x_noise, atol=1e-4, rtol=1e-4)
    del path


def test_hutchinson_probes_are_seeded_per_sample_index() -> None:
    a = torch.tensor([[0.3, 1.1], [-0.7, 0.2]], dtype=torch.float64)

    def velocity(x, t):
        return torch.tanh(x @ a.T) * (1 + t[:, None])

    x = _points(4)
    whole = log_likelihood(velocity, x, divergence="hutchinson", indices=[10, 11, 12, 13], seed=5, rtol=1e-7, atol=1e-7)
    part = log_likelihood(velocity, x[2:], divergence="hutchinson", indices=[12, 13], seed=5, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(part.logp, whole.logp[2:], atol=1e-5, rtol=0)
    other = log_likelihood(velocity, x, divergence="hutchinson", indices=[10, 11, 12, 13], seed=6, rtol=1e-7, atol=1e-7)
    assert not torch.allclose(other.logp, whole.logp)


def test_linear_field_exact_divergence_is_its_trace() -> None:
    """v = A x: div = tr A, x_0 = expm(-A) x_1; log p_1 = log N(x_0) - tr A, with A non-symmetric."""
    a = torch.tensor([[0.2, 0.5, 0.0], [-0.3, -0.4, 0.1], [0.0, 0.2, 0.1]], dtype=torch.float64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = log_likelihood(lambda x, t: x @ a.T, x, divergence="exact", rtol=1e-8, atol=1e-8)
    x0 = x @ torch.linalg.matrix_exp(-a).T
    torch.testing.assert_close(res.x_noise, x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.logp, standard_normal_logp(x0) - torch.trace(a), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.divergence_integral, torch.full((5,), float(torch.trace(a)), dtype=torch.float64))


def test_bits_per_dim_conventions() -> None:
    # a uniform density over the 256 dequantised levels of u8 / 127.5 - 1 is exactly 8 bits/dim
    d = 12
    logp_uniform = d * math.log(127.5 / 256)
    assert pixel_bits_per_dim(logp_uniform, d) == pytest.approx(8.0, abs=1e-12)
    # continuous: N(0, I) in D dims at its mean has -logp = D/2 log(2 pi) nats
    assert bits_per_dim(-0.5 * d * math.log(2 * math.pi), d) == pytest.approx(0.5 * math.log2(2 * math.pi))
    # normalisation z = (y - m) / s per channel: log p_y = log p_z - h w sum log s
    std = torch.tensor([0.5, 2.0, 4.0])
    assert normalisation_log_det(std, 7) == pytest.approx(-7 * math.log(0.5 * 2.0 * 4.0))


def test_normalised_pixel_density_round_trip() -> None:
    """z = (x - m)/s with z ~ N(0, I): log p_x(x) = log p_z(z) + log-det = log N(x; m, s^2) exactly."""
    c, h, w = 3, 2, 2
    mean = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.5, 0.25, 0.8], dtype=torch.float64)
    x = torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = (x - mean) / std[:, None, None]
    logp_x = standard_normal_logp(z) + normalisation_log_det(std, h * w)
    ref = torch.distributions.Normal(mean, std[:, None, None].expand(c, h, w)).log_prob(x).reshape(4, -1).sum(1)
    torch.testing.assert_close(logp_x, ref)


def test_dequantize_stays_within_one_level_and_is_per_index() -> None:
    u8 = torch.randint(0, 256, (4, 3, 5, 5), generator=torch.Generator().manual_seed(0))
    images = u8.float() / 127.5 - 1
    deq = dequantize(images, [0, 1, 2, 3], seed=0)
    back = ((deq + 1) * 127.5).floor()
    assert torch.equal(back.long(), u8)
    torch.testing.assert_close(dequantize(images[2:], [2, 3], seed=0), deq[2:])


def test_invalid_options_raise() -> None:
    v = lambda x, t: -x  # noqa: E731
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(v, x, divergence="trace")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(v, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(v, x, divergence="hutchinson", num_probes=0)
