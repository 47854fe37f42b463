"""The Frechet distance maths (evaluation/frechet.py): closed forms, no deprecated scipy calls."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from latent_flow.evaluation.frechet import frechet_distance, gaussian_stats


def _spd(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


@pytest.mark.parametrize("d", [1, 3, 16])
def test_frechet_distance_of_known_gaussians_matches_the_closed_form_without_warnings(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    sigma = _spd(d, d + 1)
    c = 2.25  # sigma2 = c sigma1 commutes with sigma1: (sigma1 sigma2)^{1/2} = sqrt(c) sigma1
    expected = float(np.sum((mu1 - mu2) ** 2) + (1 - np.sqrt(c)) ** 2 * np.trace(sigma))
    diag1, diag2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)  # diagonal: sum (sqrt s1 - sqrt s2)^2
    expected_diag = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(diag1) - np.sqrt(diag2)) ** 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DeprecationWarning of scipy's sqrtm(disp=...) included
        value = frechet_distance(mu1, sigma, mu2, c * sigma)
        value_diag = frechet_distance(mu1, np.diag(diag1), mu2, np.diag(diag2))
        same = frechet_distance(mu1, sigma, mu1, sigma)
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert value_diag == pytest.approx(expected_diag, rel=1e-10, abs=1e-10)
    assert abs(same) < 1e-8


def test_singular_covariances_give_a_finite_distance_without_deprecation_warnings():
    feats = np.random.default_rng(0).normal(size=(5, 8))  # 5 samples in 8 dimensions: rank-4 covariance
    mu, sigma = gaussian_stats(feats)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        value = frechet_distance(mu, sigma, mu + 1.0, sigma)
    assert np.isfinite(value) and value == pytest.approx(8.0, abs=1e-2)
    assert not [w for w in record if issubclass(w.category, DeprecationWarning)], [str(w.message) for w in record]
