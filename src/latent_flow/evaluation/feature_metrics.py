"""FID, KID, precision / recall and IS as ``torchmetrics.Metric`` s over extracted features.

The one implementation behind the training callback (``SampleMetricsCallback``, any number of ranks)
and ``latent_flow.evaluate``: features of generated images go in with :meth:`update` (on every rank, each
with its share of the sample indices), the states are summed / gathered across ranks by torchmetrics when
:meth:`compute` runs, and the reference side is fixed (statistics from a ``latent_flow.reference_stats``
folder, :class:`ReferenceSet`).

* :class:`FID`: states ``fake_n``, ``fake_sum`` (D,), ``fake_outer`` (D, D) in float64, reduced by sum:
  the generated set's mean and (unbiased) covariance are those of all ranks' features together, whatever
  the split (:class:`~latent_flow.evaluation.frechet.RunningStats`), and the distance is
  :func:`~latent_flow.evaluation.frechet.frechet_distance` (scipy ``sqrtm`` in float64, the reference
  implementation's numerics). Memory does not grow with the number of samples.
* :class:`KID`, :class:`PrecisionRecall`, :class:`InceptionScore`: these need the features (logits) of every
  sample; they keep them with their sample indices (``dist_reduce_fx="cat"``) and sort by index before
  computing, so that the random KID subsets and the IS splits see the samples in the order of a one-process
  run: any split over ranks gives the same value. Duplicated indices are refused (a sample counted twice).

:func:`feature_metrics` builds a ``MetricCollection`` of the requested scores; :func:`scores` turns its
output into the plain dict ``evaluate`` writes (``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``,
``is_mean``, ``is_std``; ``is_unavailable`` with the reason when the extractor has no class logits);
:func:`image_metrics` does both for two feature sets held in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from latent_flow.evaluation.frechet import RunningStats, frechet_distance, gaussian_stats
from latent_flow.evaluation.metrics import IS_UNAVAILABLE, inception_score, kid, precision_recall

__all__ = [
    "FEATURE_METRICS",
    "FID",
    "KID",
    "InceptionScore",
    "PrecisionRecall",
    "ReferenceSet",
    "feature_metrics",
    "image_metrics",
    "scores",
]

#: the feature-space metrics, as ``metrics=`` names them
FEATURE_METRICS = ("fid", "kid", "precision_recall", "is")


@dataclass
class ReferenceSet:
    """The fixed (real) side of the feature metrics: mean and covariance (float64, for FID) and, for KID and
    precision / recall, the features themselves (``None`` for a mean / covariance-only statistics file).
    ``name`` (e.g. ``"emoji val"``) and ``num_images`` are recorded beside the scores."""

    mu: np.ndarray
    sigma: np.ndarray
    features: Tensor | None = None
    name: str | None = None
    num_images: int | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: Tensor | np.ndarray, *, name: str | None = None) -> ReferenceSet:
        feats = torch.as_tensor(np.asarray(features) if isinstance(features, np.ndarray) else features)
        mu, sigma = gaussian_stats(feats)
        return cls(mu=mu, sigma=sigma, features=feats.double().cpu(), name=name, num_images=len(feats))

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], *, name: str | None = None) -> ReferenceSet:
        """From :func:`~latent_flow.evaluation.reference.load_reference_stats`' dict."""
        info = dict(stats.get("info") or {})
        features = stats.get("features")
        num = len(features) if features is not None else info.get("num_images")
        return cls(
            mu=_float64(stats["mu"]),
            sigma=_float64(stats["sigma"]),
            features=None if features is None else torch.as_tensor(features).double().cpu(),
            name=name,
            num_images=None if num is None else int(num),
            info=info,
        )

    @property
    def dim(self) -> int:
        return int(np.atleast_1d(self.mu).shape[0])


