"""FID, KID, Inception Score and precision / recall in one feature space.

One feature extractor embeds both image sets; the metrics are computed from the features:

* FID: Frechet distance of Gaussian fits (``evaluation.frechet``, the one place for that maths);
* KID: unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged over subsets
  (Binkowski et al. 2018);
* precision / recall: the k-nearest-neighbour manifold estimate of Kynkaanniemi et al. (2019):
  precision = share of generated features inside the real manifold (union of real k-NN balls),
  recall = share of real features inside the generated manifold;
* Inception Score: ``exp(E_x KL(p(y|x) || p(y)))`` from the extractor's class logits, when it has them.

The default extractor is the standard FID Inception-v3 (torch-fidelity's weights, the ones
pytorch-fid and the ADM evaluator reproduce), loaded through torchmetrics from a local file:
nothing is downloaded at run time. ``feature_extractor=`` takes any ``nn.Module`` mapping
images in [0, 1] to ``(B, D)`` features instead (e.g. the shapes oracle's trunk).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from latent_flow.evaluation.frechet import frechet_distance, gaussian_stats

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "InceptionWeightsMissingError",
    "resolve_inception_weights",
    "InceptionFeatures",
    "compute_features",
    "kid",
    "precision_recall",
    "inception_score",
    "image_metrics",
]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"


class InceptionWeightsMissingError(FileNotFoundError):
    """The FID Inception weights are not on this machine."""


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights: ``path`` if given, else torch hub's checkpoint folder.

    Raises :class:`InceptionWeightsMissingError` naming the file to download and the option.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if path is not None:
        if Path(path).is_file():
            return Path(path)
        where = f"evaluation.inception_weights={path} does not exist"
    elif hub_file.is_file():
        return hub_file
    else:
        where = f"no FID Inception weights at {hub_file}"
    raise InceptionWeightsMissingError(
        f"{where}. Download {INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL} and either put it at "
        f"{hub_file} or pass evaluation.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE}; offline, "
        "metrics=[fd_shapes] uses the shapes oracle instead"
    )


class InceptionFeatures(nn.Module):
    """FID Inception-v3 (2048-d pool features + 1008 unbiased logits) from a local weights file."""

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = resolve_inception_weights(weights_path)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(path),
        )
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images01: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0, 1] -> (pool features (B, 2048), logits (B, 1008))."""
        uint8 = (images01.clamp(0, 1) * 255).round().to(torch.uint8)
        features, logits = self.net(uint8)
        return features.double(), logits.double()


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


def kid(real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
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


def _knn_radii(features: Tensor, k: int) -> Tensor:
    dist = torch.cdist(features, features)
    return dist.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN manifolds."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    real_r, fake_r = _knn_radii(real, k), _knn_radii(fake, k)
    precision = (torch.cdist(fake, real) <= real_r[None, :]).any(dim=1).double().mean()
    recall = (torch.cdist(real, fake) <= fake_r[None, :]).any(dim=1).double().mean()
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


def image_metrics(
    real_features: Tensor,
    fake_features: Tensor,
    *,
    fake_logits: Tensor | None = None,
    metrics: tuple[str, ...] = ("fid", "kid", "precision_recall", "is"),
    kid_subset_size: int = 1000,
    pr_k: int = 3,
) -> dict[str, float]:
    """The requested metrics from features of real and generated images."""
    known = {"fid", "kid", "precision_recall", "is"}
    unknown = set(metrics) - known
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; valid: {sorted(known)}")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))
    if "kid" in metrics:
        out["kid_mean"], out["kid_std"] = kid(real_features, fake_features, subset_size=kid_subset_size)
    if "precision_recall" in metrics:
        out["precision"], out["recall"] = precision_recall(real_features, fake_features, k=pr_k)
    if "is" in metrics:
        if fake_logits is None:
            raise ValueError("the Inception Score needs an extractor that returns class logits")
        out["is_mean"], out["is_std"] = inception_score(fake_logits)
    return out
