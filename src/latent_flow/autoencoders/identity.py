"""Pixel-space baseline: the "autoencoder" that is (almost) the identity."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import Autoencoder, register_autoencoder

__all__ = ["IdentityAutoencoder"]


@register_autoencoder("identity")
class IdentityAutoencoder(Autoencoder):
    """Pixel space as a latent space, optionally folded space-to-depth.

    With ``space_to_depth = f`` an image ``(3, H, W)`` becomes the latent
    ``(3 f^2, H/f, W/f)`` by ``F.pixel_unshuffle`` and comes back exactly by
    ``F.pixel_shuffle``; ``f = 1`` is the plain identity. No parameters, so the
    fingerprint only depends on ``f``. ``decode_raw`` clamps to [-1, 1] like
    every autoencoder (lossless for images already in range).

    Args:
        space_to_depth: the factor ``f`` (>= 1).
    """

    def __init__(self, space_to_depth: int = 1) -> None:
        f = int(space_to_depth)
        if f < 1 or f != space_to_depth:
            raise ValueError(f"space_to_depth must be an integer >= 1, got {space_to_depth!r}")
        super().__init__(latent_channels=3 * f * f, downsample_factor=f)
        self.space_to_depth = f

    def config(self) -> dict[str, Any]:
        return {"space_to_depth": self.space_to_depth}

    def encode_raw(self, images: Tensor) -> Tensor:
        if self.space_to_depth == 1:
            return images
        return F.pixel_unshuffle(images, self.space_to_depth)

    def decode_raw(self, raw_latents: Tensor) -> Tensor:
        if self.space_to_depth > 1:
            raw_latents = F.pixel_shuffle(raw_latents, self.space_to_depth)
        return raw_latents.clamp(-1.0, 1.0)
