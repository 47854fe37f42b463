"""Procedurally rendered "shapes" dataset: deterministic, file-free, any resolution.

Every image shows 1 to 3 objects on a smooth two-colour background gradient. All objects of
one image share the same shape type, colour and size class, so the image-level attributes are
unambiguous:

=========  ===========================================================================
attribute  values
=========  ===========================================================================
shape      ``circle``, ``square``, ``triangle``, ``cross``, ``star`` (default set; the
           class label is the index of the shape in ``class_names``)
color      ``red``, ``green``, ``blue``, ``yellow``, ``magenta``, ``cyan``
size       ``small``, ``medium``, ``large`` (object width as a fraction of the image
           width, with jitter inside the class; ``small`` is about 8-9 px at 32 px)
hpos       ``left``, ``center``, ``right``: bin of the mean x-centre of the objects
           (bin edges :data:`HPOS_EDGES`; objects are placed at least
           :data:`HPOS_MARGIN` away from a bin edge)
count      ``1``, ``2``, ``3`` (value index = count - 1, whatever ``min_objects``)
=========  ===========================================================================

Item ``i`` depends only on ``(seed, i)`` (and the constructor arguments), never on the order of
access, worker, or the number of samples. Edges are anti-aliased with an analytic signed
distance and a one-pixel linear ramp (coverage = clip(0.5 - d, 0, 1), ``d`` in pixels); the
per-pixel semantic map is ``coverage > 0.5`` (equivalently ``d < 0``).

Default shapes: five classes chosen to stay distinct down to the smallest objects (about 8 px
at 32 px): a disc (no corners), a square (four corners, flat sides), an upright triangle
(asymmetric top/bottom), a plus-shaped cross (concave, four arms) and a fat five-point star
(concave, five points, inner radius half the outer one). ``ring`` and ``diamond`` are also
available through ``shapes=``; they are not in the default set because at 8 px a ring's hole
is only ~4 px and a diamond is a rotated square. Shapes are drawn upright (no rotation), so a
square never turns into a diamond.

Objects of one image never overlap: their bounding boxes are at least :data:`OBJECT_GAP` of
the image width apart (1.6 px at 32 px), so every object is a separate 8-connected blob of the
semantic map at 32 px and above (at 16 px neighbouring objects may touch).

Backgrounds are gradients between two dark, desaturated colours (HSV value <= 0.42, saturation
<= 0.35, chroma <= 0.15) with optional grey noise, while objects are bright saturated colours
(chroma >= 0.6), so a background can never be mistaken for an object.

Images are float tensors in [-1, 1] (no time variable here; the flow convention t = 0 noise,
t = 1 data is applied downstream).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "RENDER_VERSION",
    "SHAPE_NAMES",
    "DEFAULT_SHAPES",
    "COLOR_NAMES",
    "SIZE_NAMES",
    "SIZE_RANGES",
    "HPOS_NAMES",
    "HPOS_EDGES",
    "HPOS_MARGIN",
    "OBJECT_GAP",
    "ShapesLayout",
    "ShapesDataset",
]

#: Bump whenever the rendering changes (it is part of :meth:`ShapesDataset.fingerprint`).
RENDER_VERSION = 1

# --------------------------------------------------------------------------------------------
# Geometry. Each shape lives in a unit box [-0.5, 0.5]^2 (y pointing down); the object "size"
# is the width of that box as a fraction of the image width.
# --------------------------------------------------------------------------------------------


def _star_vertices(points: int = 5, inner_ratio: float = 0.5) -> np.ndarray:
    # width of a 5-point star with outer radius R is 2 R sin(72 deg); scale it to 1
    outer = 0.5 / np.sin(np.deg2rad(72.0))
    angles = np.deg2rad(-90.0 + np.arange(2 * points) * 180.0 / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, outer * inner_ratio)
    verts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    verts[:, 1] -= (verts[:, 1].max() + verts[:, 1].min()) / 2  # centre vertically
    return verts


def _cross_vertices(half_thickness: float = 0.19) -> np.ndarray:
    t, e = half_thickness, 0.5
    return np.array(
        [(-t, -e), (t, -e), (t, -t), (e, -t), (e, t), (t, t), (t, e), (-t, e), (-t, t), (-e, t), (-e, -t), (-t, -t)],
        dtype=np.float64,
    )


_POLYGONS: dict[str, np.ndarray] = {
    # square side 0.86: a full-box square looks much bigger than the other shapes
    "square": np.array([(-0.43, -0.43), (0.43, -0.43), (0.43, 0.43), (-0.43, 0.43)]),
    "triangle": np.array([(0.0, -0.46), (0.5, 0.42), (-0.5, 0.42)]),
    "cross": _cross_vertices(),
    "star": _star_vertices(),
    "diamond": np.array([(0.0, -0.5), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0)]),
}

#: All shapes the renderer knows (``shapes=`` may pick any subset, in any order).
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "ring", "diamond")
#: Default shape set (5 classes, all clearly distinct at 32 px; see the module docstring).
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")

#: Saturated, bright object colours (RGB in [0, 1]); backgrounds are dark and desaturated.
_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.16, 0.16),
    "green": (0.18, 0.82, 0.25),
    "blue": (0.24, 0.45, 1.00),
    "yellow": (0.97, 0.88, 0.15),
    "magenta": (0.90, 0.22, 0.90),
    "cyan": (0.15, 0.86, 0.90),
}
COLOR_NAMES: tuple[str, ...] = tuple(_COLORS)

SIZE_NAMES: tuple[str, ...] = ("small", "medium", "large")
#: Object width as a fraction of the image width, per size class (uniform jitter inside).
SIZE_RANGES: tuple[tuple[float, float], ...] = ((0.25, 0.285), (0.32, 0.36), (0.40, 0.435))

HPOS_NAMES: tuple[str, ...] = ("left", "center", "right")
#: Bin edges (fractions of the width) of the objects' mean x-centre: left < 0.42 <= center < 0.58 <= right.
HPOS_EDGES: tuple[float, float] = (0.42, 0.58)
#: The mean x-centre is placed at least this far (fraction of the width) from a bin edge.
HPOS_MARGIN = 0.02
#: Minimum gap between the bounding boxes of two objects (fraction of the width).
OBJECT_GAP = 0.05
#: Minimum distance of an object's bounding box from the image border (fraction of the width).
BORDER_PAD = 0.015

COUNT_NAMES: tuple[str, ...] = ("1", "2", "3")
ATTRIBUTE_NAMES: tuple[str, ...] = ("shape", "color", "size", "hpos", "count")

_COLOR_JITTER = 0.05  # per channel, per image
_NUM_RANDOM_LAYOUTS = 64
_NUM_TEMPLATE_LAYOUTS = 32
_MAX_ATTRIBUTE_DRAWS = 100_000


# --------------------------------------------------------------------------------------------
# Signed distances (negative inside), in units of the shape box.
# --------------------------------------------------------------------------------------------


def _polygon_edges(verts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-edge constants of a polygon for :func:`_polygon_sdf` (shaped to broadcast over (E, ...))."""
    verts = np.asarray(verts, dtype=np.float32)
    vx, vy = verts[:, 0], verts[:, 1]
    ex, ey = np.roll(vx, 1) - vx, np.roll(vy, 1) - vy  # e = v[j] - v[i], j = i - 1
    inv_len2 = 1.0 / (ex * ex + ey * ey)
    shape = (-1, 1, 1, 1)
    return tuple(a.reshape(shape) for a in (vx, vy, ex, ey, inv_len2, np.roll(vy, 1)))


