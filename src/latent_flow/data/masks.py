"""Inpainting masks: a deterministic generator of irregular strokes and boxes, and masks from files.

**Convention, everywhere in latent_flow: mask value 1 (True) = known pixel, 0 (False) = hole**
(the region the model generates). Mask files follow it too: white (>= 128) = known, black = hole;
``invert=True`` reads the opposite convention (white = hole, as LaMa / Stable Diffusion tools
write them). The *hole ratio* of a mask is the fraction of hole pixels.

:class:`MaskGenerator` draws, for a sample index ``i`` and a variant ``v``, one mask that depends
only on ``(seed, i, v)`` and its settings: with probability ``box_fraction`` a set of random
rectangles, otherwise irregular brush strokes (thick poly-lines, LaMa style). Primitives are added
until the hole ratio reaches a target drawn uniformly in ``[hole_min, hole_max]``; a draw that
overshoots ``hole_max`` is rejected and redrawn, and after ``max_tries`` rejections a single box
with a hole ratio inside the range is used, so every mask's hole ratio is in ``[hole_min, hole_max]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["MaskGenerator", "check_mask", "hole_ratio", "load_mask"]


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels of a mask (1 / True = known)."""
    mask = np.asarray(mask)
    return float(1.0 - mask.astype(bool).mean())


