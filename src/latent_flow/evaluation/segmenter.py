"""A part segmenter: a small U-Net that reads the class-id map back from an image (semantic-map-to-image scores).

Semantic-map-to-image models are scored by how well their samples follow the requested map: a segmenter
trained on **real training images and their maps** reads a map back from each generated image, and the
mIoU (:mod:`latent_flow.evaluation.segmentation`) between it and the requested map is the score. The
segmenter's own mIoU on **real held-out images** is the ceiling of that score. On `shapes` the oracle
(:mod:`latent_flow.evaluation.oracle`) has a segmentation head; this module is the same pattern for any
dataset whose items carry ``"image"`` and ``"semantic"`` (the emoji part maps of
``data.dataset.part_maps=true``, CelebAMask-HQ, shapes).

* :class:`PartSegmenter`: three stages at full, 1/2 and 1/4 resolution (two 3x3 conv-BN-ReLU each), a
  decoder that upsamples and concatenates the skip connections, per-pixel logits over the classes
  (full-resolution features matter: OpenMoji outlines are 1-2 px wide at 64 px).
* :func:`train_segmenter`: cross-entropy, AdamW with a one-cycle learning rate, random horizontal flips
  of image and map together, batches drawn with a seeded generator.
* :func:`load_or_train_segmenter`: cached in ``<cache_dir>/segmenters/<name>-<key>.pt`` (weights through
  :func:`~latent_flow.utils.checkpoint_files.save_checkpoint_file`, loaded back through the verifying
  :func:`~latent_flow.utils.checkpoint_files.load_checkpoint`) with ``<name>-<key>.json`` (held-out mIoU
  per class, training time). The key hashes the training set's fingerprint (its split included), the
  resolution, the class names and :class:`SegmenterConfig`, so another split or recipe trains another one.
* :func:`segmentation_scores`: mIoU of the segmenter's maps of images against target maps.

Images at every interface: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_flow.evaluation.pixel_readers import (
    as_float_images,
    cache_key,
    config_record,
    conv_bn_relu,
    held_out_record,
    load_cached_reader,
    save_cached_reader,
    training_record,
)
from latent_flow.evaluation.segmentation import confusion_matrix, miou_from_confusion
from latent_flow.utils.images import to_uint8

__all__ = [
    "SEGMENTER_VERSION",
    "PartSegmenter",
    "SegmenterConfig",
    "dataset_arrays",
    "load_or_train_segmenter",
    "segment",
    "segmentation_scores",
    "segmenter_cache_key",
    "train_segmenter",
]

log = logging.getLogger(__name__)

#: bumped when the architecture or the training loop changes (part of the cache key)
SEGMENTER_VERSION = 1


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture and training recipe (all fields are part of the cache key)."""

    widths: tuple[int, int, int] = (16, 32, 64)
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    flip: bool = True
    seed: int = 0


