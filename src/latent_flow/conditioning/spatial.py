"""Spatial conditions: inpainting and semantic-map-to-image (LFM, Dao et al. 2023, section 2 of methods.md).

Both concatenate channels to the noisy latent ``x_t`` (time convention: t = 0 noise, t = 1 data)
and may be combined with class labels (``use_label=True``; the null label is the backbone's, as
for ``condition=label``, but the label dropout is done here, jointly with the spatial one: see
"Condition dropout" below).

``inpaint`` (``spatial_channels = C + 1``)
    ``cond = {"masked_latent": (B, C, h, w), "mask": (B, 1, h, w)}``: the normalised autoencoder
    latent of the masked image (holes set to 0, i.e. mid-grey in [-1, 1]) and the known-pixel mask
    brought to latent resolution by area averaging (fraction of known pixels per latent cell).
    Mask convention (everywhere): **1 = known, 0 = hole** (:mod:`latent_flow.data.masks`).
    Null condition: an all-zero masked latent and an all-zero mask ("nothing is known").

``semantic`` (``spatial_channels = embed_channels``)
    ``cond = {"semantic": (B, H, W) long}``: the class-id map at image resolution. In
    :meth:`SemanticCondition.network_inputs` it is one-hot encoded (``K + 1`` channels) and brought
    to latent resolution by a small convolutional encoder with ``log2(H / h)`` stride-2 convolutions.
    The encoder is a submodule of the condition encoder, which is a submodule of the
    LightningModule: it trains with the velocity network (and has its own EMA copy).
    Null condition: the map filled with the extra id ``K = num_semantic_classes``, encoded by the
    same network, i.e. a *learned* null embedding (like the null class of labels).

Condition dropout (:meth:`SpatialCondition.train_dropout`, training only), one uniform draw ``u``
per sample, ``p = cond_dropout``, ``q = label_dropout``:

- ``u < p``: the **whole** condition is null, the spatial part *and* the label together, i.e.
  exactly ``null(cond)``, the unconditional velocity that classifier-free guidance extrapolates from;
- spatial + label models only, ``p <= u < p + (1 - p) q``: the label alone is null (map / known
  region kept);
- otherwise nothing is dropped.

So P(joint null) = P(spatial null) = ``p``, P(label null) = ``p + (1 - p) q`` (0.19 for the
defaults 0.1 / 0.1), and the spatial part is never dropped without the label. Spatial + label
models build their backbone with ``class_dropout_prob = 0``: independent drops in the backbone
gave the joint null only ``p q`` of the samples (1%). Without labels this is the old per-sample
spatial drop with probability ``p``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_flow.conditioning.base import Cond, ConditionEncoder
from latent_flow.data.masks import MaskGenerator

__all__ = [
    "InpaintCondition",
    "SemanticCondition",
    "SemanticEncoder",
    "SpatialCondition",
    "build_spatial_condition",
    "cache_extras",
    "check_condition_data",
    "check_semantic_ids",
    "mask_to_latent",
]


def mask_to_latent(mask: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """Known-pixel mask ``(B, 1, H, W)`` (1 = known) -> fraction of known pixels per latent cell ``(B, 1, h, w)``."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (B, 1, H, W), got {tuple(mask.shape)}")
    mask = mask.float()
    if tuple(mask.shape[-2:]) == tuple(latent_size):
        return mask
    return F.interpolate(mask, size=tuple(latent_size), mode="area")


def check_semantic_ids(semantic: Tensor, num_semantic_classes: int, what: str = "semantic map") -> None:
    """Raise a ``ValueError`` naming the unknown ids when ``semantic`` has ids outside ``[0, K)``."""
    bad = (semantic < 0) | (semantic >= num_semantic_classes)
    if bool(bad.any()):
        ids = sorted({int(v) for v in semantic[bad].unique()[:10].tolist()})
        raise ValueError(
            f"{what} has class ids {ids} outside [0, {num_semantic_classes - 1}]: this model knows "
            f"{num_semantic_classes} semantic classes (0 = background)"
        )


