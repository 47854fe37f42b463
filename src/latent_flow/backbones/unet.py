"""ADM-style UNet (Dhariwal & Nichol 2021) used as a velocity network.

``UNet.forward(x, t, y=None)`` maps ``x`` ``(B, in_channels, H, W)`` at time ``t`` ``(B,)`` in
``[0, 1]`` (**t = 0 noise, t = 1 data**) and optional labels ``y`` to a velocity
``(B, out_channels, H, W)``. Built with ``flow_map=True`` it also takes ``t_end`` ``(B,)`` and returns
the average velocity over ``[t, t_end]`` of a flow-map jump (:mod:`latent_flow.flow.meanflow`); the
interval ``t_end - t`` is embedded by an :class:`~latent_flow.backbones.embeddings.IntervalEmbedder`
added to the time embedding, exactly zero for ``t_end = t`` (or ``None``): the velocity network.

Structure: input conv; per resolution level ``num_res_blocks`` residual blocks (GroupNorm,
scale-shift norm conditioning on the time + label embedding, zero-initialised output conv),
optional multi-head self-attention, a strided-conv downsample between levels; a middle block
(res, attention, res); a mirrored decoder with ``num_res_blocks + 1`` residual blocks per level
fed by skip connections and nearest-neighbour + conv upsampling; GroupNorm, SiLU and a
zero-initialised output conv. All residual branches and the output conv start at zero, so the
network outputs exactly zero at initialisation.

``attention_resolutions`` are **downsampling factors relative to the input**: 1 is the input
resolution, 2 is half of it, 4 a quarter, ... (ADM's ``image_size // resolution``). For a 32x32
latent, ``(2, 4)`` puts attention at 16x16 and 8x8. The middle block always has attention.
The network is convolutional: any ``H``, ``W`` divisible by ``2 ** (len(channel_mult) - 1)``
works; ``input_size`` documents the intended size and is validated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latent_flow.backbones.attention import attention, has_forward_tangent
from latent_flow.backbones.embeddings import IntervalEmbedder, LabelEmbedder, TimestepEmbedder, as_batch_times

__all__ = ["UNet", "ResBlock", "AttentionBlock", "UNET_PRESETS", "unet_preset"]


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= max_groups`` that divides ``channels``."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with scale-shift norm conditioning: ``h = GN(h) * (1 + scale) + shift``.

    The second conv is zero-initialised, so the block starts as its skip connection.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_norm = group_norm(in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_conv(F.silu(self.in_norm(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1.0 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions (:func:`attention`); zero-initialised output projection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _EmbSequential(nn.Sequential):
    """Sequential whose layers all take ``(x, emb)``."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """ADM-style UNet velocity network.

    Args:
        in_channels: channels of ``x`` (latent plus any concatenated spatial condition).
        out_channels: channels of the predicted velocity.
        model_channels: base width; level ``i`` has ``model_channels * channel_mult[i]`` channels.
        channel_mult: width multiplier per resolution level; ``len(channel_mult) - 1`` downsamplings.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: downsampling factors relative to the input (1 = input resolution,
            2 = half, ...) at which self-attention follows each residual block. Each must be one of
            ``2**0 .. 2**(len(channel_mult)-1)``.
        num_heads: attention heads (must divide the channel count where attention is used).
        dropout: dropout inside residual blocks.
        num_classes: number of labels; 0 means unconditional (passing ``y`` raises). The null
            label is ``num_classes``.
        class_dropout_prob: per-sample label dropout probability in training.
        input_size: intended spatial size; must be divisible by ``2**(len(channel_mult)-1)``.
        grad_checkpointing: recompute each block's activations in backward while training.
        patch_size: side of the non-overlapping patches the input is folded into before the first
            conv (``pixel_unshuffle``; ``in_channels * patch_size**2`` channels at ``input_size /
            patch_size``) and the output unfolded from after the last (``pixel_shuffle``), as DiT
            patchifies. 1 = none. ``attention_resolutions`` count from the patch grid. 2 on a
            16x16 latent costs what 1 costs on an 8x8 one.
        flow_map: also embed the interval ``t_end - t`` of a flow-map jump (``h_embedder``), so the
            network is ``u(x, t, t_end)``; ``t_end = t`` gives exactly the velocity network.
        time_scale: factor on ``t`` (and on the interval) before the sinusoidal embeddings (1000: DiT / ADM;
            a flow map's JVP differentiates through it, so smaller values give a smoother function of time,
            the sCM finding; ``+backbone.time_scale=...``).

    ``forward(x, t, y=None, t_end=None)``: ``t`` ``(B,)`` in ``[0, 1]``, t = 0 noise, t = 1 data.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_heads: int,
        dropout: float = 0.0,
        num_classes: int = 0,
        class_dropout_prob: float = 0.1,
        *,
        input_size: int,
        grad_checkpointing: bool = False,
        patch_size: int = 1,
        flow_map: bool = False,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        patch_size = int(patch_size)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(a) for a in attention_resolutions)
        if not channel_mult:
            raise ValueError("channel_mult must not be empty")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.total_downsample = patch_size * 2 ** (len(channel_mult) - 1)
        if input_size < 1 or input_size % self.total_downsample:
            raise ValueError(
                f"input_size {input_size} is not divisible by {self.total_downsample} "
                f"(= patch_size * 2**(len(channel_mult)-1) for patch_size={patch_size}, channel_mult={channel_mult})"
            )
        valid_factors = tuple(2**i for i in range(len(channel_mult)))
        bad = [a for a in attention_resolutions if a not in valid_factors]
        if bad:
            raise ValueError(
                f"attention_resolutions {bad} are not downsampling factors of this UNet; "
                f"valid factors (relative to the input) are {valid_factors}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.num_heads = num_heads
        self.dropout = dropout
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.input_size = input_size
        self.grad_checkpointing = grad_checkpointing
        self.patch_size = patch_size
        self.flow_map = bool(flow_map)
        self.time_scale = float(time_scale)  # checked by the time embedders

        emb_dim = 4 * model_channels
        self.t_embedder = TimestepEmbedder(emb_dim, frequency_embedding_size=model_channels, time_scale=time_scale)
        self.h_embedder = (
            IntervalEmbedder(emb_dim, frequency_embedding_size=model_channels, time_scale=time_scale)
            if self.flow_map
            else None
        )
        self.y_embedder = LabelEmbedder(num_classes, emb_dim, class_dropout_prob) if num_classes > 0 else None

        self.input_conv = nn.Conv2d(in_channels * patch_size**2, model_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * model_channels, emb_dim, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.down_blocks.append(_EmbSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down_blocks.append(_EmbSequential(_Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = _EmbSequential(
            ResBlock(ch, ch, emb_dim, dropout),
            AttentionBlock(ch, num_heads),
            ResBlock(ch, ch, emb_dim, dropout),
        )

        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * model_channels, emb_dim, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(_Upsample(ch))
                    ds //= 2
                self.up_blocks.append(_EmbSequential(*layers))
        assert not skip_channels

        self.out = nn.Sequential(
            group_norm(ch),
            nn.SiLU(),
            _zero(nn.Conv2d(ch, out_channels * patch_size**2, 3, padding=1)),
        )

    @property
    def null_label(self) -> int | None:
        """Index of the null label (``num_classes``), or ``None`` for an unconditional model."""
        return self.num_classes if self.num_classes > 0 else None

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        if h % self.total_downsample or w % self.total_downsample:
            raise ValueError(
                f"input size {h}x{w} is not divisible by {self.total_downsample} "
                f"(= patch_size * 2**(len(channel_mult)-1) for patch_size={self.patch_size}, "
                f"channel_mult={self.channel_mult})"
            )

    def condition(
        self, t: Tensor, y: Tensor | None, batch_size: int, device: torch.device, t_end: Tensor | None = None
    ) -> Tensor:
        """Embedding ``emb(t) [+ emb_h(t_end - t)] [+ emb(y)]`` of shape ``(B, 4 * model_channels)``."""
        t = as_batch_times(t, batch_size, device)
        emb = self.t_embedder(t)
        if t_end is not None:
            if self.h_embedder is None:
                raise ValueError("t_end given, but this UNet was built without flow_map=True (a velocity network)")
            emb = emb + self.h_embedder(as_batch_times(t_end, batch_size, device) - t).to(emb.dtype)
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this UNet is unconditional (num_classes=0) but labels y were given")
            return emb
        return emb + self.y_embedder(y, batch_size, device, train=self.training)

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor, use_ckpt: bool) -> Tensor:
        if use_ckpt:
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _encode(
        self, x: Tensor, t: Tensor, y: Tensor | None, t_end: Tensor | None
    ) -> tuple[Tensor, list[Tensor], Tensor, bool]:
        """The encoder and the middle block: ``(h, skips, emb, use_ckpt)``."""
        self._check_input(x)
        emb = self.condition(t, y, x.shape[0], x.device, t_end)
        # checkpointing cannot recompute under forward-mode AD (a flow-map JVP): plain blocks there
        use_ckpt = (
            self.grad_checkpointing and self.training and torch.is_grad_enabled() and not has_forward_tangent(x, emb)
        )
        p = self.patch_size
        h = self.input_conv(F.pixel_unshuffle(x, p) if p > 1 else x)
        skips = [h]
        for block in self.down_blocks:
            h = self._run(block, h, emb, use_ckpt)
            skips.append(h)
        return self._run(self.middle_block, h, emb, use_ckpt), skips, emb, use_ckpt

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, t_end: Tensor | None = None) -> Tensor:
        """Velocity at ``x`` ``(B, in_channels, H, W)``, time ``t`` ``(B,)`` (0 noise, 1 data), labels ``y``;
        with ``t_end`` (``flow_map=True``) the average velocity over ``[t, t_end]``."""
        h, skips, emb, use_ckpt = self._encode(x, t, y, t_end)
        for block in self.up_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, use_ckpt)
        out = self.out(h)
        p = self.patch_size
        return F.pixel_shuffle(out, p) if p > 1 else out

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features`."""
        return self.model_channels * self.channel_mult[-1]

    def features(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The middle block's output ``(B, feature_channels, H / d, W / d)`` at ``(x, t, y)`` (d: the total
        downsampling): the bottleneck a discriminator head reads (DMD2 puts its classifier there)."""
        return self._encode(x, t, y, None)[0]


UNET_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # The CPU quick start's (16x16 latents): narrow at full resolution, wide where it is cheap. On a
        # 16x16 latent a step costs 1.5x one of UNet-T on 2x2 patches on the 2-core CPU, and it trains to
        # a far lower loss in the same steps (experiments/quickstart/README.md).
        "UNet-XS": MappingProxyType(
            {
                "model_channels": 16,
                "channel_mult": (1, 2, 4),
                "num_res_blocks": 1,
                "attention_resolutions": (4,),
                "num_heads": 4,
            }
        ),
        # CPU tests / smoke runs.
        "UNet-T": MappingProxyType(
            {
                "model_channels": 32,
                "channel_mult": (1, 2),
                "num_res_blocks": 1,
                "attention_resolutions": (2,),
                "num_heads": 4,
            }
        ),
        "UNet-S": MappingProxyType(
            {
                "model_channels": 64,
                "channel_mult": (1, 2, 2),
                "num_res_blocks": 2,
                "attention_resolutions": (2,),
                "num_heads": 4,
            }
        ),
        "UNet-B": MappingProxyType(
            {
                "model_channels": 128,
                "channel_mult": (1, 2, 2, 2),
                "num_res_blocks": 2,
                "attention_resolutions": (2, 4),
                "num_heads": 4,
            }
        ),
        # Roughly ADM's LSUN / CelebA-HQ setting, sized for 32x32x4 latents.
        "UNet-L": MappingProxyType(
            {
                "model_channels": 256,
                "channel_mult": (1, 2, 3, 4),
                "num_res_blocks": 2,
                "attention_resolutions": (2, 4, 8),
                "num_heads": 8,
            }
        ),
    }
)
"""Named UNet architectures (attention_resolutions are downsampling factors relative to the input)."""


def unet_preset(
    name: str,
    *,
    input_size: int = 32,
    in_channels: int = 4,
    out_channels: int | None = None,
    **overrides: Any,
) -> UNet:
    """Build a named UNet (see :data:`UNET_PRESETS`).

    ``out_channels`` defaults to ``in_channels``. Other keywords (``num_classes``,
    ``class_dropout_prob``, ``dropout``, ``grad_checkpointing``, ``flow_map``, or architecture fields) go to
    :class:`UNet`; unknown keywords raise ``TypeError``.
    """
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; valid names: {', '.join(UNET_PRESETS)}")
    cfg: dict[str, Any] = dict(UNET_PRESETS[name])
    cfg.update(overrides)
    return UNet(
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
        input_size=input_size,
        **cfg,
    )
