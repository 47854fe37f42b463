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

**Mask families** (``families=``, a mapping name -> weight or a list of names with equal weights;
:data:`MASK_FAMILIES`). Each mask first draws its family by weight, then its shape:

=========== ============================================================================================
``strokes`` brush strokes only, hole ratio in ``[hole_min, hole_max]`` (as above)
``boxes``   rectangles only, hole ratio in ``[hole_min, hole_max]``
``half``    one of ``left`` / ``right`` / ``top`` / ``bottom``, drawn uniformly
``left``... that half of the image is the hole (``R // 2`` columns or rows; hole ratio 0.5 at even R)
``centre``  the centred square of side ``round(centre_size * R)`` is the hole (0.25 at the default 0.5)
``part``    every pixel of one part class of the item's part map (a class id > ``part_background``
            drawn uniformly among those present), dilated by ``part_dilation`` pixels (a
            ``(2 d + 1)``-square), optionally grown to whole cells of ``part_cells`` pixels (e.g. the
            autoencoder's factor: latent cells then are either known or hole); only classes whose hole
            ratio lands in ``[part_min, part_max]`` are drawn; none (a blank map): the ``centre`` mask
=========== ============================================================================================

``part`` needs the item's class map (``semantic=`` of :meth:`MaskGenerator.__call__`, e.g. the emoji
part maps of ``data.dataset.part_maps=true``); a call without one leaves the families that need maps
out of the draw (so ``python -m latent_flow.sample inputs=...`` without masks still works), and fails
when every family needs one. ``families=None`` is the original strokes / boxes generator above
(``box_fraction``), bit for bit: its masks, settings and fingerprint are unchanged.
:meth:`MaskGenerator.only` gives the generator of one family (evaluation per family).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["MASK_FAMILIES", "MaskGenerator", "check_mask", "check_mask_family", "hole_ratio", "load_mask"]

#: the mask families of :class:`MaskGenerator` (module docstring), in a fixed order (the draw's order)
MASK_FAMILIES = ("strokes", "boxes", "half", "left", "right", "top", "bottom", "centre", "part")
#: families that need the item's class map
MAP_FAMILIES = frozenset({"part"})
_HALVES = ("left", "right", "top", "bottom")