class SpatialCondition(ConditionEncoder):
    """Shared part of the spatial conditions: optional class labels and per-sample condition dropout.

    ``cond_dropout`` (p): probability of the joint null (spatial condition and label together, what
    CFG's :meth:`null` gives); ``label_dropout`` (q, with ``use_label`` only): probability of the label
    alone among the other samples. See the module docstring; :attr:`drops_labels` tells the
    LightningModule to build its backbone without label dropout of its own.
    """

    #: keys of the spatial tensors in ``cond``
    spatial_keys: tuple[str, ...] = ()

    def __init__(
        self, *, use_label: bool = False, num_classes: int = 0, cond_dropout: float = 0.1, label_dropout: float = 0.1
    ) -> None:
        super().__init__()
        if not 0.0 <= float(cond_dropout) < 1.0:
            raise ValueError(f"condition.cond_dropout must be in [0, 1), got {cond_dropout}")
        if not 0.0 <= float(label_dropout) <= 1.0:
            raise ValueError(f"condition.label_dropout must be in [0, 1], got {label_dropout}")
        self.cond_dropout = float(cond_dropout)
        self.uses_label = bool(use_label)
        self.label_dropout = float(label_dropout) if self.uses_label else 0.0
        if self.uses_label and int(num_classes) < 1:
            raise ValueError(
                f"condition.use_label=true needs a dataset with class labels, got num_classes={num_classes}"
            )
        self.num_classes = int(num_classes) if self.uses_label else 0

    # labels --------------------------------------------------------------
    def _label_from_batch(self, batch: dict[str, Tensor]) -> Cond:
        if not self.uses_label:
            return {}
        if "label" not in batch:
            raise KeyError(f"{type(self).__name__} with use_label=true: the batch has no 'label' entry")
        return {"label": batch["label"].long()}

    def _null_label(self, cond: Cond) -> Cond:
        if not self.uses_label:
            return {}
        return {"label": torch.full_like(cond["label"], self.num_classes)}

    # interface -----------------------------------------------------------
    def spatial_null(self, cond: Cond) -> Cond:  # pragma: no cover - abstract
        raise NotImplementedError

    def null(self, cond: Cond) -> Cond:
        return {**self.spatial_null(cond), **self._null_label(cond)}

    @property
    def drops_labels(self) -> bool:
        """Whether :meth:`train_dropout` drops the labels (then the backbone must not drop them too)."""
        return self.uses_label

    def train_dropout(self, cond: Cond) -> Cond:
        """Joint null with probability ``cond_dropout``, else the label alone with ``label_dropout`` (training only).

        One uniform draw per sample (module docstring): ``u < p`` -> ``null(cond)`` (spatial and label);
        ``p <= u < p + (1 - p) q`` -> only the label null (spatial + label models).
        """
        p, q = self.cond_dropout, self.label_dropout
        if not self.training or (p <= 0.0 and q <= 0.0):
            return cond
        first = cond[self.spatial_keys[0]]
        u = torch.rand(first.shape[0], device=first.device)
        joint = u < p
        out = dict(cond)
        null = self.spatial_null(cond)
        for key in self.spatial_keys:
            value = cond[key]
            keep = joint.view(-1, *([1] * (value.dim() - 1)))
            out[key] = torch.where(keep, null[key].to(value.device), value)
        if self.uses_label and "label" in cond:
            label = cond["label"]
            drop_label = (u < p + (1.0 - p) * q).to(label.device)
            out["label"] = torch.where(drop_label, torch.full_like(label, self.num_classes), label)
        return out

    def extra_repr(self) -> str:
        extra = f", cond_dropout={self.cond_dropout}"
        return super().extra_repr() + extra + (f", label_dropout={self.label_dropout}" if self.uses_label else "")


