"""Rendering of the emoji: SVGs rasterised by PyPI ``resvg-py``, alpha composited on a background.

:func:`render_svg` draws an SVG to an RGBA square of any resolution (aspect kept, centred);
:func:`composite_on_background` puts any PIL image (RGBA, palette with transparency, ...) over an
opaque colour. ``resvg-py`` is imported on first use only (``pip install resvg-py``, or
``pip install 'latent-flow[emoji]'``); without it rendering raises
:class:`~latent_flow.data.emoji_sources.EmojiSourceMissingError` naming the install command.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageColor

from latent_flow.data.emoji_sources import EmojiSourceMissingError, dist_version

__all__ = [
    "composite_on_background",
    "parse_background",
    "png_bytes",
    "render_svg",
    "renderer_id",
]


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


def render_svg(path: str | os.PathLike, resolution: int) -> Image.Image:
    """Rasterise an SVG file with resvg to an RGBA ``resolution`` square (aspect kept, centred)."""
    out = _resvg().svg_to_bytes(
        svg_path=str(path), width=int(resolution), height=int(resolution), skip_system_fonts=True
    )
    if isinstance(out, str):  # resvg-py < 0.2 returned base64 text
        out = base64.b64decode(out)
    with Image.open(io.BytesIO(bytes(out))) as image:
        image.load()
        return _square(image.convert("RGBA"), int(resolution))


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