def check_mask(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """Raise a clear ``ValueError`` when ``mask`` (1 = known) is all hole or has no hole; return it as bool."""
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        raise ValueError(f"{what} is all hole (no known pixel): there is nothing to condition on")
    if mask.all():
        raise ValueError(f"{what} has no hole (every pixel is known): there is nothing to inpaint")
    return mask


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None, *, invert: bool = False) -> np.ndarray:
    """Read a mask image (PNG, any mode) as bool (H, W), True = known.

    Pixels >= 128 (first channel after conversion to grey) are known, unless ``invert`` (then they
    are holes). ``size = (H, W)`` must match the image the mask belongs to; all-hole and no-hole
    masks are rejected (:func:`check_mask`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file '{path}' does not exist")
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"))
    if size is not None and tuple(grey.shape) != tuple(size):
        raise ValueError(
            f"mask '{path}' is {grey.shape[1]}x{grey.shape[0]} (WxH) but its image is {size[1]}x{size[0]}: "
            "a mask must have the size of its image"
        )
    known = grey >= 128
    if invert:
        known = ~known
    return check_mask(known, f"mask '{path}'")


class MaskGenerator:
    """Irregular strokes + boxes with a hole ratio in ``[hole_min, hole_max]`` (1 = known).

    Args:
        resolution: mask side in pixels.
        hole_min, hole_max: range of the hole ratio (fraction of hole pixels), ``0 < min <= max < 1``.
        box_fraction: probability that a mask is made of boxes (else strokes).
        seed: masks are a pure function of ``(seed, index, variant)`` and the settings.
        max_tries: rejected draws before the single-box fallback.
    """

    def __init__(
        self,
        resolution: int,
        hole_min: float = 0.1,
        hole_max: float = 0.5,
        box_fraction: float = 0.5,
        seed: int = 0,
        max_tries: int = 20,
    ) -> None:
        if int(resolution) < 4:
            raise ValueError(f"mask resolution must be >= 4, got {resolution}")
        if not 0.0 < float(hole_min) <= float(hole_max) < 1.0:
            raise ValueError(
                f"hole ratio range must satisfy 0 < hole_min <= hole_max < 1, got [{hole_min}, {hole_max}]"
            )
        if not 0.0 <= float(box_fraction) <= 1.0:
            raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")
        self.resolution = int(resolution)
        self.hole_min = float(hole_min)
        self.hole_max = float(hole_max)
        self.box_fraction = float(box_fraction)
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        area = self.resolution**2
        if int(np.floor(self.hole_max * area)) < int(np.ceil(self.hole_min * area)):
            raise ValueError(
                f"no mask of {self.resolution}x{self.resolution} pixels has a hole ratio in "
                f"[{self.hole_min}, {self.hole_max}]; widen the range"
            )
        coords = np.arange(self.resolution, dtype=np.float32) + 0.5
        self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")

    def config(self) -> dict:
        return {
            "resolution": self.resolution,
            "hole_min": self.hole_min,
            "hole_max": self.hole_max,
            "box_fraction": self.box_fraction,
            "seed": self.seed,
            "max_tries": self.max_tries,
        }

    def fingerprint(self) -> str:
        payload = json.dumps({"class": type(self).__name__, "version": 1, **self.config()}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.config().items())})"

    # ---------------------------------------------------------------- primitives (hole = True)
    def _box(self, hole: np.ndarray, rng: np.random.Generator) -> None:
        res = self.resolution
        h = int(rng.integers(max(2, res // 8), max(3, res // 2) + 1))
        w = int(rng.integers(max(2, res // 8), max(3, res // 2) + 1))
        y0 = int(rng.integers(0, res - h + 1))
        x0 = int(rng.integers(0, res - w + 1))
        hole[y0 : y0 + h, x0 : x0 + w] = True

    def _stroke(self, hole: np.ndarray, rng: np.random.Generator) -> None:
        res = self.resolution
        width = rng.uniform(0.06, 0.16) * res
        x, y = rng.uniform(0, res, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(2, 6))):
            angle += rng.uniform(-1.2, 1.2)
            length = rng.uniform(0.15, 0.4) * res
            x1 = float(np.clip(x + length * np.cos(angle), 0, res))
            y1 = float(np.clip(y + length * np.sin(angle), 0, res))
            # distance of every pixel centre to the segment (x, y) -> (x1, y1)
            dx, dy = x1 - x, y1 - y
            denom = dx * dx + dy * dy
            s = 0.0 if denom == 0 else np.clip(((self._xx - x) * dx + (self._yy - y) * dy) / denom, 0.0, 1.0)
            dist2 = (self._xx - x - s * dx) ** 2 + (self._yy - y - s * dy) ** 2
            hole |= dist2 <= (width / 2) ** 2
            x, y = x1, y1

    def _fallback(self, rng: np.random.Generator) -> np.ndarray:
        res = self.resolution
        area = res * res
        lo, hi = int(np.ceil(self.hole_min * area)), int(np.floor(self.hole_max * area))
        target = int(rng.integers(lo, hi + 1))
        h = int(np.clip(round(np.sqrt(target)), 1, res))
        w = int(np.clip(target // h, 1, res))
        while h * w < lo:  # round-off: grow until inside the range (h * w <= hi holds while growing by < h)
            w += 1
            if w > res:
                w, h = res, h + 1
        hole = np.zeros((res, res), dtype=bool)
        y0 = int(rng.integers(0, res - h + 1))
        x0 = int(rng.integers(0, res - w + 1))
        hole[y0 : y0 + h, x0 : x0 + w] = True
        return hole

    # ---------------------------------------------------------------- public
    def __call__(self, index: int, variant: int = 0) -> np.ndarray:
        """Mask of sample ``index``, variant ``variant``: bool (H, W), True = known."""
        if int(index) < 0 or int(variant) < 0:
            raise ValueError(f"index and variant must be >= 0, got index={index}, variant={variant}")
        rng = np.random.Generator(np.random.Philox(key=[int(index), int(variant) * 2**32 + self.seed]))
        area = self.resolution**2
        for _ in range(self.max_tries):
            target = rng.uniform(self.hole_min, self.hole_max)
            add = self._box if rng.random() < self.box_fraction else self._stroke
            hole = np.zeros((self.resolution, self.resolution), dtype=bool)
            for _ in range(64):
                add(hole, rng)
                if hole.sum() >= target * area:
                    break
            ratio = hole.mean()
            if self.hole_min <= ratio <= self.hole_max:
                return ~hole
        return ~self._fallback(rng)

    def batch(self, indices, variant: int = 0) -> np.ndarray:
        """Masks of several indices stacked: bool (N, H, W)."""
        return np.stack([self(int(i), variant) for i in indices])
