"""Embeddings shared by the velocity backbones (DiT and UNet).

Time convention: ``t`` is continuous in ``[0, 1]`` with **t = 0 noise and t = 1 data**.
The sinusoidal embedding multiplies ``t`` by ``time_scale`` (1000 by default) so that the
frequencies cover the same range as the integer timesteps of discrete diffusion models;
``t`` is never rounded, so nearby times give different embeddings.

Flow maps (:mod:`latent_flow.flow.meanflow`): a backbone built with ``flow_map=True`` also takes the
time ``t_end`` its jump lands at and embeds the interval ``h = t_end - t`` with an
:class:`IntervalEmbedder`, whose output is *exactly zero at h = 0* for any weights (it subtracts its
own embedding of 0) and zero everywhere at initialisation (last layer zero): ``t_end = t`` is the
plain velocity network, and a flow checkpoint loaded into a flow-map backbone is the same model.

Labels: a :class:`LabelEmbedder` for ``num_classes`` classes owns ``num_classes + 1`` rows;
the extra row at index ``num_classes`` is the *null* label used for unconditional
prediction and classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "timestep_embedding",
    "sincos_pos_embed_2d",
    "TimestepEmbedder",
    "IntervalEmbedder",
    "LabelEmbedder",
    "as_batch_times",
]


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    time_scale: float = 1000.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Sinusoidal embedding of continuous times.

    Args:
        t: times of shape ``(B,)`` in ``[0, 1]`` (t = 0 noise, t = 1 data); any float values work.
        dim: embedding width.
        time_scale: ``t`` is multiplied by this before the sinusoid (1000 maps [0, 1] onto the
            usual diffusion timestep range).
        max_period: the lowest frequency is ``1 / max_period``.

    Returns:
        float32 tensor ``(B, dim)`` (float64 for float64 ``t``, so that float64 derivative checks of
        a backbone see float64 times): ``[cos(s t f_0..f_{h-1}), sin(s t f_0..f_{h-1})]`` with
        ``h = dim // 2`` geometrically spaced frequencies (one zero column appended when ``dim``
        is odd).
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=dtype) / max(half, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = (t.to(dtype) * time_scale)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _sincos_1d(embed_dim: int, positions: Tensor) -> Tensor:
    """``(N,) -> (N, embed_dim)``: ``[sin(p w_0..), cos(p w_0..)]`` with ``w_i = 10000^(-2i/D)``."""
    half = embed_dim // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64, device=positions.device) / half))
    args = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, device: torch.device | str | None = None) -> Tensor:
    """Fixed 2-D sine-cosine position embedding for a square ``grid_size x grid_size`` token grid.

    The first half of the channels encodes the row index, the second half the column index.
    Tokens are ordered row-major (row outer, column inner), the order produced by
    ``conv(x).flatten(2).transpose(1, 2)``.

    Returns:
        float32 tensor ``(grid_size**2, embed_dim)``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos embedding, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb_rows = _sincos_1d(embed_dim // 2, rows.reshape(-1))
    emb_cols = _sincos_1d(embed_dim // 2, cols.reshape(-1))
    return torch.cat([emb_rows, emb_cols], dim=1).to(torch.float32)


class TimestepEmbedder(nn.Module):
    """Continuous time ``t`` in [0, 1] (t = 0 noise, t = 1 data) -> vector ``(B, hidden_size)``.

    Sinusoidal features of width ``frequency_embedding_size`` (``t`` scaled by ``time_scale``)
    followed by ``Linear -> SiLU -> Linear``.
    """

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        time_scale: float = 1000.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.frequency_embedding_size = frequency_embedding_size
        self.time_scale = time_scale
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_embedding(
            t, self.frequency_embedding_size, time_scale=self.time_scale, max_period=self.max_period
        )
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class IntervalEmbedder(TimestepEmbedder):
    """Interval ``h = t_end - t`` of a flow-map jump -> ``emb(h) - emb(0)`` ``(B, hidden_size)``.

    A :class:`TimestepEmbedder` (sinusoid of ``time_scale * h``, ``Linear -> SiLU -> Linear``) minus its
    own value at ``h = 0``, so ``h = 0`` (``t_end = t``, the instantaneous velocity) adds exactly nothing
    to the time embedding, whatever the weights; the last linear starts at zero, so at initialisation
    nothing is added for any ``h``. Added to the time embedding of ``t`` by the backbones: a flow-map
    backbone with ``t_end = t`` *is* the flow backbone (MeanFlow's ablation embeds ``(t, t - r)``, the
    same pair).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__(hidden_size, frequency_embedding_size, time_scale)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, h: Tensor) -> Tensor:
        both = super().forward(torch.cat([h, torch.zeros_like(h)]))  # one MLP call for emb(h) and emb(0)
        diff = both[: h.shape[0]] - both[h.shape[0] :]
        # rows with h = 0 exactly: exactly zero (a batched matmul may round two equal rows differently); its
        # derivative there reads 0, which a flow-map target multiplies by t_end - t = 0 anyway
        return torch.where((h == 0)[:, None], torch.zeros_like(diff), diff)


class LabelEmbedder(nn.Module):
    """Class labels -> vectors, with a null class at index ``num_classes``.

    ``y`` holds values in ``[0, num_classes]``; ``num_classes`` itself is the null label.
    During training each label is replaced by the null label with probability
    ``dropout_prob`` (per sample), which trains the unconditional model used by
    classifier-free guidance.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"LabelEmbedder needs num_classes >= 1, got {num_classes}")
        if not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(f"dropout_prob must be in [0, 1], got {dropout_prob}")
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_label(self) -> int:
        """Index of the null (unconditional) label: ``num_classes``."""
        return self.num_classes

    def null_labels(self, batch_size: int, device: torch.device | str) -> Tensor:
        """A ``(batch_size,)`` long tensor filled with the null label."""
        return torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)

    def drop_labels(self, y: Tensor, p: float, force_drop: Tensor | None = None) -> Tensor:
        """Replace each label by the null label with probability ``p`` (independently per sample).

        ``force_drop`` (bool ``(B,)``), when given, replaces exactly the marked labels instead
        and ``p`` is ignored.
        """
        if force_drop is not None:
            drop = force_drop.to(device=y.device, dtype=torch.bool)
        elif p <= 0.0:
            return y
        else:
            drop = torch.rand(y.shape[0], device=y.device) < p
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def forward(
        self,
        y: Tensor | None,
        batch_size: int,
        device: torch.device | str,
        *,
        train: bool,
        force_drop: Tensor | None = None,
    ) -> Tensor:
        """Embed labels ``y`` ``(B,)``; ``y=None`` means all null. Dropout only when ``train``."""
        if y is None:
            y = self.null_labels(batch_size, device)
        else:
            if y.shape != (batch_size,):
                raise ValueError(f"y must have shape ({batch_size},), got {tuple(y.shape)}")
            y = y.to(device=device, dtype=torch.long)
            if force_drop is not None:
                y = self.drop_labels(y, 0.0, force_drop=force_drop)
            elif train:
                y = self.drop_labels(y, self.dropout_prob)
        return self.embedding_table(y)


def as_batch_times(t: Tensor | float, batch_size: int, device: torch.device | str) -> Tensor:
    """Return ``t`` as a float tensor ``(batch_size,)``; a scalar (0-d or Python float) is broadcast.

    Raises ``ValueError`` for any other shape.
    """
    t = torch.as_tensor(t, device=device)
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if t.ndim == 0:
        return t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"t must have shape ({batch_size},) or be a scalar, got {tuple(t.shape)}")
    return t
