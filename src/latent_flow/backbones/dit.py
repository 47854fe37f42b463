"""Diffusion Transformer (DiT, Peebles & Xie 2023) used as a velocity network.

``DiT.forward(x, t, y=None)`` maps a noisy latent ``x`` ``(B, in_channels, H, W)`` at time
``t`` ``(B,)`` in ``[0, 1]`` (**t = 0 noise, t = 1 data**) and optional class labels ``y`` to a
velocity ``(B, out_channels, H, W)``. Built with ``flow_map=True`` it also takes ``t_end`` ``(B,)``,
the time a flow-map jump from ``t`` lands at, and returns the average velocity over ``[t, t_end]``
(:mod:`latent_flow.flow.meanflow`); the interval ``t_end - t`` enters through an
:class:`~latent_flow.backbones.embeddings.IntervalEmbedder` added to the time embedding, which is
exactly zero for ``t_end = t`` (or ``None``): that call is the plain velocity network.

Architecture: stride-``patch_size`` convolutional patch embedding, fixed 2-D sin-cos position
embedding (a buffer, not trained), continuous-time embedding, label embedding with a null row
and per-sample label dropout in training, adaLN-Zero transformer blocks (attention through
``backbones.attention`` (SDPA but on the CPU in bf16), GELU(tanh) MLP) and a zero-initialised adaLN final layer, so
every block starts as the identity and the network outputs exactly zero at initialisation.

``in_channels`` may exceed ``out_channels``: spatial conditions (masks, semantic maps) are
concatenated to the latent by the caller and only the latent velocity is predicted.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latent_flow.backbones.attention import attention, has_forward_tangent
from latent_flow.backbones.embeddings import (
    IntervalEmbedder,
    LabelEmbedder,
    TimestepEmbedder,
    as_batch_times,
    sincos_pos_embed_2d,
)

__all__ = ["DiT", "DiTBlock", "Attention", "DIT_PRESETS", "dit_preset"]


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of tokens ``(B, N, D)`` by per-sample ``shift``, ``scale`` ``(B, D)``."""
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention over tokens with its own qkv projection (:func:`attention`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        # qkv features ordered (3, heads, head_dim): the layout of the saved qkv weights
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out = attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning on the vector ``c`` ``(B, D)``.

    The modulation linear is zero-initialised by :class:`DiT`, so the gates are zero and the
    block is the identity at initialisation.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class _FinalLayer(nn.Module):
    """adaLN LayerNorm + linear projection of each token to ``patch_size**2 * out_channels``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer velocity network.

    Args:
        input_size: spatial size ``H = W`` of the (latent) input; must be divisible by
            ``patch_size``. Only square inputs of exactly this size are accepted.
        patch_size: side of the square patches (the patch-embedding conv stride).
        in_channels: channels of ``x`` (latent channels plus any concatenated spatial condition).
        out_channels: channels of the predicted velocity (``<= in_channels`` in typical use).
        hidden_size, depth, num_heads, mlp_ratio: transformer width, number of blocks, heads,
            MLP expansion.
        num_classes: number of class labels; 0 means unconditional (no label embedding; passing
            ``y`` raises). Otherwise the null label is ``num_classes``.
        class_dropout_prob: per-sample probability of replacing a label by the null label during
            training (classifier-free guidance).
        grad_checkpointing: recompute block activations in the backward pass while training.
        flow_map: also embed the interval ``t_end - t`` of a flow-map jump (an
            :class:`~latent_flow.backbones.embeddings.IntervalEmbedder`, ``h_embedder``), so the
            network is ``u(x, t, t_end)``; ``t_end = t`` gives exactly the velocity network.
        time_scale: factor on ``t`` (and on the interval) before the sinusoidal embeddings (1000: DiT / ADM;
            a flow map's JVP differentiates through it, so smaller values give a smoother function of time,
            the sCM finding; ``+backbone.time_scale=...``).

    ``forward(x, t, y=None, t_end=None)``: ``t`` ``(B,)`` in ``[0, 1]`` with t = 0 noise and t = 1 data;
    ``y`` ``(B,)`` long in ``[0, num_classes]`` or ``None`` (all null).
    """

    def __init__(
        self,
        input_size: int,
        patch_size: int,
        in_channels: int,
        out_channels: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        class_dropout_prob: float = 0.1,
        grad_checkpointing: bool = False,
        flow_map: bool = False,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        if patch_size < 1 or input_size < 1:
            raise ValueError(f"input_size ({input_size}) and patch_size ({patch_size}) must be positive")
        if input_size % patch_size:
            raise ValueError(
                f"input_size {input_size} is not divisible by patch_size {patch_size}; "
                f"choose an input size that is a multiple of {patch_size} or a smaller patch"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by 4 (2-D sin-cos position embedding)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.grad_checkpointing = grad_checkpointing
        self.flow_map = bool(flow_map)
        self.time_scale = float(time_scale)  # checked by the time embedders
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)
        self.h_embedder = IntervalEmbedder(hidden_size, time_scale=time_scale) if self.flow_map else None
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_size, self.grid_size).unsqueeze(0), persistent=False
        )
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = _FinalLayer(hidden_size, patch_size, out_channels)
        self.initialize_weights()

    @property
    def null_label(self) -> int | None:
        """Index of the null label (``num_classes``), or ``None`` for an unconditional model."""
        return self.num_classes if self.num_classes > 0 else None

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embeddings, zero adaLN modulations and zero final layer."""

        def _basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.h_embedder is not None:  # first layer as the time MLP's, last layer zero: adds nothing at init
            nn.init.normal_(self.h_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.h_embedder.mlp[2].weight)
            nn.init.zeros_(self.h_embedder.mlp[2].bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, N, p*p*C)``; tokens row-major, each patch flattened as ``(p, p, C)`` (the order
        the saved final-layer weights were trained in: it must not change)."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"spatial size {h}x{w} is not divisible by patch_size {p}")
        return rearrange(x, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """Inverse of :meth:`patchify` for a square grid: ``(B, N, p*p*C) -> (B, C, H, W)``."""
        _, n, d = tokens.shape
        p = self.patch_size
        g = int(round(n**0.5))
        if g * g != n or d % (p * p):
            raise ValueError(f"cannot unpatchify tokens of shape {tuple(tokens.shape)} with patch_size {p}")
        return rearrange(tokens, "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)", gh=g, p1=p, p2=p)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise ValueError(
                f"DiT was built for {self.input_size}x{self.input_size} inputs, got {x.shape[2]}x{x.shape[3]}"
            )

    def condition(
        self, t: Tensor, y: Tensor | None, batch_size: int, device: torch.device, t_end: Tensor | None = None
    ) -> Tensor:
        """Conditioning vector ``c = emb(t) [+ emb_h(t_end - t)] [+ emb(y)]`` of shape ``(B, hidden_size)``."""
        t = as_batch_times(t, batch_size, device)
        c = self.t_embedder(t)
        if t_end is not None:
            if self.h_embedder is None:
                raise ValueError("t_end given, but this DiT was built without flow_map=True (a velocity network)")
            c = c + self.h_embedder(as_batch_times(t_end, batch_size, device) - t).to(c.dtype)
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this DiT is unconditional (num_classes=0) but labels y were given")
            return c
        return c + self.y_embedder(y, batch_size, device, train=self.training)

    def _tokens(self, x: Tensor, t: Tensor, y: Tensor | None, t_end: Tensor | None) -> tuple[Tensor, Tensor]:
        """The transformer's output tokens ``(B, N, hidden_size)`` and the conditioning vector."""
        self._check_input(x)
        c = self.condition(t, y, x.shape[0], x.device, t_end)
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        # checkpointing cannot recompute under forward-mode AD (a flow-map JVP): plain blocks there
        use_ckpt = (
            self.grad_checkpointing and self.training and torch.is_grad_enabled() and not has_forward_tangent(h, c)
        )
        for block in self.blocks:
            if use_ckpt:
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return h, c

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, t_end: Tensor | None = None) -> Tensor:
        """Velocity at ``x`` ``(B, in_channels, H, W)``, time ``t`` ``(B,)`` (0 noise, 1 data), labels ``y``;
        with ``t_end`` (``flow_map=True``) the average velocity over ``[t, t_end]``."""
        h, c = self._tokens(x, t, y, t_end)
        return self.unpatchify(self.final_layer(h, c))

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features`."""
        return self.hidden_size

    def features(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The last block's tokens as a map ``(B, hidden_size, H / p, W / p)`` at ``(x, t, y)``: what a
        discriminator head reads (DMD2 puts its classifier on the score network's features)."""
        h, _ = self._tokens(x, t, y, None)
        return rearrange(h, "b (gh gw) d -> b d gh gw", gh=self.grid_size)


# name -> (depth, hidden_size, num_heads)
_DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "XS": (4, 64, 4),  # CPU tests
    "T": (6, 128, 4),  # CPU experiments
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
_DIT_PATCHES: dict[str, tuple[int, ...]] = {
    "XS": (1, 2),
    "T": (1, 2),
    "S": (2, 4, 8),
    "B": (2, 4, 8),
    "L": (2, 4, 8),
    "XL": (2, 4, 8),
}

DIT_PRESETS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        f"DiT-{size}/{patch}": MappingProxyType(
            {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch}
        )
        for size, (depth, hidden, heads) in _DIT_SIZES.items()
        for patch in _DIT_PATCHES[size]
    }
)
"""Named DiT architectures: ``"DiT-<size>/<patch>"`` -> depth, hidden_size, num_heads, patch_size."""


def dit_preset(
    name: str,
    *,
    input_size: int = 32,
    in_channels: int = 4,
    out_channels: int | None = None,
    **overrides: Any,
) -> DiT:
    """Build a named DiT (see :data:`DIT_PRESETS`).

    ``out_channels`` defaults to ``in_channels``. Any other keyword (``num_classes``,
    ``class_dropout_prob``, ``mlp_ratio``, ``grad_checkpointing``, ``flow_map``, or an architecture field such
    as ``depth``) is passed to :class:`DiT`; unknown keywords raise ``TypeError``.
    """
    if name not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; valid names: {', '.join(DIT_PRESETS)}")
    cfg: dict[str, Any] = dict(DIT_PRESETS[name])
    cfg.update(overrides)
    return DiT(
        input_size=input_size,
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
        **cfg,
    )
