"""Image helpers: tensors in [-1, 1] -> uint8 arrays, grids and lossless PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["to_uint8", "make_grid_image", "save_png"]


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (rounded, clamped)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid_image(images: Tensor, nrow: int, *, padding: int = 2, upscale: int = 1) -> Image.Image:
    """A grid with ``nrow`` images per row (row-major), optionally upscaled (nearest) for viewing."""
    arr = to_uint8(images)
    count, height, width, _ = arr.shape
    ncol = nrow
    rows = (count + ncol - 1) // ncol
    grid = np.full(
        (rows * (height + padding) + padding, ncol * (width + padding) + padding, 3), 255, dtype=np.uint8
    )
    for k in range(count):
        r, c = divmod(k, ncol)
        y, x = padding + r * (height + padding), padding + c * (width + padding)
        grid[y : y + height, x : x + width] = arr[k]
    img = Image.fromarray(grid)
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
