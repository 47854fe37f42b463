"""What the small pixel-space readers share: the part segmenter and the attribute judges.

Both read something back from an image (a part map: :mod:`latent_flow.evaluation.segmenter`; an attribute:
:mod:`latent_flow.evaluation.attribute_judge`), are trained on real training images, scored on real
held-out images, and cached under a key that hashes everything they were trained from. This module holds
the pieces that are the same for both:

* :func:`conv_bn_relu`, their building block; :func:`as_float_images`, the one image convention at their
  interfaces (uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in ``[-1, 1]``; the conversions are
  :mod:`latent_flow.utils.images`' ``to_uint8`` / ``from_uint8``);
* :func:`cache_key`: a short sha1 of a JSON payload (version, data fingerprint, config...);
* :func:`load_cached_reader` / :func:`save_cached_reader`: the weights through the verifying checkpoint
  files (:mod:`latent_flow.utils.checkpoint_files`) beside a ``.json`` of what the reader was trained on
  and how it scores (``reader.metrics``), written atomically;
* :func:`training_record` / :func:`held_out_record`: the common fields of that ``.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latent_flow.utils.checkpoint_files import load_checkpoint, save_checkpoint_file
from latent_flow.utils.images import from_uint8

__all__ = [
    "as_float_images",
    "cache_key",
    "config_record",
    "conv_bn_relu",
    "held_out_record",
    "load_cached_reader",
    "save_cached_reader",
    "training_record",
]


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def as_float_images(images: Tensor | np.ndarray) -> Tensor:
    """uint8 NHWC (numpy) or float NCHW in [-1, 1] -> float NCHW in [-1, 1]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        return from_uint8(images)
    if images.dtype == torch.uint8:
        raise ValueError("uint8 image tensors are ambiguous here: pass a uint8 NHWC numpy array or floats in [-1, 1]")
    return images.float()


def config_record(config) -> dict[str, Any]:
    """A reader's config dataclass as JSON (its ``widths`` tuple as a list)."""
    return {**asdict(config), "widths": list(config.widths)}


def cache_key(payload: dict[str, Any]) -> str:
    """Short (16 hex digits) sha1 of ``payload`` as sorted JSON."""
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_cached_reader(cls, weights: Path, meta: Path) -> nn.Module:
    """A reader cached by :func:`save_cached_reader`: checksum, readable, finite
    (:class:`~latent_flow.utils.checkpoint_files.CheckpointIntegrityError` otherwise), in eval mode, with
    ``.metrics`` read from ``meta`` (None when it is missing)."""
    blob = load_checkpoint(weights, weights_only=True)
    reader = cls.from_config(blob["config"])
    reader.load_state_dict(blob["state_dict"])
    reader.eval()
    reader.metrics = json.loads(meta.read_text()) if meta.is_file() else None
    return reader


def save_cached_reader(reader: nn.Module, weights: Path, meta: Path, info: dict[str, Any]) -> None:
    """The weights and architecture to ``weights`` (verifying checkpoint file), ``info`` to ``meta``
    (atomically); ``reader.metrics = info``."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint_file({"config": reader.config(), "state_dict": reader.state_dict()}, weights)
    tmp = meta.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, meta)
    reader.metrics = info


def training_record(reader: nn.Module, train_dataset, num_images: int) -> dict[str, Any]:
    """What a reader was trained on and how long it took (the ``.json``'s common fields)."""
    return {
        "train": {
            "dataset": repr(train_dataset),
            "fingerprint": train_dataset.fingerprint(),
            "num_images": int(num_images),
        },
        "train_seconds": round(getattr(reader, "train_seconds", float("nan")), 2),
        "train_cpu_seconds": round(getattr(reader, "train_cpu_seconds", float("nan")), 2),
        "threads": torch.get_num_threads(),
    }


def held_out_record(dataset, scores: dict[str, Any]) -> dict[str, Any]:
    """The ``held_out`` entry: which real held-out images, and the reader's ``scores`` on them."""
    return {
        "dataset": repr(dataset),
        "fingerprint": dataset.fingerprint() if hasattr(dataset, "fingerprint") else None,
        **scores,
    }