class PartSegmenter(nn.Module):
    """Small U-Net: images ``(B, 3, R, R)`` in [-1, 1] -> logits ``(B, num_classes, R, R)``.

    Args:
        num_classes: classes of the maps (background included).
        resolution: image side it is trained for (inputs must match; a multiple of 4).
        widths: channels of the full, 1/2 and 1/4 resolution stages.
        class_names: names of the classes (recorded, reported with the per-class IoU).
    """

    def __init__(
        self,
        num_classes: int,
        resolution: int,
        widths: tuple[int, int, int] = (16, 32, 64),
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"a segmenter needs >= 2 classes, got {num_classes}")
        if int(resolution) < 4 or int(resolution) % 4:
            raise ValueError(f"segmenter resolution must be a multiple of 4, got {resolution}")
        self.num_classes = int(num_classes)
        self.resolution = int(resolution)
        self.widths = tuple(int(w) for w in widths)
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        w1, w2, w3 = self.widths
        self.enc1 = nn.Sequential(conv_bn_relu(3, w1), conv_bn_relu(w1, w1))
        self.enc2 = nn.Sequential(conv_bn_relu(w1, w2, 2), conv_bn_relu(w2, w2))
        self.enc3 = nn.Sequential(conv_bn_relu(w2, w3, 2), conv_bn_relu(w3, w3))
        self.dec2 = conv_bn_relu(w3 + w2, w2)
        self.dec1 = conv_bn_relu(w2 + w1, w1)
        self.head = nn.Conv2d(w1, self.num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.resolution,) * 2:
            raise ValueError(
                f"PartSegmenter({self.resolution} px) expects images (B, 3, {self.resolution}, {self.resolution}) "
                f"in [-1, 1], got {tuple(images.shape)}"
            )
        s1 = self.enc1(images)  # (B, w1, R, R)
        s2 = self.enc2(s1)  # (B, w2, R/2, R/2)
        s3 = self.enc3(s2)  # (B, w3, R/4, R/4)
        up2 = F.interpolate(s3, size=s2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up2, s2], dim=1))
        up1 = F.interpolate(d2, size=s1.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.dec1(torch.cat([up1, s1], dim=1)))

    def config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "widths": list(self.widths),
            "class_names": self.class_names,
        }

    @classmethod
    def from_config(cls, config: dict) -> PartSegmenter:
        cfg = dict(config)
        cfg["widths"] = tuple(cfg["widths"])
        return cls(**cfg)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def dataset_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every item of a dataset with maps as ``(images uint8 (N, R, R, 3), maps uint8 (N, R, R))``."""
    images, maps = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if "semantic" not in item:
            raise KeyError(
                f"{type(dataset).__name__} items have no 'semantic' map: a segmenter trains on images with their "
                "class maps (emoji: part_maps=True)"
            )
        images.append(to_uint8(item["image"][None])[0])
        maps.append(np.asarray(item["semantic"], dtype=np.uint8))
    return np.stack(images), np.stack(maps)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def train_segmenter(
    images_u8: np.ndarray,
    maps: np.ndarray,
    num_classes: int,
    config: SegmenterConfig | None = None,
    class_names: list[str] | None = None,
    log_every: int = 0,
) -> PartSegmenter:
    """Train a :class:`PartSegmenter` on images ``(N, R, R, 3)`` uint8 and their maps ``(N, R, R)``.

    The same config and data give the same weights on one machine and thread count (the seed draws the
    initial weights, the batches and the flips).
    """
    cfg = config or SegmenterConfig()
    if images_u8.shape[:3] != maps.shape:
        raise ValueError(f"images {images_u8.shape} and maps {maps.shape} do not match")
    start, cpu_start = time.perf_counter(), time.process_time()
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    model = PartSegmenter(num_classes, images_u8.shape[1], cfg.widths, class_names)
    torch.random.set_rng_state(torch_state)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2)  # uint8 NCHW
    targets = torch.from_numpy(np.ascontiguousarray(maps)).long()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.15)
    n = len(images)
    perm, pos = torch.randperm(n, generator=gen), 0
    model.train()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        x, y = images[idx].float() / 127.5 - 1.0, targets[idx]
        if cfg.flip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            log.info(
                "segmenter step %d/%d loss %.4f (%.0f s)", step, cfg.steps, loss.item(), time.perf_counter() - start
            )
    model.eval()
    model.train_seconds = time.perf_counter() - start  # informational (wall clock)
    model.train_cpu_seconds = time.process_time() - cpu_start  # this process's CPU time (shared machines)
    return model


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def segment(segmenter: PartSegmenter, images: Tensor | np.ndarray, batch_size: int = 256) -> Tensor:
    """Class-id maps ``(N, R, R)`` int64 the segmenter reads from images (uint8 NHWC or float NCHW in [-1, 1])."""
    was_training = segmenter.training
    segmenter.eval()
    device = next(segmenter.parameters()).device
    x = as_float_images(images)
    out = [segmenter(x[lo : lo + batch_size].to(device)).argmax(1).cpu() for lo in range(0, len(x), batch_size)]
    segmenter.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, segmenter.resolution, segmenter.resolution), dtype=torch.long)


def segmentation_scores(
    segmenter: PartSegmenter, images: Tensor | np.ndarray, maps: Tensor | np.ndarray, batch_size: int = 256
) -> dict:
    """``{"num_images", "miou", "miou_per_class": {name: IoU or None}}`` of the segmenter's maps of
    ``images`` against ``maps`` (N, R, R), over all pixels (:mod:`latent_flow.evaluation.segmentation`)."""
    maps = torch.as_tensor(np.asarray(maps)).long()
    if len(maps) != len(images):
        raise ValueError(f"{len(images)} images but {len(maps)} maps")
    conf = torch.zeros(segmenter.num_classes, segmenter.num_classes, dtype=torch.long)
    x = as_float_images(images)
    for lo in range(0, len(x), batch_size):
        conf += confusion_matrix(segment(segmenter, x[lo : lo + batch_size]), maps[lo : lo + batch_size],
                                 segmenter.num_classes)  # fmt: skip
    value, per_class = miou_from_confusion(conf)
    return {
        "num_images": int(len(x)),
        "miou": value,
        "miou_per_class": dict(zip(segmenter.class_names, per_class, strict=True)),
    }


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def segmenter_cache_key(
    train_fingerprint: str, resolution: int, class_names: list[str], config: SegmenterConfig
) -> str:
    """Short sha1 of the training set's fingerprint, the resolution, the classes and the config."""
    return cache_key(
        {
            "version": SEGMENTER_VERSION,
            "data": train_fingerprint,
            "resolution": int(resolution),
            "classes": list(class_names),
            "config": config_record(config),
        }
    )


