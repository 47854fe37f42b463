"""A discriminator head on a velocity network's features (DMD2, Yin et al. 2024: "Improved Distribution Matching
Distillation for Fast Image Synthesis", section 4.3: a classification branch on the fake score network's bottleneck).

The trunk is the backbone's :meth:`features` (UNet: the middle block's output; DiT: the last block's tokens as a
map) at a noised input ``(x_t, t, y)``, so the discriminator sees the noise level and the label through the trunk's
own embeddings; the head turns that map into one logit per sample (``> 0``: real).
"""

from __future__ import annotations

from torch import Tensor, nn

from latent_flow.backbones.unet import group_norm

__all__ = ["FeatureDiscriminatorHead"]


class FeatureDiscriminatorHead(nn.Module):
    """``logit = linear(mean_hw silu(conv3x3(silu(norm(features)))))``, one per sample.

    Args:
        channels: the feature map's channels (the backbone's ``feature_channels``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels!r}")
        self.channels = int(channels)
        self.norm = group_norm(self.channels)
        self.conv = nn.Conv2d(self.channels, self.channels, 3, padding=1)
        self.linear = nn.Linear(self.channels, 1)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B,)`` of a feature map ``(B, channels, h, w)``."""
        if features.ndim != 4 or features.shape[1] != self.channels:
            raise ValueError(f"expected features of shape (B, {self.channels}, h, w), got {tuple(features.shape)}")
        h = nn.functional.silu(self.conv(nn.functional.silu(self.norm(features))))
        return self.linear(h.mean(dim=(2, 3)).to(self.linear.weight.dtype)).squeeze(1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
