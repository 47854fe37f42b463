"""The standard FID Inception, checked against independent code on real renders.

* torch-fidelity's own ``FeatureExtractorInceptionV3`` (its architecture, its TF 1.x resize) with
  weights converted from the bundled TorchScript;
* the TorchScript called directly on torch-fidelity's preprocessing;
* NVlabs' TorchScript interface (``return_features`` / ``no_output_bias``), built here from the
  same network, so that path runs too.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

torch_fidelity = pytest.importorskip("torch_fidelity")
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: E402
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x  # noqa: E402

from conftest import real_images  # noqa: E402
from latent_flow.evaluation.inception import (  # noqa: E402
    InceptionFeatures,
    bundled_inception_path,
    fid_preprocess,
    resize_bilinear_tf1,
    torch_fidelity_state_dict,
)
from latent_flow.evaluation.metrics import inception_score  # noqa: E402


@pytest.fixture(scope="module")
def network():
    return InceptionFeatures()


@pytest.fixture(scope="module")
def converted_weights(tmp_path_factory):
    """torch-fidelity's layout, from the bundled file, with a random (seeded) 1008-way head."""
    head = torch.randn(1008, 2049, generator=torch.Generator().manual_seed(0)) * 0.05
    path = tmp_path_factory.mktemp("tf") / "inception_from_bundled.pth"
    torch.save(torch_fidelity_state_dict(head=head), path)
    return path, head


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (256, 256), (512, 300)])
def test_resize_is_torch_fidelitys_tf1_bilinear_bit_for_bit(size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 255
    ours = resize_bilinear_tf1(x)
    theirs = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert torch.equal(ours, theirs)
    # and it is not torch's antialiased resize (what the old code used)
    aa = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
    assert (aa - ours).abs().mean() > 0.01


def test_features_equal_torch_fidelitys_inception_and_the_torchscript(network, converted_weights):
    images = real_images(9, 32, seed=0)
    ours = network(images)
    assert ours.shape == (9, 2048) and network.kind == "features" and not network.has_logits

    reference = FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(converted_weights[0]))
    (theirs,) = reference((images * 255).round().to(torch.uint8))
    assert (ours - theirs).abs().max() <= 1e-3
    assert ours.abs().mean() > 0.1  # real activations, not zeros

    script = torch.jit.load(str(bundled_inception_path()))
    x = interpolate_bilinear_2d_like_tensorflow1x((images * 255).round(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        direct = script((x - 128) / 128)
    assert (ours - direct).abs().max() <= 1e-4
    # quantisation comes first: images on the uint8 grid, moved by less than half a level, score the same
    on_grid = (images * 255).round() / 255
    assert torch.equal(network(on_grid + 0.3 / 255 * (on_grid < 1)), network(on_grid))


def test_preprocessing_is_the_tf_value_range():
    white, black = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    assert fid_preprocess(white).max() == pytest.approx(127 / 128) and fid_preprocess(black).min() == -1.0
    assert fid_preprocess(white).shape == (1, 3, 299, 299)


class NVlabsLayout(nn.Module):
    """NVlabs' inception-2015-12-05.pt interface around the same network: uint8-range input,
    ``return_features`` for pool3, probabilities of the 1008-way head (``no_output_bias``)."""

    def __init__(self, script, head: Tensor) -> None:
        super().__init__()
        self.layers = script.net.layers
        self.weight = nn.Parameter(head[:, :2048].clone())
        self.bias = nn.Parameter(head[:, 2048].clone())

    def forward(self, x: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        features = self.layers((x - 128) / 128).reshape(x.shape[0], 2048)
        if return_features:
            return features
        logits = features @ self.weight.t()
        if not no_output_bias:
            logits = logits + self.bias
        return torch.softmax(logits, dim=1)


def test_is_from_torch_fidelity_pth_and_nvlabs_torchscript_agree(network, converted_weights, tmp_path):
    path, head = converted_weights
    images = real_images(12, 32, seed=2)
    fidelity = InceptionFeatures(path)
    assert fidelity.kind == "torch_fidelity" and fidelity.has_logits
    feats_f, logits_f = fidelity(images)

    nv_path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(NVlabsLayout(torch.jit.load(str(bundled_inception_path())), head)).save(str(nv_path))
    nvlabs = InceptionFeatures(nv_path)
    assert nvlabs.kind == "nvlabs" and nvlabs.has_logits
    feats_n, logits_n = nvlabs(images)

    plain = network(images)
    assert (feats_f - plain).abs().max() <= 1e-3 and (feats_n - plain).abs().max() <= 1e-4
    is_f, is_n = inception_score(logits_f, splits=1)[0], inception_score(logits_n, splits=1)[0]
    assert is_f > 1.0 and is_n == pytest.approx(is_f, rel=1e-4)


def test_a_file_that_is_no_inception_is_refused(tmp_path):
    bad = tmp_path / "not_inception.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="neither a TorchScript nor torch-fidelity"):
        InceptionFeatures(bad)


def test_converted_weights_match_the_torchscript_by_shape_and_value():
    state = torch_fidelity_state_dict()
    script = torch.jit.load(str(bundled_inception_path())).state_dict()
    ours = [k for k in state if k.endswith("conv.weight")]
    theirs = [k for k in script if k.endswith(".weight")]
    assert len(ours) == len(theirs) == 94
    for a, b in [(0, 0), (47, 47), (93, 93)]:
        assert torch.equal(state[ours[a]], script[theirs[b]])
        beta = theirs[b][: -len("weight")] + "beta"
        assert torch.equal(state[ours[a].replace("conv.weight", "bn.bias")], script[beta])
    assert torch.equal(state["Conv2d_1a_3x3.bn.weight"], torch.ones(32))  # TF batch norm: no scale
