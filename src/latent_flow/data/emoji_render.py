"""Rendering of the emoji: SVGs rasterised by PyPI ``resvg-py``, alpha composited on a background,
and OpenMoji's part maps.

:func:`render_svg` draws an SVG to an RGBA square of any resolution (aspect kept, centred);
:func:`composite_on_background` puts any PIL image (RGBA, palette with transparency, ...) over an
opaque colour. ``resvg-py`` is imported on first use only (``pip install resvg-py``, or
``pip install 'latent-flow[emoji]'``); without it rendering raises
:class:`~latent_flow.data.emoji_sources.EmojiSourceMissingError` naming the install command.

Part maps (:func:`render_part_map`). Every OpenMoji SVG is drawn in named top-level layers, in
this paint order or another: ``<g id="color">``, ``<g id="skin">``, ``<g id="skin-shadow">``,
``<g id="hair">``, ``<g id="line">`` (the black outlines), and in a few files
``<g id="line-supplement">`` (black fills of the line art, painted first, under the colour; 202 of
4,495 files) and ``<g id="color-foreground">`` (colour painted over the lines; 95 files). Each
layer is rendered alone (the others get ``display="none"``: same viewBox, size and transform as the
colour render, so the maps are pixel-aligned with the images) and gives an alpha map ``a_i``.
The classes are :data:`PART_CLASSES`: ``background`` (0) and the five layer names;
``line-supplement`` counts as ``line`` and ``color-foreground`` as ``color`` (:data:`PART_LAYERS`).

Overlaps resolve by paint order: a pixel gets the class whose paint is visible most in the final
composite. Layer ``i`` shows ``a_i * prod_{j painted later} (1 - a_j)`` of the pixel, the background
``prod_j (1 - a_j)``; shares of the layers of one class add up; the largest wins, a tie goes to the
class painted later, and the background loses ties. An opaque layer therefore hides everything under
it (later layers win: the outline is on top wherever it is drawn, as it is the last layer of every
file but the 95 with a ``color-foreground``), and an anti-aliased edge pixel goes to the side that
covers most of it. Compositing the layer renders in paint order gives the colour render back
(alpha within 2/255, premultiplied colour within 4/255: 8-bit rounding; tested).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageColor

from latent_flow.data.emoji_sources import EmojiSourceMissingError, dist_version

__all__ = [
    "PART_CLASSES",
    "PART_COLOURS",
    "PART_LAYERS",
    "EmojiLayerError",
    "colour_part_map",
    "composite_on_background",
    "part_map_from_layers",
    "part_map_image",
    "parse_background",
    "png_bytes",
    "render_part_map",
    "render_svg",
    "render_svg_layers",
    "renderer_id",
]

#: classes of the OpenMoji part maps, id = position (0: nothing drawn)
PART_CLASSES: tuple[str, ...] = ("background", "color", "skin", "skin-shadow", "hair", "line")
#: OpenMoji layer id -> part class
PART_LAYERS: dict[str, str] = {
    "color": "color",
    "color-foreground": "color",  # colour painted over the outlines
    "skin": "skin",
    "skin-shadow": "skin-shadow",
    "hair": "hair",
    "line": "line",
    "line-supplement": "line",  # black fills of the line art, painted under the colour
}
#: the colour legend of the maps (RGB per class; also the palette of the cached map PNGs)
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (255, 255, 255),
    "color": (86, 180, 233),
    "skin": (240, 200, 160),
    "skin-shadow": (166, 106, 66),
    "hair": (213, 94, 0),
    "line": (0, 0, 0),
}
_SVG_NS = "http://www.w3.org/2000/svg"
ElementTree.register_namespace("", _SVG_NS)
ElementTree.register_namespace("xlink", "http://www.w3.org/1999/xlink")


class EmojiLayerError(ValueError):
    """An SVG without the named layers a part map is made of."""


def parse_background(background) -> tuple[int, int, int]:
    """An RGB triple from 3 ints in [0, 255] or a colour string (``'#ffffff'``, ``'white'``)."""
    if isinstance(background, str):
        try:
            rgb = ImageColor.getrgb(background)
        except ValueError:
            raise ValueError(f"background {background!r} is not a colour (e.g. [255, 255, 255] or '#ffffff')") from None
        return tuple(int(c) for c in rgb[:3])  # type: ignore[return-value]
    values = list(background)
    valid = [not isinstance(v, bool) and isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values]
    if len(values) != 3 or not all(valid):
        raise ValueError(f"background must be 3 ints in [0, 255] (RGB), got {background!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def composite_on_background(image: Image.Image, background: Sequence[int] | str = (255, 255, 255)) -> Image.Image:
    """Any PIL image (RGBA, palette with transparency, LA, ...) over an opaque colour -> RGB."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*parse_background(background), 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _square(image: Image.Image, resolution: int) -> Image.Image:
    """Centre a non-square (aspect-preserving) render on a transparent square canvas."""
    if image.size == (resolution, resolution):
        return image
    if max(image.size) != resolution:
        image = image.resize((max(1, round(image.width * resolution / max(image.size))),
                              max(1, round(image.height * resolution / max(image.size)))), Image.LANCZOS)  # fmt: skip
    canvas = Image.new("RGBA", (resolution, resolution), (0, 0, 0, 0))
    canvas.paste(image, ((resolution - image.width) // 2, (resolution - image.height) // 2))
    return canvas


def _resvg():
    try:
        spec = importlib.util.find_spec("resvg_py")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise EmojiSourceMissingError(
            "rendering OpenMoji needs the SVG renderer resvg-py: pip install resvg-py (or pip install 'latent-flow[emoji]')"
        )
    import resvg_py

    return resvg_py


def _rasterise(resolution: int, **svg) -> Image.Image:
    """``svg_path=`` or ``svg_string=`` drawn by resvg to an RGBA ``resolution`` square."""
    out = _resvg().svg_to_bytes(width=int(resolution), height=int(resolution), skip_system_fonts=True, **svg)
    if isinstance(out, str):  # resvg-py < 0.2 returned base64 text
        out = base64.b64decode(out)
    with Image.open(io.BytesIO(bytes(out))) as image:
        image.load()
        return _square(image.convert("RGBA"), int(resolution))


def render_svg(path: str | os.PathLike, resolution: int) -> Image.Image:
    """Rasterise an SVG file with resvg to an RGBA ``resolution`` square (aspect kept, centred)."""
    return _rasterise(resolution, svg_path=str(path))


# --------------------------------------------------------------------------------------------
# part maps
# --------------------------------------------------------------------------------------------


def _layers(path: str | os.PathLike) -> tuple[ElementTree.Element, list[ElementTree.Element]]:
    """(root, top-level layer groups in paint order) of an OpenMoji SVG; refuses other SVGs."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise EmojiLayerError(f"cannot read the SVG '{path}': {error}") from error
    groups = []
    for child in root:
        tag = child.tag.rsplit("}", 1)[-1]
        if tag in ("defs", "title", "desc", "metadata", "style"):
            continue
        layer = child.get("id")
        if tag != "g" or layer not in PART_LAYERS:
            what = f'<{tag} id="{layer}">' if layer else f"<{tag}>"
            raise EmojiLayerError(
                f"'{path}' draws {what} outside the named layers: a part map needs every top-level element to be "
                f"one of the OpenMoji layers <g id=...> {', '.join(PART_LAYERS)}"
            )
        groups.append(child)
    if not groups:
        raise EmojiLayerError(f"'{path}' has no named layers (<g id=...> {', '.join(PART_LAYERS)}): no part map")
    return root, groups


def render_svg_layers(path: str | os.PathLike, resolution: int) -> list[tuple[str, np.ndarray]]:
    """``[(layer id, RGBA (R, R, 4) uint8)]`` of each non-empty top-level layer, in paint order.

    Each layer is drawn alone: the other layers get ``display="none"`` (they stay in the file, so
    anything they define stays available to the drawn one), and the size and transform are those of
    :func:`render_svg`. Raises :class:`EmojiLayerError` for an SVG without the OpenMoji layers.
    """
    root, groups = _layers(path)
    out = []
    for group in groups:
        if len(group) == 0:  # an empty layer draws nothing (e.g. <g id="hair"/> of a smiley)
            continue
        for other in groups:
            if other is group:
                other.attrib.pop("display", None)
            else:
                other.set("display", "none")
        image = _rasterise(resolution, svg_string=ElementTree.tostring(root, encoding="unicode"))
        out.append((str(group.get("id")), np.array(image)))
    return out


def part_map_from_layers(layers: Sequence[tuple[str, np.ndarray]], resolution: int | None = None) -> np.ndarray:
    """The ``(R, R)`` uint8 class map (ids of :data:`PART_CLASSES`) of layers in paint order.

    ``layers``: ``(layer id, alpha)`` with alpha ``(R, R)`` uint8, or RGBA ``(R, R, 4)`` uint8 (as
    :func:`render_svg_layers` gives them).

    Each pixel takes the class whose paint shows most in the composite (module docstring): layer
    ``i`` shows ``a_i * prod_{j > i} (1 - a_j)``, the background ``prod_j (1 - a_j)``; shares of one
    class add up; ties go to the class painted later, the background loses them.
    """
    if not layers and resolution is None:
        raise ValueError("part_map_from_layers: no layers and no resolution")
    alphas = [(layer, image[..., 3] if image.ndim == 3 else image) for layer, image in layers]
    shape = alphas[0][1].shape if alphas else (int(resolution), int(resolution))
    shares = np.zeros((len(PART_CLASSES), *shape), dtype=np.float64)
    uncovered = np.ones(shape, dtype=np.float64)
    topmost: dict[int, int] = {}  # class -> position of its last-painted layer
    for position in reversed(range(len(alphas))):
        layer, alpha = alphas[position]
        if layer not in PART_LAYERS:
            raise EmojiLayerError(f"unknown layer {layer!r}; the part classes come from {', '.join(PART_LAYERS)}")
        if alpha.shape != shape:
            raise ValueError(f"layer {layer!r} is {alpha.shape}, the others {shape}")
        cls = PART_CLASSES.index(PART_LAYERS[layer])
        a = alpha.astype(np.float64) / 255.0
        shares[cls] += a * uncovered
        uncovered *= 1.0 - a
        topmost.setdefault(cls, position)
    shares[0] = uncovered
    order = np.array([*sorted(topmost, key=lambda c: -topmost[c]), 0], dtype=np.uint8)
    return order[np.argmax(shares[order], axis=0)]


def render_part_map(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """The ``(R, R)`` uint8 part map of an OpenMoji SVG, aligned with ``render_svg(path, R)``."""
    return part_map_from_layers(render_svg_layers(path, resolution), resolution)


def _palette() -> list[int]:
    flat = [v for name in PART_CLASSES for v in PART_COLOURS[name]]
    return flat + [0] * (768 - len(flat))


def part_map_image(part_map: np.ndarray) -> Image.Image:
    """A class map as a palette PNG image: the pixel values are the class ids, the palette the legend."""
    array = np.asarray(part_map)
    if array.ndim != 2 or array.size == 0 or array.max() >= len(PART_CLASSES):
        raise ValueError(f"a part map is (H, W) with ids in [0, {len(PART_CLASSES)}), got {array.shape}")
    image = Image.frombytes(
        "P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    )
    image.putpalette(_palette())
    return image


def colour_part_map(part_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 legend colours (:data:`PART_COLOURS`)."""
    lut = np.array([PART_COLOURS[name] for name in PART_CLASSES], dtype=np.uint8)
    return lut[np.asarray(part_map, dtype=np.int64)]


def renderer_id(kind: str) -> str:
    """What draws the pixels of a source kind (``svg``: the resvg-py and resvg versions), for settings.json."""
    if kind == "svg":
        resvg = _resvg()
        version = dist_version("resvg-py") or getattr(resvg, "__version__", "?")
        return f"resvg-py {version} (resvg {getattr(resvg, '__resvg_version__', '?')})"
    return "png-composite"


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG (compression level 6)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
