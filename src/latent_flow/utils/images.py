"""Image helpers: tensors in [-1, 1] <-> uint8 arrays, grids, lossless PNGs, coloured semantic maps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

__all__ = ["colorize_semantic", "from_uint8", "make_grid_image", "save_png", "to_uint8"]


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (rounded, clamped)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8(images_u8: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1] (the inverse of :func:`to_uint8`)."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def make_grid_image(images: Tensor, nrow: int, *, padding: int = 2, upscale: int = 1) -> Image.Image:
    """A grid with ``nrow`` images per row (row-major) on white, optionally upscaled (nearest) for viewing.

    ``torchvision.utils.make_grid`` on the uint8 images; a grid of fewer than ``nrow`` images keeps ``nrow``
    columns (white cells), as the grids of class rows expect."""
    u8 = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
    if len(u8) < nrow:  # make_grid would narrow the grid to the images there are
        u8 = torch.cat([u8, u8.new_full((nrow - len(u8), *u8.shape[1:]), 255)])
    grid = make_grid(u8, nrow=nrow, padding=padding, pad_value=255)
    img = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return img


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write a lossless PNG atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


#: distinct colours of class ids 1, 2, ... (0 = background is black); more classes get random bright colours
_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)


def colorize_semantic(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Class-id map (..., H, W) -> RGB uint8 with a fixed palette (0 = black background)."""
    palette = np.zeros((max(num_classes, 1) + 1, 3), dtype=np.uint8)
    extra = np.random.default_rng(7).integers(64, 256, size=(len(palette), 3))
    for k in range(1, len(palette)):
        palette[k] = _PALETTE[k - 1] if k - 1 < len(_PALETTE) else extra[k]
    return palette[np.clip(ids, 0, num_classes)]
