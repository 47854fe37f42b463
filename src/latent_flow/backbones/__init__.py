"""Velocity-network backbones: DiT and an ADM-style UNet.

Every backbone is called as ``net(x, t, y=None) -> velocity`` with ``x`` ``(B, in_channels, H, W)``,
``t`` ``(B,)`` continuous in ``[0, 1]`` (**t = 0 noise, t = 1 data**) and ``y`` ``(B,)`` long labels in
``[0, num_classes]`` where ``num_classes`` is the null label (``y=None`` means all null). The output has
shape ``(B, out_channels, H, W)`` and is exactly zero at initialisation. Built with ``flow_map=True``
they also take ``t_end`` ``(B,)`` (keyword) and return the average velocity of a flow-map jump from
``t`` to ``t_end`` (``t_end = t``: the velocity; :mod:`latent_flow.flow.meanflow`).

Build one by name with :func:`build_backbone` (``"DiT-B/2"``, ``"UNet-S"``, ...; see
:data:`BACKBONE_PRESETS`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from latent_flow.backbones.dit import DIT_PRESETS, DiT, dit_preset
from latent_flow.backbones.embeddings import (
    IntervalEmbedder,
    LabelEmbedder,
    TimestepEmbedder,
    sincos_pos_embed_2d,
    timestep_embedding,
)
from latent_flow.backbones.unet import UNET_PRESETS, UNet, unet_preset

__all__ = [
    "DiT",
    "UNet",
    "dit_preset",
    "unet_preset",
    "build_backbone",
    "BACKBONE_PRESETS",
    "DIT_PRESETS",
    "UNET_PRESETS",
    "TimestepEmbedder",
    "IntervalEmbedder",
    "LabelEmbedder",
    "timestep_embedding",
    "sincos_pos_embed_2d",
]

BACKBONE_PRESETS: tuple[str, ...] = (*DIT_PRESETS, *UNET_PRESETS)
"""Every preset name accepted by :func:`build_backbone`."""


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """Build a backbone by preset name: ``"DiT-*"`` -> :func:`dit_preset`, ``"UNet-*"`` -> :func:`unet_preset`.

    ``overrides`` (``input_size``, ``in_channels``, ``out_channels``, ``num_classes``, ...) go to the
    preset function; unknown keywords raise ``TypeError``, unknown names ``ValueError``.
    """
    if name.startswith("DiT-"):
        return dit_preset(name, **overrides)
    if name.startswith("UNet-"):
        return unet_preset(name, **overrides)
    raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_PRESETS)}")