def _float64(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


class FID(Metric):
    """Frechet distance of the updated features to a fixed reference (``mu``, ``sigma``), from float64
    running sums that torchmetrics adds up across ranks."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, reference_mu: Tensor | np.ndarray, reference_sigma: Tensor | np.ndarray, **kwargs: Any):
        super().__init__(**kwargs)
        self.reference_mu = np.atleast_1d(_float64(reference_mu))
        self.reference_sigma = np.atleast_2d(_float64(reference_sigma))
        dim = self.reference_mu.shape[0]
        if self.reference_sigma.shape != (dim, dim):
            raise ValueError(f"reference covariance {self.reference_sigma.shape} does not match the mean ({dim},)")
        self.add_state("fake_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: Tensor, indices: Tensor | Sequence[int] | None = None, logits: Any = None) -> None:
        f = _features(features, self.fake_sum.shape[0]).to(self.fake_sum.device, torch.float64)
        self.fake_n += f.shape[0]
        self.fake_sum += f.sum(dim=0)
        self.fake_outer += f.T @ f

    def compute(self) -> Tensor:
        mu, sigma = RunningStats.from_tensors(self.fake_n, self.fake_sum, self.fake_outer).stats()
        return torch.tensor(frechet_distance(self.reference_mu, self.reference_sigma, mu, sigma), dtype=torch.float64)


def _features(features: Tensor | np.ndarray, dim: int | None) -> Tensor:
    f = torch.as_tensor(features)
    if f.ndim != 2 or (dim is not None and f.shape[1] != dim):
        want = f"(B, {dim})" if dim is not None else "(B, D)"
        raise ValueError(f"expected features of shape {want}, got {tuple(f.shape)}")
    return f.detach()


class _PerSample(Metric):
    """Keeps one row per sample (``values``) with its sample index; :meth:`ordered` gives them sorted by index
    (after the ranks' rows were gathered), as a one-process run would have them."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("values", [], dist_reduce_fx="cat")
        self.add_state("indices", [], dist_reduce_fx="cat")
        self._next_index = 0  # default indices of a one-process run: the order of the updates

    def _add(self, rows: Tensor, indices: Tensor | Sequence[int] | None) -> None:
        if indices is None:
            indices = torch.arange(self._next_index, self._next_index + rows.shape[0])
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.shape[0] != rows.shape[0]:
            raise ValueError(f"{rows.shape[0]} rows but {idx.shape[0]} sample indices")
        self._next_index = max(self._next_index, int(idx.max()) + 1) if len(idx) else self._next_index
        device = self.device
        self.values.append(rows.to(device, torch.float64))
        self.indices.append(idx.to(device))

    def ordered(self) -> Tensor:
        values, idx = dim_zero_cat(self.values), dim_zero_cat(self.indices).long()
        order = torch.argsort(idx, stable=True)
        idx = idx[order]
        if len(idx) > 1 and bool((idx[1:] == idx[:-1]).any()):
            dup = idx[1:][idx[1:] == idx[:-1]][:5].tolist()
            raise ValueError(f"{type(self).__name__}: sample indices {dup} were added more than once")
        return values[order].cpu()

    def reset(self) -> None:
        super().reset()
        self._next_index = 0


class KID(_PerSample):
    """Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel) against reference features; the
    mean and std over ``subsets`` random subsets of ``subset_size`` (seeded: :func:`~.metrics.kid`)."""

    higher_is_better = False

    def __init__(
        self, reference_features: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.reference_features = torch.as_tensor(reference_features).double().cpu()
        self.subsets, self.subset_size, self.seed = int(subsets), int(subset_size), int(seed)

    def update(self, features: Tensor, indices: Tensor | Sequence[int] | None = None, logits: Any = None) -> None:
        self._add(_features(features, self.reference_features.shape[1]), indices)

    def compute(self) -> dict[str, Tensor]:
        mean, std = kid(
            self.reference_features, self.ordered(), subsets=self.subsets, subset_size=self.subset_size, seed=self.seed
        )
        return {"kid_mean": torch.tensor(mean, dtype=torch.float64), "kid_std": torch.tensor(std, dtype=torch.float64)}


class PrecisionRecall(_PerSample):
    """Improved precision and recall (k-NN manifolds, :func:`~.metrics.precision_recall`) against reference
    features."""

    higher_is_better = True

    def __init__(self, reference_features: Tensor, *, k: int = 3, batch_size: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference_features = torch.as_tensor(reference_features).double().cpu()
        self.k, self.batch_size = int(k), int(batch_size)

    def update(self, features: Tensor, indices: Tensor | Sequence[int] | None = None, logits: Any = None) -> None:
        self._add(_features(features, self.reference_features.shape[1]), indices)

    def compute(self) -> dict[str, Tensor]:
        p, r = precision_recall(self.reference_features, self.ordered(), k=self.k, batch_size=self.batch_size)
        return {"precision": torch.tensor(p, dtype=torch.float64), "recall": torch.tensor(r, dtype=torch.float64)}


class InceptionScore(_PerSample):
    """Inception Score from the extractor's class logits (:func:`~.metrics.inception_score`, ``splits`` splits
    of the samples in index order)."""

    higher_is_better = True

    def __init__(self, *, splits: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.splits = int(splits)

    def update(
        self, features: Tensor, indices: Tensor | Sequence[int] | None = None, logits: Tensor | None = None
    ) -> None:
        if logits is None:
            raise ValueError(f"InceptionScore needs class logits: {IS_UNAVAILABLE}")
        self._add(_features(logits, None), indices)

    def compute(self) -> dict[str, Tensor]:
        mean, std = inception_score(self.ordered(), splits=self.splits)
        return {"is_mean": torch.tensor(mean, dtype=torch.float64), "is_std": torch.tensor(std, dtype=torch.float64)}


def feature_metrics(
    metrics: Sequence[str],
    reference: ReferenceSet,
    *,
    has_logits: bool = False,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    pr_batch_size: int = 1000,
) -> MetricCollection:
    """A ``MetricCollection`` of the requested ``metrics`` (names of :data:`FEATURE_METRICS`) against
    ``reference``; ``update(features, indices, logits)`` feeds every member. ``is`` is left out when the
    extractor has no logits (:func:`scores` then records why). KID and precision / recall need the reference
    features: a mean / covariance-only reference refuses them with the reason."""
    metrics = tuple(str(m) for m in metrics)
    unknown = set(metrics) - set(FEATURE_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; valid: {sorted(FEATURE_METRICS)}")
    need_features = sorted(set(metrics) & {"kid", "precision_recall"})
    if need_features and reference.features is None:
        raise ValueError(
            f"the reference holds only mean / covariance: metrics {need_features} need the reference features "
            "(recompute them with latent_flow.reference_stats) or metrics=[fid]"
        )
    members: dict[str, Metric] = {}
    if "fid" in metrics:
        members["fid"] = FID(reference.mu, reference.sigma)
    if "kid" in metrics:
        members["kid"] = KID(reference.features, subset_size=kid_subset_size, subsets=kid_subsets)
    if "precision_recall" in metrics:
        members["precision_recall"] = PrecisionRecall(reference.features, k=pr_k, batch_size=pr_batch_size)
    if "is" in metrics and has_logits:
        members["is"] = InceptionScore()
    if not members:
        raise ValueError(f"no metric to compute from {list(metrics)}")
    collection = MetricCollection(members)
    collection.requested = metrics  # what scores() reports, IS included when it could not be computed
    return collection


def scores(collection: MetricCollection) -> dict[str, float | str | None]:
    """``collection.compute()`` as plain floats (``fid``, ``kid_mean``, ``kid_std``, ``precision``,
    ``recall``, ``is_mean``, ``is_std``); a requested IS without logits is ``is_mean: None`` with the reason in
    ``is_unavailable``, never made up. Under ``torch.distributed`` every rank must call it (it syncs)."""
    out: dict[str, float | str | None] = {k: float(v) for k, v in collection.compute().items()}
    if "is" in getattr(collection, "requested", ()) and "is_mean" not in out:
        out["is_mean"] = out["is_std"] = None
        out["is_unavailable"] = IS_UNAVAILABLE
    return out


def image_metrics(
    real_features: Tensor,
    fake_features: Tensor,
    *,
    fake_logits: Tensor | None = None,
    metrics: tuple[str, ...] = FEATURE_METRICS,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    pr_batch_size: int = 1000,
) -> dict[str, float | str | None]:
    """The requested metrics of two feature sets held in memory (the Metric path, one update)."""
    collection = feature_metrics(
        metrics,
        ReferenceSet.from_features(real_features),
        has_logits=fake_logits is not None,
        kid_subset_size=kid_subset_size,
        pr_k=pr_k,
        pr_batch_size=pr_batch_size,
    )
    collection.update(fake_features, logits=fake_logits)
    return scores(collection)
