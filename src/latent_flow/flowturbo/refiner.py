"""FlowTurbo's velocity refiner (Zhao et al. 2024; ``docs/methods.md`` section 3).

Time convention: ``t`` in [0, 1], **t = 0 noise, t = 1 data**; velocities are ``d x_t / dt``.

The refiner ``r_phi`` is a light network of the base model's own family that predicts how the
velocity changes along a trajectory:

    v(x_t, t) ~= v_prev + r_phi(concat(x_in, v_prev), t, y)

where ``x_in`` is the base network's input (the latent plus any spatial condition channels) and
``v_prev`` is the previous velocity (``C`` channels), so the refiner sees ``2C + S`` channels,
with its own time and label embeddings. Its output layer starts at zero, so a fresh refiner
returns ``v_prev`` unchanged.

- DiT base: a :class:`~latent_flow.backbones.dit.DiT` of depth 1 (patch embedding, one
  adaLN-Zero block, zero-initialised final layer) with the base's width, heads and patch size.
- UNet base: :class:`UNetRefiner`, the base's input conv width and one
  :class:`~latent_flow.backbones.unet.ResBlock` at full resolution, scale-shift conditioned on the
  time + label embedding, then a zero-initialised output conv.

:func:`build_refiner` derives the architecture from the base model's hyper-parameters
(``LatentFlowModule.hparams``); :func:`refiner_spec` is the plain dict that rebuilds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from latent_flow.backbones.dit import DIT_PRESETS, DiT
from latent_flow.backbones.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    as_batch_times,
)
from latent_flow.backbones.unet import UNET_PRESETS, ResBlock, group_norm
from latent_flow.conditioning import build_condition

__all__ = ["UNetRefiner", "VelocityRefiner", "build_refiner", "parameter_count", "refiner_spec"]


class UNetRefiner(nn.Module):
    """One ADM residual block at full resolution with time (+ label) conditioning.

    ``forward(x, t, y)``: ``x`` ``(B, in_channels, H, W)``, ``t`` ``(B,)`` (0 noise, 1 data),
    ``y`` ``(B,)`` labels in ``[0, num_classes]`` (``num_classes`` = null) or ``None``.
    Labels are never dropped inside (``RefinerModule`` drops them itself, identically for the
    base and the refiner calls).
    """

    def __init__(
        self, in_channels: int, out_channels: int, model_channels: int, num_classes: int = 0, num_blocks: int = 1
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"refiner num_blocks must be >= 1, got {num_blocks}")
        emb_dim = 4 * model_channels
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.t_embedder = TimestepEmbedder(emb_dim, frequency_embedding_size=model_channels)
        self.y_embedder = LabelEmbedder(num_classes, emb_dim, 0.0) if num_classes > 0 else None
        self.input_conv = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.blocks = nn.ModuleList([ResBlock(model_channels, model_channels, emb_dim) for _ in range(num_blocks)])
        self.out = nn.Sequential(
            group_norm(model_channels), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"refiner expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        emb = self.t_embedder(as_batch_times(t, x.shape[0], x.device))
        if self.y_embedder is not None:
            emb = emb + self.y_embedder(y, x.shape[0], x.device, train=False)
        elif y is not None:
            raise ValueError("this refiner is unconditional (num_classes=0) but labels y were given")
        h = self.input_conv(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class VelocityRefiner(nn.Module):
    """``r_phi(x_in, v_prev, t, y)``: the velocity *offset*; the refined velocity is ``v_prev + r_phi``.

    Args:
        spec: from :func:`refiner_spec` (``family``, channels, architecture fields).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        spec = dict(spec)
        self.spec = spec
        family = spec["family"]
        in_ch = int(spec["in_channels"])
        out_ch = int(spec["latent_channels"])
        num_classes = int(spec["num_classes"])
        if family == "dit":
            self.net: nn.Module = DiT(
                input_size=int(spec["input_size"]),
                patch_size=int(spec["patch_size"]),
                in_channels=in_ch,
                out_channels=out_ch,
                hidden_size=int(spec["hidden_size"]),
                depth=int(spec["num_blocks"]),
                num_heads=int(spec["num_heads"]),
                mlp_ratio=float(spec["mlp_ratio"]),
                num_classes=num_classes,
                class_dropout_prob=0.0,
            )
        elif family == "unet":
            self.net = UNetRefiner(in_ch, out_ch, int(spec["model_channels"]), num_classes, int(spec["num_blocks"]))
        else:
            raise ValueError(f"unknown refiner family {family!r}; valid: dit, unet")
        self.latent_channels = out_ch

    def forward(self, x_in: Tensor, v_prev: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Offset ``(B, C, H, W)`` for the base input ``x_in`` ``(B, C+S, H, W)`` and ``v_prev`` ``(B, C, H, W)``."""
        if v_prev.shape[1] != self.latent_channels:
            raise ValueError(f"v_prev must have {self.latent_channels} channels, got {tuple(v_prev.shape)}")
        return self.net(torch.cat([x_in, v_prev.to(x_in.dtype)], dim=1), t, y)


def refiner_spec(
    base_hparams: dict[str, Any], *, num_blocks: int = 1, condition: nn.Module | None = None
) -> dict[str, Any]:
    """The refiner architecture for a base ``LatentFlowModule``'s hyper-parameters.

    Channels: ``in_channels = 2 C + S`` (latent, spatial condition channels of the base, previous
    velocity). Width, heads, patch size (DiT) or base width (UNet) are the base's. ``condition``:
    the base's condition encoder (``model.condition``); rebuilt from the hyper-parameters if omitted.
    """
    hp = dict(base_hparams)
    backbone = dict(hp["backbone"])
    name = backbone.pop("name")
    channels, height, _ = (int(v) for v in hp["latent_shape"])
    if condition is None:
        cond_opts = dict(hp["condition"])
        cond_name = cond_opts.pop("name")
        cond_opts.pop("label_dropout", None)
        cond_opts["latent_shape"] = tuple(int(v) for v in hp["latent_shape"])
        condition = build_condition(cond_name, num_classes=int(hp.get("num_classes", 0)), **cond_opts)
    spec: dict[str, Any] = {
        "base_backbone": name,
        "latent_channels": channels,
        "spatial_channels": int(condition.spatial_channels),
        "in_channels": 2 * channels + int(condition.spatial_channels),
        "input_size": height,
        "num_classes": int(hp.get("num_classes", 0)) if condition.uses_label else 0,
        "num_blocks": int(num_blocks),
    }
    if name.startswith("DiT-"):
        if name not in DIT_PRESETS:
            raise ValueError(f"unknown DiT preset {name!r} in the base checkpoint")
        arch = {
            **DIT_PRESETS[name],
            **{k: v for k, v in backbone.items() if k in ("hidden_size", "num_heads", "patch_size", "mlp_ratio")},
        }
        spec.update(
            family="dit",
            hidden_size=int(arch["hidden_size"]),
            num_heads=int(arch["num_heads"]),
            patch_size=int(arch["patch_size"]),
            mlp_ratio=float(arch.get("mlp_ratio", 4.0)),
        )
    elif name.startswith("UNet-"):
        if name not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {name!r} in the base checkpoint")
        arch = {**UNET_PRESETS[name], **{k: v for k, v in backbone.items() if k == "model_channels"}}
        spec.update(family="unet", model_channels=int(arch["model_channels"]))
    else:
        raise ValueError(f"FlowTurbo has refiners for DiT-* and UNet-* backbones, got {name!r}")
    return spec


def build_refiner(base_hparams: dict[str, Any], *, num_blocks: int = 1) -> VelocityRefiner:
    """A fresh (zero-output) refiner for the base model described by ``base_hparams``."""
    return VelocityRefiner(refiner_spec(base_hparams, num_blocks=num_blocks))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
