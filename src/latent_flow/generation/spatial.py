"""Spatial conditions at sampling time: inpainting inputs and masks, semantic maps.

Mask convention (:mod:`latent_flow.data.masks`): **1 / white = known, 0 / black = hole**
(``invert_masks=true`` reads white = hole). Inputs must have the model's resolution; semantic
maps must only use the model's class ids; masks must have their image's size and contain both
known and hole pixels. Each violation raises a ``ValueError`` naming the file.

The known region is pasted back exactly, in uint8 pixel space after decoding:
``out = where(mask, input, sample)`` (:func:`paste_known`), so known pixels of every written PNG
equal the input's. The command line over these: ``python -m latent_flow.sample inputs=... masks=...``
(:func:`latent_flow.cli.sample.run_conditional_sampling`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latent_flow.conditioning import InpaintCondition, SemanticCondition, check_semantic_ids
from latent_flow.data.image_folder import DEFAULT_EXTENSIONS
from latent_flow.data.masks import check_mask, load_mask
from latent_flow.utils.images import from_uint8

__all__ = ["load_semantic_map", "pair_masks", "paste_known", "spatial_condition"]


def load_semantic_map(path: str | Path, resolution: int, num_classes: int) -> np.ndarray:
    """Class-id map (H, W) int64 from an index PNG (mode L, P, I or I;16: pixel value = class id)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"semantic map '{path}' has mode {img.mode}: expected a single-channel index PNG "
                "(mode L or P) whose pixel values are class ids"
            )
        arr = np.asarray(img).astype(np.int64)
    if arr.shape != (resolution, resolution):
        raise ValueError(
            f"semantic map '{path}' is {arr.shape[1]}x{arr.shape[0]}, but the model generates "
            f"{resolution}x{resolution} images"
        )
    check_semantic_ids(torch.from_numpy(arr), num_classes, f"semantic map '{path}'")
    return arr


def paste_known(samples_u8: np.ndarray, inputs_u8: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``where(mask, input, sample)`` in uint8 (N, H, W, 3); masks (N, H, W), 1 = known."""
    return np.where(masks.astype(bool)[..., None], inputs_u8, samples_u8)


@torch.no_grad()
def spatial_condition(
    model, *, images_u8: np.ndarray | None = None, masks: np.ndarray | None = None, semantic: np.ndarray | None = None
) -> dict[str, Tensor]:
    """The ``spatial_cond`` of ``model.sample_latents`` for a batch of inputs.

    Inpainting: images (N, H, W, 3) uint8 and masks (N, H, W) (1 = known); the masked image
    (holes set to 0) is encoded by the model's autoencoder. Semantic: maps (N, H, W) of class ids.
    """
    condition = model.condition
    if isinstance(condition, InpaintCondition):
        if images_u8 is None or masks is None:
            raise ValueError("an inpainting model needs images and masks")
        for k, m in enumerate(masks):
            check_mask(m, f"mask {k}")
        images = from_uint8(images_u8).to(model.device)
        known = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None].to(model.device)
        masked_latent = model.autoencoder.encode(images * known)
        return condition.encode(masked_latent, known)
    if isinstance(condition, SemanticCondition):
        if semantic is None:
            raise ValueError("a semantic model needs semantic maps")
        ids = torch.as_tensor(np.asarray(semantic), dtype=torch.long)
        check_semantic_ids(ids, condition.num_semantic_classes)
        return {"semantic": ids.to(model.device)}
    raise ValueError(f"the model's condition {type(condition).__name__} is not spatial (inpaint or semantic)")


def pair_masks(inputs: list[Path], masks_arg, resolution: int, invert: bool, generator) -> list[np.ndarray]:
    if masks_arg is None:
        if generator is None:
            raise ValueError("masks=... is required")
        return [check_mask(generator(i), f"generated mask {i}") for i in range(len(inputs))]
    path = Path(masks_arg)
    if path.is_file():
        mask = load_mask(path, (resolution, resolution), invert=invert)
        return [mask] * len(inputs)
    if path.is_dir():
        out = []
        for inp in inputs:
            candidates = [path / (inp.stem + ext) for ext in DEFAULT_EXTENSIONS]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise FileNotFoundError(f"no mask for input '{inp.name}' in '{path}' (expected {inp.stem}.png)")
            out.append(load_mask(found[0], (resolution, resolution), invert=invert))
        return out
    raise FileNotFoundError(f"masks '{path}' does not exist")