class InpaintCondition(SpatialCondition):
    """Masked-image latent + known-pixel mask at latent resolution (see the module docstring).

    ``masks`` (mask generator settings, :class:`~latent_flow.data.masks.MaskGenerator`, with its
    mask families, e.g. ``families: {strokes: 1, half: 1, centre: 1, part: 1}``) and ``mask_variants``
    (masks per image in the latent cache) are kept for the data pipeline and for sampling with
    generated masks; they do not change the network. Bad settings or family names raise here.
    """

    spatial_keys = ("masked_latent", "mask")

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        *,
        resolution: int,
        masks: dict | None = None,
        mask_variants: int = 4,
        use_label: bool = False,
        num_classes: int = 0,
        cond_dropout: float = 0.1,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(
            use_label=use_label, num_classes=num_classes, cond_dropout=cond_dropout, label_dropout=label_dropout
        )
        channels, height, width = (int(v) for v in latent_shape)
        self.latent_channels = channels
        self.latent_size = (height, width)
        self.resolution = int(resolution)
        self.masks = dict(masks or {})
        self.mask_variants = int(mask_variants)
        if self.mask_variants < 1:
            raise ValueError(f"condition.mask_variants must be >= 1, got {mask_variants}")
        try:  # settings and family names checked now, not when the latent cache is built
            self.mask_generator()
        except TypeError as error:
            raise ValueError(f"condition.masks: {error} (options of latent_flow.data.masks.MaskGenerator)") from error
        self.spatial_channels = channels + 1

    def mask_generator(self):
        """The :class:`~latent_flow.data.masks.MaskGenerator` of the training masks."""
        return MaskGenerator(self.resolution, **self.masks)

    def encode(self, masked_latent: Tensor, mask: Tensor) -> Cond:
        """Condition tensors from a normalised masked-image latent and an image-resolution mask (1 = known)."""
        if tuple(masked_latent.shape[1:]) != (self.latent_channels, *self.latent_size):
            raise ValueError(
                f"masked_latent must have shape (B, {self.latent_channels}, {self.latent_size[0]}, "
                f"{self.latent_size[1]}), got {tuple(masked_latent.shape)}"
            )
        if mask.dim() == 3:
            mask = mask[:, None]
        return {"masked_latent": masked_latent.float(), "mask": mask_to_latent(mask, self.latent_size)}

    def from_batch(self, batch: dict[str, Tensor]) -> Cond:
        missing = [k for k in ("masked_latent", "mask") if k not in batch]
        if missing:
            raise KeyError(
                f"condition=inpaint: the batch has no {missing} entries; the latent cache must be built "
                "with masks (LatentDataModule(cache_extras=cache_extras(condition config)))"
            )
        return {**self.encode(batch["masked_latent"], batch["mask"]), **self._label_from_batch(batch)}

    def spatial_null(self, cond: Cond) -> Cond:
        return {"masked_latent": torch.zeros_like(cond["masked_latent"]), "mask": torch.zeros_like(cond["mask"])}

    def network_inputs(self, x_t: Tensor, cond: Cond) -> tuple[Tensor, Tensor | None]:
        x_in = torch.cat([x_t, cond["masked_latent"].to(x_t.dtype), cond["mask"].to(x_t.dtype)], dim=1)
        return x_in, cond.get("label")