def _class_names(dataset) -> list[str]:
    names = getattr(dataset, "semantic_classes", None)
    if names is None:
        raise ValueError(f"{type(dataset).__name__} has no semantic_classes: a segmenter needs a dataset with maps")
    return [str(n) for n in names]


def load_or_train_segmenter(
    cache_dir: str | os.PathLike,
    train_dataset,
    held_out_dataset=None,
    config: SegmenterConfig | None = None,
    name: str | None = None,
    log_every: int = 0,
) -> PartSegmenter:
    """The segmenter of ``train_dataset`` (images + maps) and ``config``: cached, or trained, scored and cached.

    ``<cache_dir>/segmenters/<name>-<key>.pt`` holds the weights and architecture, ``<name>-<key>.json``
    what it was trained on, the training time and, when ``held_out_dataset`` is given, its mIoU on those
    real held-out images (the ceiling of the mIoU of generated images). Available as ``segmenter.metrics``.
    """
    cfg = config or SegmenterConfig()
    classes = _class_names(train_dataset)
    resolution = int(train_dataset[0]["image"].shape[-1])
    key = segmenter_cache_key(train_dataset.fingerprint(), resolution, classes, cfg)
    name = name or type(train_dataset).__name__.lower()
    folder = Path(cache_dir) / "segmenters"
    weights, meta = folder / f"{name}-{key}.pt", folder / f"{name}-{key}.json"
    if weights.is_file():
        return load_cached_reader(PartSegmenter, weights, meta)
    images, maps = dataset_arrays(train_dataset)
    segmenter = train_segmenter(images, maps, len(classes), cfg, class_names=classes, log_every=log_every)
    info = {
        "key": key,
        "version": SEGMENTER_VERSION,
        "resolution": resolution,
        "classes": classes,
        "config": config_record(cfg),
        **training_record(segmenter, train_dataset, len(images)),
        "train_scores": segmentation_scores(segmenter, images, maps),
    }
    if held_out_dataset is not None:
        held_images, held_maps = dataset_arrays(held_out_dataset)
        info["held_out"] = held_out_record(held_out_dataset, segmentation_scores(segmenter, held_images, held_maps))
    save_cached_reader(segmenter, weights, meta, info)
    return segmenter
