"""api.log_likelihood on a model whose velocity is a Gaussian flow in closed form: latent and pixel space."""

from __future__ import annotations

import math

import pytest
import torch

from latent_flow.api import LIKELIHOOD_SPACES, log_likelihood
from latent_flow.flow.likelihood import dequantize, normalisation_log_det, standard_normal_logp


def _pixel_model(space_to_depth: int = 2):
    from latent_flow.training.module import LatentFlowModule

    c = 3 * space_to_depth**2
    h = 32 // space_to_depth
    g = torch.Generator().manual_seed(0)
    stats = {"mean": (0.1 * torch.randn(c, generator=g)).tolist(), "std": (0.3 + torch.rand(c, generator=g)).tolist()}
    model = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[c, h, h],
        num_classes=3,
        latent_stats=stats,
        autoencoder={"name": "identity", "space_to_depth": space_to_depth},
    )
    seen = []

    def velocity(x, t, cond, use_ema=False):  # data N(0, I) under CondOT: v = (2t - 1) / (t^2 + (1-t)^2) x
        seen.append(cond["label"].clone())
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        return (2 * tt - 1) / (tt**2 + (1 - tt) ** 2) * x

    model.velocity = velocity
    return model.eval(), seen


def _images(n: int = 3) -> torch.Tensor:
    u8 = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    return u8.float() / 127.5 - 1


def test_pixel_model_reports_dequantised_pixel_bits_per_dim() -> None:
    model, seen = _pixel_model()
    images, labels = _images(), torch.tensor([2, 0, 1])
    out = log_likelihood(model, images, labels=labels, indices=[5, 6, 7], divergence="hutchinson", num_probes=2)
    assert out.space == "pixel" and out.description == LIKELIHOOD_SPACES["pixel"] and out.dequantized
    assert torch.equal(seen[0], labels)  # conditional on the true label, no null rows (no guidance)
    ae = model.autoencoder
    z = ae.encode(dequantize(images, [5, 6, 7], seed=0))
    exact = standard_normal_logp(z) + normalisation_log_det(ae.latent_std, 16 * 16)
    d = 3 * 32 * 32
    assert out.num_dims == d
    # the Gaussian flow's Jacobian is a multiple of I: Hutchinson with Rademacher probes is exact
    torch.testing.assert_close(out.logp.double(), exact.double(), rtol=0, atol=2e-3 * d**0.5)
    bpd = (-exact.double() + d * math.log(127.5)) / (d * math.log(2))
    torch.testing.assert_close(out.bits_per_dim.double(), bpd, rtol=0, atol=1e-4)


def test_latents_are_scored_in_latent_space() -> None:
    model, _ = _pixel_model()
    z = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(1))
    out = log_likelihood(model, z, inputs="latents", labels=[0, 1], divergence="hutchinson")
    assert out.space == "latent" and out.description == "bits/dim in the autoencoder's latent space, normalised latents"
    exact = standard_normal_logp(z)
    torch.testing.assert_close(out.logp.double(), exact.double(), rtol=0, atol=0.1)
    torch.testing.assert_close(
        out.bits_per_dim.double(), -exact.double() / (z[0].numel() * math.log(2)), rtol=0, atol=1e-4
    )


def test_inputs_must_be_unambiguous_and_labels_given() -> None:
    model, _ = _pixel_model(space_to_depth=1)  # latents (3, 32, 32) look like images
    with pytest.raises(ValueError, match="cannot tell images from latents"):
        log_likelihood(model, _images(1), labels=[0])
    with pytest.raises(ValueError, match="true labels"):
        log_likelihood(model, _images(1), inputs="images")
