"""Frechet distance between Gaussians fitted to feature sets (FID / FD-shapes maths).

This module is the single place in latent_flow where the Frechet distance is computed. Every
metric of that family (FID on Inception features, FD-shapes on the shapes oracle's features)
fits a Gaussian ``N(mu, sigma)`` to each feature set and reports

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

(Dowson & Landau 1982; Heusel et al. 2017). Note that, as in the field's convention, the value
is the *squared* distance ``d^2`` (no final square root).

Numerics follow the reference implementation (pytorch-fid / the TTUR code): everything is in
float64; the matrix square root is taken with :func:`scipy.linalg.sqrtm`; if the product is
(nearly) singular and the square root is not finite, ``eps * I`` is added to both covariances
and the square root is retried; a small imaginary part (numerical noise) is discarded, and a
large one (``max |imag diag| > imag_tol``) raises :class:`ValueError`.

Statistics: :func:`gaussian_stats` for a feature matrix held in memory; :class:`RunningStats`
to accumulate features batch by batch (sums and outer-product sums in float64) and to merge
the accumulators of several processes (``merge`` / ``state_dict`` / tensor sums for
``all_reduce``), giving exactly the statistics of the concatenated set.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

__all__ = ["gaussian_stats", "frechet_distance", "RunningStats"]


def _as_float64(features: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, D) array, got shape {arr.shape}")
    return arr


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of ``features`` (N, D), in float64.

    The covariance is the unbiased estimate (divides by ``N - 1``), as ``np.cov`` in the
    reference FID code. ``N >= 2`` is required.
    """
    arr = _as_float64(features)
    if arr.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {arr.shape[0]}")
    mu = arr.mean(axis=0)
    sigma = np.cov(arr, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm(a)`` in its supported form (no ``disp``: deprecated in SciPy 1.16, removed in 1.18).

    ``disp=False`` only added an error estimate to the return value; the square root is the same array.
    """
    out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(
    mu1: np.ndarray | Tensor,
    sigma1: np.ndarray | Tensor,
    mu2: np.ndarray | Tensor,
    sigma2: np.ndarray | Tensor,
    eps: float = 1e-6,
    imag_tol: float = 1e-3,
) -> float:
    """Squared Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2})``, in float64.
    A singular product gets ``eps * I`` added to both covariances (with a warning); an
    imaginary component of the square root larger than ``imag_tol`` raises ``ValueError``.
    """

    def arr(x, ndim):
        if isinstance(x, Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(x, dtype=np.float64)
        return np.atleast_1d(x) if ndim == 1 else np.atleast_2d(x)

    mu1, mu2 = arr(mu1, 1), arr(mu2, 1)
    sigma1, sigma2 = arr(sigma1, 2), arr(sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances {sigma1.shape}, {sigma2.shape} do not match the mean dimension {mu1.shape[0]}")

    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below (non-finite -> eps retry)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"frechet_distance: singular product of covariances; adding {eps} to the diagonal",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=imag_tol):
            raise ValueError(f"frechet_distance: imaginary component {max_imag:.3g} in the matrix square root")
        covmean = covmean.real
    value = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return value


class RunningStats:
    """Streaming mean / covariance of D-dimensional features (float64 sums).

    Keeps ``n``, ``sum`` (D,) and ``sum of outer products`` (D, D); ``add(batch)`` accumulates,
    ``merge(other)`` adds another accumulator (e.g. from another rank), ``stats()`` returns the
    same ``(mu, sigma)`` as :func:`gaussian_stats` of all features added (unbiased covariance).
    For ``torch.distributed``: ``all_reduce`` the tensors of :meth:`tensors` (sum) and rebuild
    with :meth:`from_tensors`.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.n = 0
        self.sum = np.zeros(self.dim, dtype=np.float64)
        self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def add(self, features: Tensor | np.ndarray) -> RunningStats:
        arr = _as_float64(features)
        if arr.shape[1] != self.dim:
            raise ValueError(f"expected features of dimension {self.dim}, got {arr.shape[1]}")
        self.n += arr.shape[0]
        self.sum += arr.sum(axis=0)
        self.outer += arr.T @ arr
        return self

    def merge(self, other: RunningStats) -> RunningStats:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dimension {other.dim} into {self.dim}")
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` in float64 (unbiased covariance; needs ``n >= 2``)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        sigma = (sigma + sigma.T) / 2
        return mu, sigma

    # ------------------------------------------------------------ (de)serialisation / distributed
    def state_dict(self) -> dict:
        return {"dim": self.dim, "n": self.n, "sum": self.sum.copy(), "outer": self.outer.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> RunningStats:
        out = cls(int(state["dim"]))
        out.n = int(state["n"])
        out.sum = np.asarray(state["sum"], dtype=np.float64).copy()
        out.outer = np.asarray(state["outer"], dtype=np.float64).copy()
        return out

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """``(n, sum, outer)`` as float64 tensors, ready for ``dist.all_reduce`` (SUM)."""
        return (
            torch.tensor([float(self.n)], dtype=torch.float64, device=device),
            torch.from_numpy(self.sum.copy()).to(device),
            torch.from_numpy(self.outer.copy()).to(device),
        )

    @classmethod
    def from_tensors(cls, n: Tensor, total: Tensor, outer: Tensor) -> RunningStats:
        out = cls(int(total.shape[0]))
        out.n = int(round(float(n.reshape(-1)[0])))
        out.sum = total.detach().to("cpu", torch.float64).numpy().copy()
        out.outer = outer.detach().to("cpu", torch.float64).numpy().copy()
        return out

    def __repr__(self) -> str:
        return f"RunningStats(dim={self.dim}, n={self.n})"