def check_mask_family(name: str) -> str:
    """``name`` if it is a mask family, else a ``ValueError`` listing the families (and the closest one)."""
    if name in MASK_FAMILIES:
        return name
    close = difflib.get_close_matches(str(name), MASK_FAMILIES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown mask family '{name}'{hint}; valid: {', '.join(MASK_FAMILIES)}")


def _families(families) -> dict[str, float] | None:
    """``families=`` as ``{name: weight}`` in :data:`MASK_FAMILIES` order (validated), or None."""
    if families is None:
        return None
    if isinstance(families, str):
        families = [families]
    if isinstance(families, Mapping):
        weights = {str(k): float(v) for k, v in families.items()}
    elif isinstance(families, Sequence):
        weights = {}
        for name in families:
            weights[str(name)] = weights.get(str(name), 0.0) + 1.0
    else:
        raise ValueError(f"mask families must be a mapping name -> weight or a list of names, got {families!r}")
    for name, weight in weights.items():
        check_mask_family(name)
        if not weight >= 0.0 or not np.isfinite(weight):
            raise ValueError(f"mask family '{name}' has weight {weight}: weights must be finite and >= 0")
    weights = {name: weights[name] for name in MASK_FAMILIES if weights.get(name, 0.0) > 0.0}
    if not weights:
        raise ValueError(
            f"mask families {families!r}: no family with a positive weight; valid: {', '.join(MASK_FAMILIES)}"
        )
    return weights


def _dilate(region: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a bool (H, W) map by a ``(2 radius + 1)``-square (pixels outside count as off)."""
    if radius <= 0:
        return region
    height, width = region.shape
    padded = np.pad(region, radius)
    out = np.zeros_like(region)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def _to_cells(region: np.ndarray, cell: int) -> np.ndarray:
    """Every ``cell x cell`` block that has a True pixel made all True (blocks from the top-left corner)."""
    if cell <= 1:
        return region
    height, width = region.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=bool)
    padded[:height, :width] = region
    blocks = padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))
    return np.repeat(np.repeat(blocks, cell, axis=0), cell, axis=1)[:height, :width]


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
        families: ``None`` (strokes / boxes by ``box_fraction``, the original generator) or the mask
            families to draw from with their weights (module docstring; :data:`MASK_FAMILIES`).
        centre_size: side of the ``centre`` hole as a fraction of the image side, in ``(0, 1)``.
        part_dilation / part_cells / part_min / part_max / part_background: the ``part`` family: the
            dilation in pixels, the cell size the hole is grown to (0 or 1: pixels), the range of hole
            ratios a part must give to be drawn, the class id that is never a part (background).
    """

    def __init__(
        self,
        resolution: int,
        hole_min: float = 0.1,
        hole_max: float = 0.5,
        box_fraction: float = 0.5,
        seed: int = 0,
        max_tries: int = 20,
        families: Mapping[str, float] | Sequence[str] | None = None,
        centre_size: float = 0.5,
        part_dilation: int = 1,
        part_cells: int = 0,
        part_min: float = 0.01,
        part_max: float = 0.9,
        part_background: int = 0,
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
        self.families = _families(families)
        if not 0.0 < float(centre_size) < 1.0:
            raise ValueError(f"centre_size must be in (0, 1) (a fraction of the image side), got {centre_size}")
        self.centre_size = float(centre_size)
        side = int(round(self.centre_size * self.resolution))
        if not 0 < side < self.resolution:
            raise ValueError(
                f"centre_size={centre_size} gives a {side} px square at {self.resolution} px: no hole or no known pixel"
            )
        if int(part_dilation) < 0 or int(part_cells) < 0:
            raise ValueError(f"part_dilation and part_cells must be >= 0, got {part_dilation} and {part_cells}")
        if not 0.0 <= float(part_min) <= float(part_max) < 1.0:
            raise ValueError(
                f"part hole ratios must satisfy 0 <= part_min <= part_max < 1, got [{part_min}, {part_max}]"
            )
        self.part_dilation = int(part_dilation)
        self.part_cells = int(part_cells)
        self.part_min = float(part_min)
        self.part_max = float(part_max)
        self.part_background = int(part_background)

    @property
    def needs_maps(self) -> bool:
        """Whether some family draws from the item's class map (``semantic=`` of :meth:`__call__`)."""
        return self.families is not None and any(name in MAP_FAMILIES for name in self.families)

    def config(self) -> dict:
        config = {
            "resolution": self.resolution,
            "hole_min": self.hole_min,
            "hole_max": self.hole_max,
            "box_fraction": self.box_fraction,
            "seed": self.seed,
            "max_tries": self.max_tries,
        }
        if self.families is not None:  # only then: the original generator keeps its settings and fingerprint
            config.update(
                families=dict(self.families),
                centre_size=self.centre_size,
                part_dilation=self.part_dilation,
                part_cells=self.part_cells,
                part_min=self.part_min,
                part_max=self.part_max,
                part_background=self.part_background,
            )
        return config

    def only(self, family: str) -> MaskGenerator:
        """The same generator restricted to one family (e.g. to score inpainting per family)."""
        config = self.config()
        config.pop("resolution")
        config["families"] = {check_mask_family(family): 1.0}
        return type(self)(self.resolution, **config)

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

    def _primitives(self, rng: np.random.Generator, add=None) -> np.ndarray:
        """Strokes / boxes (``add`` fixed, else drawn per try by ``box_fraction``) up to a drawn hole ratio."""
        area = self.resolution**2
        for _ in range(self.max_tries):
            target = rng.uniform(self.hole_min, self.hole_max)
            draw = add if add is not None else (self._box if rng.random() < self.box_fraction else self._stroke)
            hole = np.zeros((self.resolution, self.resolution), dtype=bool)
            for _ in range(64):
                draw(hole, rng)
                if hole.sum() >= target * area:
                    break
            ratio = hole.mean()
            if self.hole_min <= ratio <= self.hole_max:
                return hole
        return self._fallback(rng)

    def _half(self, side: str) -> np.ndarray:
        res, half = self.resolution, self.resolution // 2
        hole = np.zeros((res, res), dtype=bool)
        if side == "left":
            hole[:, :half] = True
        elif side == "right":
            hole[:, res - half :] = True
        elif side == "top":
            hole[:half] = True
        else:
            hole[res - half :] = True
        return hole

    def _centre(self) -> np.ndarray:
        res = self.resolution
        side = int(round(self.centre_size * res))
        lo = (res - side) // 2
        hole = np.zeros((res, res), dtype=bool)
        hole[lo : lo + side, lo : lo + side] = True
        return hole

    def _part(self, semantic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        candidates = []
        for cls in np.unique(semantic):
            if int(cls) == self.part_background:
                continue
            hole = _to_cells(_dilate(semantic == cls, self.part_dilation), self.part_cells)
            if self.part_min <= hole.mean() <= self.part_max:
                candidates.append(hole)
        if not candidates:
            return self._centre()
        return candidates[int(rng.integers(len(candidates)))]

    def _check_map(self, semantic) -> np.ndarray:
        semantic = np.asarray(semantic)
        if semantic.shape != (self.resolution, self.resolution):
            raise ValueError(
                f"the class map of a 'part' mask must be ({self.resolution}, {self.resolution}) like the mask, "
                f"got {semantic.shape}"
            )
        return semantic

    # ---------------------------------------------------------------- public
    def __call__(self, index: int, variant: int = 0, semantic: np.ndarray | None = None) -> np.ndarray:
        """Mask of sample ``index``, variant ``variant``: bool (H, W), True = known.

        ``semantic``: the item's class map (H, W), for the ``part`` family (module docstring); without it
        the families that need a map are left out of the draw.
        """
        if int(index) < 0 or int(variant) < 0:
            raise ValueError(f"index and variant must be >= 0, got index={index}, variant={variant}")
        rng = np.random.Generator(np.random.Philox(key=[int(index), int(variant) * 2**32 + self.seed]))
        if self.families is None:
            return ~self._primitives(rng)
        families = self.families
        if semantic is None:
            families = {k: w for k, w in families.items() if k not in MAP_FAMILIES}
            if not families:
                raise ValueError(
                    f"mask families {sorted(self.families)} need the image's class map (semantic=...), e.g. the "
                    "emoji part maps of data.dataset.part_maps=true; pass a mask file instead"
                )
        else:
            semantic = self._check_map(semantic)
        names = list(families)
        weights = np.asarray([families[k] for k in names], dtype=np.float64)
        family = names[int(rng.choice(len(names), p=weights / weights.sum()))] if len(names) > 1 else names[0]
        if family == "half":
            family = _HALVES[int(rng.integers(4))]
        if family in ("strokes", "boxes"):
            hole = self._primitives(rng, self._stroke if family == "strokes" else self._box)
        elif family in _HALVES:
            hole = self._half(family)
        elif family == "centre":
            hole = self._centre()
        else:
            hole = self._part(semantic, rng)
        return ~hole

    def batch(self, indices, variant: int = 0, semantic: np.ndarray | None = None) -> np.ndarray:
        """Masks of several indices stacked: bool (N, H, W); ``semantic``: their class maps (N, H, W)."""
        if semantic is None:
            return np.stack([self(int(i), variant) for i in indices])
        return np.stack([self(int(i), variant, m) for i, m in zip(indices, semantic, strict=True)])