class SemanticEncoder(nn.Module):
    """One-hot map ``(B, K + 1, H, W)`` -> ``(B, embed_channels, H / 2^n, W / 2^n)`` with ``n`` stride-2 convs."""

    def __init__(self, in_channels: int, embed_channels: int, hidden_channels: int, num_down: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.SiLU()]
        for _ in range(num_down):
            layers += [nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(hidden_channels, embed_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, onehot: Tensor) -> Tensor:
        return self.net(onehot)


class SemanticCondition(SpatialCondition):
    """Class-id map -> trainable conv encoder -> ``embed_channels`` at latent resolution (module docstring)."""

    spatial_keys = ("semantic",)

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        *,
        num_semantic_classes: int | None,
        resolution: int,
        embed_channels: int = 4,
        hidden_channels: int = 32,
        use_label: bool = False,
        num_classes: int = 0,
        cond_dropout: float = 0.1,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(
            use_label=use_label, num_classes=num_classes, cond_dropout=cond_dropout, label_dropout=label_dropout
        )
        if num_semantic_classes is None:
            raise ValueError(
                "condition=semantic needs condition.num_semantic_classes (classes of the semantic maps, "
                "background included); the data config sets data.num_semantic_classes for datasets with maps "
                "(data=shapes, data=celebamask256, data=emoji data.dataset.part_maps=true)"
            )
        if int(num_semantic_classes) < 2:
            raise ValueError(f"condition.num_semantic_classes must be >= 2, got {num_semantic_classes}")
        _, height, width = (int(v) for v in latent_shape)
        self.latent_size = (height, width)
        self.resolution = int(resolution)
        factor = self.resolution // height
        if height != width or factor * height != self.resolution or factor < 1 or factor & (factor - 1):
            raise ValueError(
                f"condition=semantic: image resolution {self.resolution} must be a power-of-two multiple of the "
                f"latent size {height}x{width}"
            )
        self.num_semantic_classes = int(num_semantic_classes)
        self.null_id = self.num_semantic_classes
        self.embed_channels = int(embed_channels)
        self.spatial_channels = self.embed_channels
        self.encoder = SemanticEncoder(
            self.num_semantic_classes + 1, self.embed_channels, int(hidden_channels), int(math.log2(factor))
        )

    def from_batch(self, batch: dict[str, Tensor]) -> Cond:
        if "semantic" not in batch:
            raise KeyError(
                "condition=semantic: the batch has no 'semantic' entry; the latent cache must be built with "
                "the semantic maps (a dataset whose items have 'semantic')"
            )
        semantic = batch["semantic"].long()
        check_semantic_ids(semantic, self.num_semantic_classes, "a training semantic map")
        return {"semantic": semantic, **self._label_from_batch(batch)}

    def spatial_null(self, cond: Cond) -> Cond:
        return {"semantic": torch.full_like(cond["semantic"], self.null_id)}

    def embed(self, semantic: Tensor) -> Tensor:
        """Class-id map ``(B, H, W)`` (ids in ``[0, K]``, ``K`` = null) -> ``(B, embed_channels, h, w)``."""
        if semantic.dim() != 3 or tuple(semantic.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(
                f"semantic map must have shape (B, {self.resolution}, {self.resolution}), got {tuple(semantic.shape)}"
            )
        weight = self.encoder.net[0].weight
        onehot = F.one_hot(semantic.long(), self.num_semantic_classes + 1).permute(0, 3, 1, 2).to(weight.dtype)
        return self.encoder(onehot)

    def network_inputs(self, x_t: Tensor, cond: Cond) -> tuple[Tensor, Tensor | None]:
        emb = self.embed(cond["semantic"]).to(x_t.dtype)
        return torch.cat([x_t, emb], dim=1), cond.get("label")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_semantic_classes={self.num_semantic_classes}"


def build_spatial_condition(
    name: str, *, num_classes: int = 0, latent_shape: tuple[int, int, int] | None = None, **options: Any
) -> SpatialCondition:
    """``inpaint`` or ``semantic`` with the options of ``conf/condition/<name>.yaml``; unknown options raise."""
    if latent_shape is None:
        raise ValueError(f"condition '{name}' needs the latent shape (C, h, w)")
    valid = {
        "inpaint": {"resolution", "masks", "mask_variants", "use_label", "cond_dropout", "label_dropout"},
        "semantic": {
            "resolution",
            "num_semantic_classes",
            "embed_channels",
            "hidden_channels",
            "use_label",
            "cond_dropout",
            "label_dropout",
        },
    }[name]
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"condition '{name}': unknown options {unknown}; valid: {sorted(valid)}")
    if "resolution" not in options or options["resolution"] is None:
        raise ValueError(f"condition '{name}' needs condition.resolution (the image resolution, ${{data.resolution}})")
    cls = InpaintCondition if name == "inpaint" else SemanticCondition
    return cls(tuple(latent_shape), num_classes=num_classes, **options)


def cache_extras(condition: dict | None) -> dict:
    """What the latent cache must store besides latents and labels for a condition config.

    ``{}`` for ``none`` / ``label`` (existing caches keep their keys), ``{"semantic": True}`` for
    ``semantic``, ``{"masks": {generator settings}, "mask_variants": K}`` for ``inpaint``.
    """
    if not condition:
        return {}
    name = condition.get("name")
    if name == "semantic":
        return {"semantic": True}
    if name == "inpaint":
        return {"masks": dict(condition.get("masks") or {}), "mask_variants": int(condition.get("mask_variants", 4))}
    return {}


def check_condition_data(condition: dict | None, dataset: Any) -> None:
    """Raise a clear error when ``dataset`` cannot provide what the condition config needs."""
    if not condition or condition.get("name") != "semantic":
        return
    classes = getattr(dataset, "semantic_classes", None)
    if classes is None:
        raise ValueError(
            f"condition=semantic needs semantic maps, but {type(dataset).__name__} has none "
            "(datasets with maps: data=shapes, data=celebamask256, data=emoji data.dataset.part_maps=true)"
        )
    expected = condition.get("num_semantic_classes")
    if expected is not None and int(expected) != len(classes):
        raise ValueError(
            f"condition.num_semantic_classes={expected} but the dataset has {len(classes)} semantic classes "
            f"({', '.join(map(str, classes))}); set condition.num_semantic_classes={len(classes)}"
        )
