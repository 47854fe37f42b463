"""FID, KID, Inception Score and precision / recall in one feature space.

One feature extractor embeds both image sets; the metrics are computed from the features:

* FID: Frechet distance of Gaussian fits (``evaluation.frechet``, the one place for that maths);
* KID: unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged over subsets
  (Binkowski et al. 2018);
* precision / recall: the k-nearest-neighbour manifold estimate of Kynkaanniemi et al. (2019):
  precision = share of generated features inside the real manifold (union of real k-NN balls),
  recall = share of real features inside the generated manifold;
* Inception Score: ``exp(E_x KL(p(y|x) || p(y)))`` from the extractor's class logits, when it has them.

These are the maths on feature sets; :mod:`latent_flow.evaluation.feature_metrics` wraps them as
``torchmetrics.Metric`` s (states summed / gathered across ranks), the path the training callback and
``latent_flow.evaluate`` take.

The default extractor is the standard FID Inception-v3 (``evaluation.inception``: the TF
2015-12-05 network bundled in ``latent-flow[fid]``, torch-fidelity's preprocessing): nothing is
downloaded at run time. ``feature_extractor=`` takes any ``nn.Module`` mapping
images in [0, 1] to ``(B, D)`` features instead (e.g. the shapes oracle's trunk).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from latent_flow.evaluation.inception import INCEPTION_WEIGHTS_FILE, InceptionFeatures, InceptionWeightsMissingError

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "InceptionFeatures",
    "InceptionWeightsMissingError",
    "IS_UNAVAILABLE",
    "compute_features",
    "count_label",
    "metric_names",
    "kid",
    "knn_radii",
    "precision_recall",
    "inception_score",
]

IS_UNAVAILABLE = (
    "the feature extractor has no 1008-way classifier head (the bundled FID network ends at the last pool); "
    f"pass evaluation.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE} (torch-fidelity) or NVlabs' "
    "inception-2015-12-05.pt for the Inception Score"
)


def count_label(n: int) -> str:
    """``50000 -> '50k'``, ``1500 -> '1.5k'``, ``456 -> '456'`` (as FID-N is written)."""
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return str(n)


def metric_names(metrics: dict, *, num_samples: int, num_reference: int | None, reference: str | None) -> dict:
    """Each score named with its counts, e.g. ``{"fid@10k vs 50k train": 2.3}`` (FID-N is biased
    upwards at small N: a figure means nothing without both counts)."""
    ref = "" if num_reference is None else f" vs {count_label(num_reference)}" + (f" {reference}" if reference else "")
    base = {"fid": "fid", "kid_mean": "kid", "precision": "precision", "recall": "recall", "is_mean": "is"}
    return {
        f"{name}@{count_label(num_samples)}{'' if name == 'is' else ref}": metrics[key]
        for key, name in base.items()
        if key in metrics
    }


def compute_features(
    extractor: nn.Module | Callable[[Tensor], Tensor | tuple[Tensor, Tensor]],
    images: Tensor | np.ndarray,
    *,
    batch_size: int = 100,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor | None]:
    """Features (and logits when the extractor returns them) of images.

    ``images``: uint8 NHWC (as in ``samples.npz``) or float NCHW in [0, 1].
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    feats, logits = [], []
    for lo in range(0, len(images), batch_size):
        out = extractor(images[lo : lo + batch_size].to(device))
        if isinstance(out, tuple):
            feats.append(out[0].double().cpu())
            logits.append(out[1].double().cpu())
        else:
            feats.append(out.double().cpu())
    return torch.cat(feats), (torch.cat(logits) if logits else None)


def kid(
    real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased MMD^2 over random subsets."""
    real, fake = real.double(), fake.double()
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    dim = real.shape[1]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m]]
        y = fake[torch.randperm(len(fake), generator=gen)[:m]]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        off = 1.0 - torch.eye(m, dtype=torch.float64)
        mmd = (kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std())


def _row_batches(n: int, batch_size: int):
    for lo in range(0, n, batch_size):
        yield lo, min(lo + batch_size, n)


def knn_radii(features: Tensor, k: int, *, batch_size: int = 1000) -> Tensor:
    """Distance of each feature to its k-th nearest other feature, ``batch_size`` rows at a time
    (memory O(N x batch_size), never the N x N matrix)."""
    features = features.double()
    radii = torch.empty(len(features), dtype=torch.float64)
    for lo, hi in _row_batches(len(features), batch_size):
        dist = torch.cdist(features[lo:hi], features)
        radii[lo:hi] = dist.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0
    return radii


def _inside_manifold(queries: Tensor, support: Tensor, radii: Tensor, batch_size: int) -> Tensor:
    """For each query: is it within radius of some support point (the union of k-NN balls)?"""
    inside = torch.empty(len(queries), dtype=torch.bool)
    for lo, hi in _row_batches(len(queries), batch_size):
        inside[lo:hi] = (torch.cdist(queries[lo:hi], support) <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN manifolds, in float64,
    batched: peak memory grows like N x ``batch_size`` (50k vs 50k fits in a few GB)."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    real_r, fake_r = knn_radii(real, k, batch_size=batch_size), knn_radii(fake, k, batch_size=batch_size)
    precision = _inside_manifold(fake, real, real_r, batch_size).double().mean()
    recall = _inside_manifold(real, fake, fake_r, batch_size).double().mean()
    return float(precision), float(recall)


def inception_score(logits: Tensor, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) from class logits."""
    probs = torch.softmax(logits.double(), dim=1)
    scores = []
    for chunk in probs.chunk(splits):
        marginal = chunk.mean(dim=0, keepdim=True)
        kl = (chunk * (chunk.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())
