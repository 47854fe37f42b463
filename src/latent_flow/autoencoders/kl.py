"""The framework's own small KL autoencoder (an SD-VAE-like design, scaled down).

Architecture (``ch = base_channels``, ``L = len(channel_mult)``):

Encoder::

    conv3x3(in_channels -> ch*mult[0])
    for level i in 0..L-1:
        num_res_blocks x ResBlock(-> ch*mult[i])        # GroupNorm, SiLU, conv3x3, twice; 1x1 skip if needed
        Downsample (conv3x3, stride 2)                    # every level except the last
    mid: ResBlock [+ self-attention + ResBlock if use_attention]
    GroupNorm, SiLU, conv3x3(-> 2 * latent_channels)     # posterior mean and log-variance
                                                         # (log-variance bias starts at LOGVAR_INIT = -8)

Decoder (mirror)::

    conv3x3(latent_channels -> ch*mult[-1]); mid block
    for level i in L-1..0:
        num_res_blocks x ResBlock(-> ch*mult[i])
        Upsample (nearest x2, conv3x3 -> ch*mult[i-1])   # every level except level 0
    GroupNorm, SiLU, conv3x3(-> in_channels)             # no tanh

**Downsampling factor = 2 ** (len(channel_mult) - 1)**: one stride-2 step
between consecutive levels, so ``channel_mult=(1, 2, 2)`` maps 32x32 RGB to
8x8 latents (factor 4, the default) and ``(1, 2)`` gives factor 2.

Defaults (``base_channels=16, channel_mult=(1, 2, 2)``, 0.15 M parameters; ``autoencoder=kl_shapes``)
were the CPU quick start's until 2026-12-03: on the 32x32 shapes data, batch 64, AdamW lr 1e-3,
2 CPU threads, they reach ~25 dB PSNR in 45 s and ~28 dB in 2 min; ``base_channels=32`` learns
about as much per step at twice the cost. The quick start now uses ``channel_mult=(1, 2)`` with
two latent channels (``autoencoder=kl_shapes_f2``, 16x16x2; one channel until 2026-12-04): at equal
steps factor 2 keeps the shapes' edges far better (FD-shapes of reconstructions 137 with one channel
against 190 for the default after 600 / 800 steps, 87 with two; experiments/quickstart/README.md).
(This is one fewer than the ``2 ** len(channel_mult)`` sketched in an early version of
docs/interfaces.md; ``downsample_factor`` is the one source of truth.)

The decoder output is not squashed: ``decode_unclamped`` (used by the training
loss) returns it as is, ``decode_raw`` clamps to [-1, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Autoencoder, load_autoencoder_checkpoint, register_autoencoder

__all__ = ["KLAutoencoder", "diagonal_gaussian_kl", "load_kl_autoencoder"]

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0
#: Initial bias of the log-variance outputs (posterior std ~0.02 at init), so
#: that sampling the posterior does not drown the small initial latents in unit
#: noise; with the default SD-sized KL weight this cut the number of steps to a
#: given PSNR by about 2x in the quick-start measurements.
LOGVAR_INIT = -8.0


def _groups(channels: int) -> int:
    """GroupNorm groups: 4 channels per group where possible, at most 32 groups."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2 + skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (as in the SD VAE mid block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid_block(channels: int, use_attention: bool) -> nn.Sequential:
    if use_attention:
        return nn.Sequential(ResBlock(channels, channels), AttnBlock(channels), ResBlock(channels, channels))
    return nn.Sequential(ResBlock(channels, channels))


def diagonal_gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise KL( N(mean, exp(logvar)) || N(0, 1) ), same shape as ``mean``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


