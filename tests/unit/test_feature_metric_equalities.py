"""KID, precision / recall and IS from features agree with torch-fidelity's ``*_features_to_metric`` (#28 item 2).

Our functions are kept (docs/architecture.md, "Dependencies": subsets drawn by a seeded torch generator in
sample-index order so any split over ranks gives one value, precision / recall in row batches, float64), so
each is checked here against the dependency on the same features, where the two definitions coincide:

* KID with the subset size equal to the set size: every subset is the whole set in some order, and the
  unbiased MMD^2 does not depend on the order, so both give that one value whatever their random draws;
* precision / recall with the k-th-neighbour balls (torch-fidelity's are usually in VGG-16 space; the maths from
  features is the same);
* IS with unshuffled, equal splits.
"""

from __future__ import annotations

import pytest
import torch

from latent_flow.evaluation.metrics import inception_score, kid, precision_recall

tf_kid = pytest.importorskip("torch_fidelity.metric_kid")
tf_prc = pytest.importorskip("torch_fidelity.metric_prc")
tf_isc = pytest.importorskip("torch_fidelity.metric_isc")


def _features(n: int, dim: int, shift: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=torch.float64) + shift


@pytest.mark.parametrize("n,shift", [(40, 0.0), (40, 0.3), (64, 1.0)])
def test_kid_over_the_whole_set_equals_torch_fidelity(n, shift):
    real, fake = _features(n, 16, 0.0, 1), _features(n, 16, shift, 2)
    ours, ours_std = kid(real, fake, subsets=4, subset_size=n, seed=0)
    theirs = tf_kid.kid_features_to_metric(
        fake,
        real,
        kid_subsets=4,
        kid_subset_size=n,
        kid_degree=3,
        kid_gamma=None,
        kid_coef0=1,
        rng_seed=7,
        verbose=False,
    )
    assert ours == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9, abs=1e-12)
    assert ours_std == pytest.approx(0.0, abs=1e-12) and theirs["kernel_inception_distance_std"] < 1e-12
    if shift >= 0.3:
        assert ours > 1e-3  # distinct sets: the value is not the trivial zero


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_equal_torch_fidelity(k):
    real, fake = _features(120, 8, 0.0, 3), _features(90, 8, 0.6, 4)
    precision, recall = precision_recall(real, fake, k=k, batch_size=37)  # batches that do not divide N
    theirs = tf_prc.prc_features_to_metric(
        fake, real, prc_neighborhood=k, prc_batch_size=50, save_cpu_ram=False, verbose=False
    )
    # the same samples inside the balls (torch-fidelity averages in float32: compare the counts)
    assert round(precision * len(fake)) == round(theirs["precision"] * len(fake))
    assert round(recall * len(real)) == round(theirs["recall"] * len(real))
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0  # shifted sets: neither value is trivially 0 or 1


@pytest.mark.parametrize("splits", [1, 5, 10])
def test_inception_score_equals_torch_fidelity(splits):
    logits = _features(200, 1008, 0.0, 5) * 3.0
    mean, std = inception_score(logits, splits=splits)
    theirs = tf_isc.isc_features_to_metric(logits, splits=splits, shuffle=False)
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-6, abs=1e-9)
    assert mean > 1.5  # peaked, varied predictions: far from the trivial IS of 1