def _polygon_sdf(px: np.ndarray, py: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
    """Exact signed distance to a simple polygon (Inigo Quilez's sdPolygon), vectorised over edges.

    ``px``, ``py`` broadcast to (N, h, w); returns (N, h, w), negative inside.
    """
    vx, vy, ex, ey, inv_len2, vy_prev = edges
    wx = px[None] - vx  # w = p - v[i]
    wy = py[None] - vy
    h = np.clip((wx * ex + wy * ey) * inv_len2, 0.0, 1.0)
    bx = wx - ex * h
    by = wy - ey * h
    dist2 = (bx * bx + by * by).min(axis=0)
    c1 = py[None] >= vy
    c2 = py[None] < vy_prev
    c3 = ex * wy > ey * wx
    flips = (c1 & c2 & c3) | ~(c1 | c2 | c3)
    inside = np.logical_xor.reduce(flips, axis=0)
    dist = np.sqrt(dist2)
    return np.where(inside, -dist, dist)


_EDGES = {name: _polygon_edges(verts) for name, verts in _POLYGONS.items()}


def _shape_sdf(name: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to shape ``name`` in its unit box, at points (px, py)."""
    if name == "circle":
        return np.sqrt(px * px + py * py) - 0.5
    if name == "ring":  # outer radius 0.5, hole radius 0.25
        return np.abs(np.sqrt(px * px + py * py) - 0.375) - 0.125
    return _polygon_sdf(px, py, _EDGES[name])


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesLayout:
    """Everything that defines one image (returned by :meth:`ShapesDataset.layout`).

    ``centers`` are (x, y) object centres and ``size`` the object width, both as fractions of
    the image width (multiply by the resolution for pixels).
    """

    attributes: dict[str, int]
    size: float
    centers: np.ndarray  # (count, 2)
    color: np.ndarray  # (3,) RGB in [0, 1]
    background: tuple[np.ndarray, np.ndarray, float]  # colour 0, colour 1, gradient angle
    noise_std: float


def _hpos_interval(hpos: int) -> tuple[float, float]:
    lo_edge, hi_edge = HPOS_EDGES
    bounds = (
        (0.0, lo_edge - HPOS_MARGIN),
        (lo_edge + HPOS_MARGIN, hi_edge - HPOS_MARGIN),
        (hi_edge + HPOS_MARGIN, 1.0),
    )
    return bounds[hpos]


def _template_offsets(n: int, size: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative centres (x, y), each (n, K), of row/column layouts spaced by >= size + OBJECT_GAP.

    ``u`` (9, K) uniform numbers. Objects sit in 1 to n rows (rows ``sep`` or more apart, any x
    offset between rows), objects of a row ``sep`` or more apart in x; transposed half the time.
    """
    sep = size + OBJECT_GAP
    extra = 0.25 * size
    k = u.shape[1]
    step1, step2 = sep + extra * u[0], sep + extra * u[1]
    row1, row2 = sep + extra * u[2], sep + extra * u[3]
    off1, off2 = (2 * u[4] - 1) * sep, (2 * u[5] - 1) * sep
    free_jit = (u[6] - 0.5) * sep  # y jitter of a lone row (x-separated objects stay apart)
    row_jit = (2 * u[6] - 1) * (row1 - sep) / 2  # in-row y jitter keeping two rows >= sep apart
    x = np.zeros((n, k))
    y = np.zeros((n, k))
    if n == 2:
        one_row = u[7] < 0.5  # split (2,) else (1, 1)
        x[1] = np.where(one_row, step1, off1)
        y[1] = np.where(one_row, free_jit, row1)
    else:
        split = np.minimum((u[7] * 4).astype(np.int64), 3)  # (3,), (2, 1), (1, 2), (1, 1, 1)
        x[1] = np.choose(split, [step1, step1, off1, off1])
        x[2] = np.choose(split, [step1 + step2, off1, off1 + step1, off2])
        y[0] = np.choose(split, [0.0, row_jit, 0.0, 0.0])
        y[1] = np.choose(split, [free_jit, -row_jit, row1 + row_jit, row1])
        y[2] = np.choose(split, [0.0, row1, row1 - row_jit, row1 + row2])
    transpose = u[8] < 0.5
    return np.where(transpose, y, x), np.where(transpose, x, y)


def _fallback_offsets(n: int, size: float, hpos: int) -> np.ndarray:
    """A layout (n, 2) that always reaches its hpos bin (checked by the tests for the largest size)."""
    sep = size + OBJECT_GAP
    if n == 2:
        return np.array([(0.0, 0.0), (0.0, sep)])
    if hpos == 1:
        return np.array([(0.0, 0.0), (sep, 0.0), (sep / 2, sep)])
    pts = np.array([(0.0, 0.0), (0.0, sep), (sep, sep / 2)])
    if hpos == 2:
        pts[:, 0] = -pts[:, 0]
    return pts


def _min_rows(a: np.ndarray) -> np.ndarray:
    out = a[0]
    for row in a[1:]:
        out = np.minimum(out, row)
    return out


def _max_rows(a: np.ndarray) -> np.ndarray:
    out = a[0]
    for row in a[1:]:
        out = np.maximum(out, row)
    return out


def _random_layout(n: int, size: float, hpos: int, rng: np.random.Generator) -> np.ndarray:
    """Object centres (n, 2) as fractions of the image width.

    Objects lie inside the image (BORDER_PAD), their bounding boxes are >= OBJECT_GAP apart, and
    their mean x-centre lies in the hpos bin shrunk by HPOS_MARGIN. Uniform random candidates are
    tried first (natural layouts), then row/column templates (needed for crowded images such as
    three large objects), then a fixed layout that is always feasible.
    """
    lo = size / 2 + BORDER_PAD
    hi = 1.0 - lo
    t0, t1 = _hpos_interval(hpos)
    if n == 1:
        u = rng.random(2)
        a, b = max(lo, t0), min(hi, t1)
        return np.array([[a + (b - a) * u[0], lo + (hi - lo) * u[1]]])

    sep = size + OBJECT_GAP - 1e-9
    pairs = [(0, 1)] if n == 2 else [(0, 1), (0, 2), (1, 2)]

    def select(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        # x, y (n, K): first candidate that is separated, inside, and can be translated into the bin
        ok = np.ones(x.shape[1], dtype=bool)
        for i, j in pairs:
            ok &= np.maximum(np.abs(x[i] - x[j]), np.abs(y[i] - y[j])) >= sep
        x_min, x_max = _min_rows(x), _max_rows(x)
        mean = x.sum(axis=0) / n
        reach_lo = np.maximum(mean - (x_min - lo), t0)
        reach_hi = np.minimum(mean + (hi - x_max), t1)
        ok &= (reach_lo <= reach_hi) & (x_min >= lo - 1e-9) & (x_max <= hi + 1e-9)
        ok &= (_min_rows(y) >= lo - 1e-9) & (_max_rows(y) <= hi + 1e-9)
        good = np.flatnonzero(ok)
        if not good.size:
            return None
        c = good[0]
        shift = reach_lo[c] + (reach_hi[c] - reach_lo[c]) * rng.random() - mean[c]
        return np.stack([x[:, c] + shift, y[:, c]], axis=1)

    # 1) uniform random candidates
    cand = lo + (hi - lo) * rng.random((2, n, _NUM_RANDOM_LAYOUTS))
    centers = select(cand[0], cand[1])
    if centers is not None:
        return centers
    # 2) row / column templates, with the always-feasible fallback last
    k2 = _NUM_TEMPLATE_LAYOUTS
    x, y = _template_offsets(n, size, rng.random((9, k2)))
    fallback = _fallback_offsets(n, size, hpos)
    x = np.concatenate([x, fallback[:, :1]], axis=1)
    y = np.concatenate([y, fallback[:, 1:]], axis=1)
    x = x - _min_rows(x) + lo
    y = y - _min_rows(y)
    y = y + lo + np.maximum(hi - lo - _max_rows(y), 0.0) * rng.random(k2 + 1)
    centers = select(x, y)
    if centers is None:  # pragma: no cover - the fallback layout is always feasible
        raise RuntimeError(f"no layout found for count={n}, size={size:.3f}, hpos={HPOS_NAMES[hpos]}")
    return centers


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _check_names(kind: str, names: Sequence[str] | None, valid: Sequence[str], default: Sequence[str]) -> list[str]:
    if names is None:
        return list(default)
    if isinstance(names, str):
        raise TypeError(f"{kind}s must be a list of names, got the string {names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{kind}s must not be empty; valid {kind}s: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {kind} in {names}")
    return names


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


#: Most memory ``ShapesDataset(cache_renders=True)`` may hold (the quick start's 20,000 items at 32 px: 82 MB).
MAX_RENDER_CACHE_BYTES = 4 * 2**30


class ShapesDataset(Dataset):
    """Built-in procedural dataset of coloured shapes (see the module docstring).

    Args:
        num_samples: number of items (``len``).
        resolution: image side in pixels (>= 16; 32 by default; any value works).
        seed: item ``i`` is a pure function of ``(seed, i)`` and the other arguments.
        min_objects / max_objects: range of the ``count`` attribute (within 1..3).
        shapes: shape types to use (subset of :data:`SHAPE_NAMES`; default :data:`DEFAULT_SHAPES`);
            the class label is the index in this list.
        colors: colours to use (subset of :data:`COLOR_NAMES`, default all six).
        exclude: held-out attribute combinations, e.g. ``[{"shape": "triangle", "color": "red"}]``.
            A rule matches an image when every listed attribute has the listed value (a value may be
            a name or a list of names; counts may be given as ints). Excluded draws are resampled
            deterministically, so no image ever shows an excluded combination.
        cache_renders: keep each item's pixels after its first render and serve it from memory
            afterwards (about 4 KB per item at 32 px; the items are the same either way). Pays off
            when the same items are read many times in one process: the quick start's
            autoencoder epochs, then its latent cache, read the 20,000 items 3 times. Refused with a
            ValueError above :data:`MAX_RENDER_CACHE_BYTES` (see :meth:`render_cache_bytes`).

    Items: ``{"image": (3, H, W) float in [-1, 1], "label": long (), "index": long (),
    "attributes": (5,) long in the order of ``attribute_names``, "semantic": (H, W) long}``
    with semantic 0 = background and k + 1 = shape type k.
    """

    def __init__(
        self,
        num_samples: int = 10000,
        resolution: int = 32,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 3,
        shapes: list[str] | None = None,
        colors: list[str] | None = None,
        exclude: list[dict] | None = None,
        cache_renders: bool = False,
    ) -> None:
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.resolution = _check_int("resolution", resolution, 16)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        self.seed = int(seed)
        self.min_objects = _check_int("min_objects", min_objects, 1, 3)
        self.max_objects = _check_int("max_objects", max_objects, 1, 3)
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        self.shapes = _check_names("shape", shapes, SHAPE_NAMES, DEFAULT_SHAPES)
        self.colors = _check_names("color", colors, COLOR_NAMES, COLOR_NAMES)

        self.attribute_names: list[str] = list(ATTRIBUTE_NAMES)
        self.class_names: list[str] = list(self.shapes)
        self.num_classes: int = len(self.class_names)
        self.semantic_classes: list[str] = ["background", *self.class_names]
        self.attribute_values: dict[str, list[str]] = {
            "shape": list(self.shapes),
            "color": list(self.colors),
            "size": list(SIZE_NAMES),
            "hpos": list(HPOS_NAMES),
            "count": list(COUNT_NAMES),
        }
        self.exclude: list[dict[str, list[str]]] = self._normalise_exclude(exclude)
        self._allowed = self._allowed_table()
        self._coords = ((np.arange(self.resolution, dtype=np.float64) + 0.5) / self.resolution).astype(np.float32)
        self.cache_renders = bool(cache_renders)
        if self.cache_renders and self.render_cache_bytes() > MAX_RENDER_CACHE_BYTES:
            raise ValueError(
                f"cache_renders would keep up to {self.render_cache_bytes() / 2**30:.1f} GiB of renders in memory "
                f"({self.num_samples} items at {self.resolution} px; the limit is "
                f"{MAX_RENDER_CACHE_BYTES / 2**30:.0f} GiB): set data.dataset.cache_renders=false"
            )
        self._memo: dict[str, np.ndarray] | None = None  # allocated on the first render when cache_renders

    # ---------------------------------------------------------------- configuration helpers
    def _normalise_exclude(self, exclude: list[dict] | None) -> list[dict[str, list[str]]]:
        if exclude is None:
            return []
        if isinstance(exclude, Mapping):
            raise TypeError("exclude must be a list of dicts, e.g. [{'shape': 'triangle', 'color': 'red'}]")
        rules = []
        for rule in exclude:
            if not isinstance(rule, Mapping) or not rule:
                raise ValueError(f"each exclude rule must be a non-empty dict of attribute -> value(s), got {rule!r}")
            norm: dict[str, list[str]] = {}
            for key, values in rule.items():
                if key not in self.attribute_values:
                    raise ValueError(
                        f"unknown attribute {key!r} in exclude; valid attributes: {', '.join(ATTRIBUTE_NAMES)}"
                    )
                if isinstance(values, (str, int, np.integer)):
                    values = [values]
                names = []
                for value in values:
                    name = str(value)
                    if name not in self.attribute_values[key]:
                        raise ValueError(
                            f"unknown value {value!r} for attribute {key!r} in exclude; "
                            f"valid values: {', '.join(self.attribute_values[key])}"
                        )
                    names.append(name)
                norm[key] = sorted(set(names), key=self.attribute_values[key].index)
            rules.append(norm)
        return rules

    def _allowed_table(self) -> np.ndarray:
        dims = [len(self.attribute_values[name]) for name in ATTRIBUTE_NAMES]
        allowed = np.ones(dims, dtype=bool)
        counts = np.zeros(len(COUNT_NAMES), dtype=bool)
        counts[self.min_objects - 1 : self.max_objects] = True
        allowed &= counts.reshape(1, 1, 1, 1, -1)
        for rule in self.exclude:
            index = []
            for name in ATTRIBUTE_NAMES:
                if name in rule:
                    index.append([self.attribute_values[name].index(v) for v in rule[name]])
                else:
                    index.append(list(range(len(self.attribute_values[name]))))
            allowed[np.ix_(*index)] = False
        if not allowed.any():
            raise ValueError(f"exclude={self.exclude} removes every attribute combination")
        return allowed

    def fingerprint(self) -> str:
        """Stable sha1 of the constructor arguments and :data:`RENDER_VERSION`."""
        config = {
            "class": type(self).__name__,
            "render_version": RENDER_VERSION,
            "num_samples": self.num_samples,
            "resolution": self.resolution,
            "seed": self.seed,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "shapes": self.shapes,
            "colors": self.colors,
            "exclude": self.exclude,
        }
        return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, resolution={self.resolution}, seed={self.seed}, "
            f"min_objects={self.min_objects}, max_objects={self.max_objects}, shapes={self.shapes}, "
            f"colors={self.colors}, exclude={self.exclude})"
        )

    def __len__(self) -> int:
        return self.num_samples

    # ---------------------------------------------------------------- sampling / rendering
    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.num_samples}")
        return index

    def layout(self, index: int) -> ShapesLayout:
        """Attributes, object centres/size, colours and background of item ``index`` (no pixels)."""
        return self._layout(self._check_index(index))[0]

    def _layout(self, index: int) -> tuple[ShapesLayout, np.random.Generator]:
        rng = np.random.Generator(np.random.Philox(key=[index, self.seed]))
        dims = np.array(self._allowed.shape)
        low = np.array([0, 0, 0, 0, self.min_objects - 1])
        span = dims - low
        span[4] = self.max_objects - self.min_objects + 1
        for _ in range(_MAX_ATTRIBUTE_DRAWS):
            draw = tuple(int(v) for v in low + np.minimum((rng.random(5) * span).astype(np.int64), span - 1))
            if self._allowed[draw]:
                break
        else:  # pragma: no cover - the table has at least one allowed entry
            raise RuntimeError("could not draw a non-excluded attribute combination")
        attributes = dict(zip(ATTRIBUTE_NAMES, draw))
        count = attributes["count"] + 1

        lo, hi = SIZE_RANGES[attributes["size"]]
        size = lo + (hi - lo) * float(rng.random())
        centers = _random_layout(count, size, attributes["hpos"], rng)

        u = rng.random(11)
        base = np.array(_COLORS[self.colors[attributes["color"]]])
        color = np.clip(base + _COLOR_JITTER * (2 * u[:3] - 1), 0.0, 1.0)
        c0 = np.array(colorsys.hsv_to_rgb(u[3], 0.35 * u[4], 0.07 + 0.35 * u[5]))
        c1 = np.array(colorsys.hsv_to_rgb(u[6], 0.35 * u[7], 0.07 + 0.35 * u[8]))
        noise_std = 0.01 + 0.02 * float(u[10]) if u[9] < 0.5 else 0.0
        background = (c0, c1, float(2 * np.pi * rng.random()))
        return ShapesLayout(attributes, size, centers, color, background, noise_std), rng

    def render(self, index: int) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
        """Render item ``index``: (uint8 image (H, W, 3), attributes {name: value index}, semantic (H, W) int64)."""
        index = self._check_index(index)
        if not self.cache_renders:
            return self._render(index)
        memo = self._memo
        if memo is None:
            n, res = self.num_samples, self.resolution
            memo = self._memo = {
                "done": np.zeros(n, dtype=bool),
                "image": np.empty((n, res, res, 3), dtype=np.uint8),
                "semantic": np.empty((n, res, res), dtype=np.uint8),
                "attributes": np.empty((n, len(ATTRIBUTE_NAMES)), dtype=np.int64),
            }
        if not memo["done"][index]:
            image, attributes, semantic = self._render(index)
            memo["image"][index], memo["semantic"][index] = image, semantic
            memo["attributes"][index] = [attributes[k] for k in ATTRIBUTE_NAMES]
            memo["done"][index] = True
        attributes = dict(zip(ATTRIBUTE_NAMES, (int(v) for v in memo["attributes"][index])))
        return memo["image"][index].copy(), attributes, memo["semantic"][index].astype(np.int64)

    def render_cache_bytes(self) -> int:
        """Memory that ``cache_renders`` holds once every item was read (image, semantic map, attributes)."""
        return self.num_samples * (4 * self.resolution**2 + 8 * len(ATTRIBUTE_NAMES) + 1)

    def _render(self, index: int) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
        spec, rng = self._layout(index)
        res = self.resolution
        coords = self._coords

        # background: smooth two-colour gradient along a random direction (+ optional light noise)
        c0, c1, angle = spec.background
        ca, sa = float(np.cos(angle)), float(np.sin(angle))
        proj = ((coords[None, :] - 0.5) * ca + (coords[:, None] - 0.5) * sa) / (abs(ca) + abs(sa)) + 0.5
        image = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * proj[..., None]
        if spec.noise_std > 0:
            image += rng.standard_normal((res, res, 1), dtype=np.float32) * np.float32(spec.noise_std)

        # objects: union (min) of signed distances in pixels, each evaluated on a square patch
        shape_name = self.shapes[spec.attributes["shape"]]
        size_px = spec.size * res
        patch = int(np.ceil(size_px)) + 3
        centers_px = spec.centers * res
        start = np.floor(centers_px - size_px / 2).astype(np.int64) - 1  # (n, 2) patch origin (x, y)
        local = (start[:, :, None] + np.arange(patch)[None, None, :] + 0.5 - centers_px[:, :, None]) / size_px
        local = local.astype(np.float32)
        d = _shape_sdf(shape_name, local[:, 0, None, :], local[:, 1, :, None]) * np.float32(size_px)  # (n, P, P)
        dist = np.full((res, res), np.inf, dtype=np.float32)
        for (x0, y0), d_obj in zip(start.tolist(), d):
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + patch, res), min(y0 + patch, res)
            target = dist[cy0:cy1, cx0:cx1]
            np.minimum(target, d_obj[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], out=target)
        coverage = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
        image += (spec.color.astype(np.float32) - image) * coverage
        image_u8 = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        semantic = np.where(dist < 0, spec.attributes["shape"] + 1, 0).astype(np.int64)
        return image_u8, spec.attributes, semantic

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = self._check_index(index)
        image, attributes, semantic = self.render(index)
        # conversion in numpy: cheaper than torch ops for small images (no intra-op thread pool)
        image_f = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
        return {
            "image": torch.from_numpy(image_f),
            "label": torch.tensor(attributes["shape"], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
            "attributes": torch.tensor([attributes[n] for n in ATTRIBUTE_NAMES], dtype=torch.long),
            "semantic": torch.from_numpy(semantic),
        }

    # ---------------------------------------------------------------- helpers
    def describe(self, attributes: Tensor | Sequence[int] | Mapping[str, int]) -> str:
        """Human-readable description, e.g. ``"2 large red triangles, left"``."""
        if isinstance(attributes, Mapping):
            values = [int(attributes[n]) for n in ATTRIBUTE_NAMES]
        else:
            values = [
                int(v) for v in (attributes.tolist() if isinstance(attributes, (Tensor, np.ndarray)) else attributes)
            ]
        if len(values) != len(ATTRIBUTE_NAMES):
            raise ValueError(f"expected {len(ATTRIBUTE_NAMES)} attributes {ATTRIBUTE_NAMES}, got {values}")
        names = {}
        for name, value in zip(ATTRIBUTE_NAMES, values):
            options = self.attribute_values[name]
            if not 0 <= value < len(options):
                raise ValueError(f"attribute {name!r} value {value} out of range [0, {len(options)})")
            names[name] = options[value]
        count = int(names["count"])
        shape = names["shape"] + ("es" if names["shape"].endswith("s") else "s") if count > 1 else names["shape"]
        return f"{count} {names['size']} {names['color']} {shape}, {names['hpos']}"