@register_autoencoder("kl")
class KLAutoencoder(Autoencoder):
    """Small trainable KL autoencoder (see the module docstring for the layout).

    Args:
        in_channels: image channels (3).
        latent_channels: latent channels ``C``.
        base_channels: width of the first level.
        channel_mult: width multiplier per level; ``downsample_factor =
            2 ** (len(channel_mult) - 1)``.
        num_res_blocks: residual blocks per level (encoder and decoder).
        use_attention: add self-attention (+ a second ResBlock) to the mid blocks.

    Train it with :class:`latent_flow.training.autoencoder.AutoencoderModule`; load
    the exported file with :func:`load_kl_autoencoder`.
    """

    #: ``load_autoencoder("kl")`` needs ``ckpt_path`` (random weights are useless).
    requires_checkpoint = True

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 16,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        use_attention: bool = False,
    ) -> None:
        mult = tuple(int(m) for m in channel_mult)
        if len(mult) < 1 or any(m < 1 for m in mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}")
        if int(base_channels) < 1 or int(num_res_blocks) < 1:
            raise ValueError(f"base_channels and num_res_blocks must be >= 1, got {base_channels}, {num_res_blocks}")
        super().__init__(
            latent_channels=int(latent_channels),
            downsample_factor=2 ** (len(mult) - 1),
            image_channels=int(in_channels),
        )
        self.in_channels = int(in_channels)
        self.base_channels = int(base_channels)
        self.channel_mult = mult
        self.num_res_blocks = int(num_res_blocks)
        self.use_attention = bool(use_attention)

        widths = [self.base_channels * m for m in mult]
        last = len(mult) - 1

        # encoder
        enc: list[nn.Module] = [nn.Conv2d(self.in_channels, widths[0], 3, padding=1)]
        cur = widths[0]
        for i, width in enumerate(widths):
            for _ in range(self.num_res_blocks):
                enc.append(ResBlock(cur, width))
                cur = width
            if i != last:
                enc.append(Downsample(cur))
        enc.append(_mid_block(cur, self.use_attention))
        conv_moments = nn.Conv2d(cur, 2 * self.latent_channels, 3, padding=1)
        with torch.no_grad():
            conv_moments.bias[self.latent_channels :].fill_(LOGVAR_INIT)  # type: ignore[index]
        enc += [_norm(cur), nn.SiLU(), conv_moments]
        self.encoder = nn.Sequential(*enc)

        # decoder
        cur = widths[-1]
        dec: list[nn.Module] = [nn.Conv2d(self.latent_channels, cur, 3, padding=1), _mid_block(cur, self.use_attention)]
        for i in range(last, -1, -1):
            for _ in range(self.num_res_blocks):
                dec.append(ResBlock(cur, widths[i]))
                cur = widths[i]
            if i != 0:
                dec.append(Upsample(cur, widths[i - 1]))
                cur = widths[i - 1]
        dec += [_norm(cur), nn.SiLU(), nn.Conv2d(cur, self.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "latent_channels": self.latent_channels,
            "base_channels": self.base_channels,
            "channel_mult": list(self.channel_mult),
            "num_res_blocks": self.num_res_blocks,
            "use_attention": self.use_attention,
        }

    def encode_distribution(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [-1, 1] -> posterior ``(mean, logvar)``, each ``(B, C, H/f, W/f)``;
        ``logvar`` is clamped to [-30, 20]. Autograd is left as the caller set it."""
        self._check_images(images)
        moments = self.encoder(images)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def encode_raw(self, images: Tensor) -> Tensor:
        """The posterior mean (deterministic)."""
        return self.encode_distribution(images)[0]

    def decode_unclamped(self, raw_latents: Tensor) -> Tensor:
        """Decoder output without clamping (for the training loss)."""
        return self.decoder(raw_latents)

    def decode_raw(self, raw_latents: Tensor) -> Tensor:
        return self.decode_unclamped(raw_latents).clamp(-1.0, 1.0)


def load_kl_autoencoder(path: str | os.PathLike[str], **expected_config: Any) -> KLAutoencoder:
    """Load a :class:`KLAutoencoder` file written by ``save_autoencoder`` (not frozen;
    call ``.freeze()`` or use ``load_autoencoder("kl", ckpt_path=path)``).

    Args:
        path: the file.
        **expected_config: constructor options that must match the file's config.

    Raises:
        FileNotFoundError: no such file (the message suggests
            ``python -m latent_flow.train_autoencoder``).
        ValueError: another class, a config mismatch or unreadable file.
    """
    return load_autoencoder_checkpoint(path, expected_class=KLAutoencoder, **expected_config)
