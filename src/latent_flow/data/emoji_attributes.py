"""Attributes of real emoji, for the compositional (LACE) classifiers: four read from the Unicode
codepoints and one from the pixels.

=========  ==============================================================================  ==========
attribute  values                                                                          read from
=========  ==============================================================================  ==========
group      smileys, people, animals, food, travel, activities, objects, symbols, flags     emoji-test
skin       none, light, medium-light, medium, medium-dark, dark                            codepoints
hair       none, red, curly, white, bald                                                   codepoints
gender     none, female, male                                                              codepoints
color      achromatic, red, orange, yellow, green, blue, purple                            pixels
=========  ==============================================================================  ==========

* ``group``: the Unicode emoji group of ``emoji-test.txt`` (the dataset's label, 9 classes), with
  short value names (``Animals & Nature`` -> ``animals``) that fit attribute expressions.
* ``skin``: the first skin-tone modifier of the sequence (``1F3FB`` light ... ``1F3FF`` dark), ``none``
  without one. Couples and handshakes of two tones (380 of the 3,944 OpenMoji) take the first person's.
* ``hair``: the hair component in the sequence: ``1F9B0`` red, ``1F9B1`` curly, ``1F9B3`` white,
  ``1F9B2`` bald; ``none`` without one (also "person: blond hair", ``1F471``, a base of its own).
* ``gender``: the gender sign in the sequence (``2640`` female, ``2642`` male; the two sign emoji
  themselves too); without a sign, the
  gendered people in it (:data:`FEMALE_PEOPLE`, :data:`MALE_PEOPLE`: woman / man, girl / boy, old woman /
  old man, princess / prince, ...) when they all agree; ``none`` for gender-neutral people, objects and
  mixed couples or families.
* ``color``: the dominant hue of the chromatic pixels (:func:`dominant_color`): pixels that differ from
  the background, with HSV saturation >= :data:`MIN_SATURATION` and value >= :data:`MIN_VALUE` (so
  the black outlines, greys and whites are left out); their hues binned into 6 named ranges
  (:data:`HUE_BINS`), the most frequent bin wins; ``achromatic`` when fewer than
  :data:`MIN_CHROMATIC` of the drawn pixels are chromatic.

The class balance of OpenMoji 17.0 is in docs/datasets.md ("Emoji", attributes); print it with
:func:`attribute_table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from latent_flow.data.emoji_sources import EMOJI_GROUPS
from latent_flow.data.emoji_split import normalise_codepoints

__all__ = [
    "ATTRIBUTES_VERSION",
    "ATTRIBUTE_NAMES",
    "ATTRIBUTE_VALUES",
    "FEMALE_PEOPLE",
    "HUE_BINS",
    "MALE_PEOPLE",
    "MIN_CHROMATIC",
    "MIN_SATURATION",
    "MIN_VALUE",
    "attribute_table",
    "codepoint_attributes",
    "dominant_color",
]

#: bump when a rule changes: the dataset fingerprint (and so the latent cache key) carries it
ATTRIBUTES_VERSION = 1
ATTRIBUTE_NAMES: tuple[str, ...] = ("group", "skin", "hair", "gender", "color")
_GROUP_SHORT = ("smileys", "people", "animals", "food", "travel", "activities", "objects", "symbols", "flags")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "group": _GROUP_SHORT,
    "skin": ("none", "light", "medium-light", "medium", "medium-dark", "dark"),
    "hair": ("none", "red", "curly", "white", "bald"),
    "gender": ("none", "female", "male"),
    "color": ("achromatic", "red", "orange", "yellow", "green", "blue", "purple"),
}
_SKIN_TONES = {"1F3FB": 1, "1F3FC": 2, "1F3FD": 3, "1F3FE": 4, "1F3FF": 5}
_HAIR = {"1F9B0": 1, "1F9B1": 2, "1F9B3": 3, "1F9B2": 4}
_SIGNS = {"2640": 1, "2642": 2}
#: gendered people codepoints (the gender-neutral forms, e.g. person 1F9D1, are in neither)
FEMALE_PEOPLE = frozenset({
    "1F469",  # woman
    "1F467",  # girl
    "1F475",  # old woman
    "1F478",  # princess
    "1F930",  # pregnant woman
    "1F936",  # Mrs. Claus
    "1F483",  # woman dancing
    "1F46D",  # women holding hands
    "1F9D5",  # woman with headscarf
})  # fmt: skip
MALE_PEOPLE = frozenset({
    "1F468",  # man
    "1F466",  # boy
    "1F474",  # old man
    "1F934",  # prince
    "1FAC3",  # pregnant man
    "1F385",  # Santa Claus
    "1F57A",  # man dancing
    "1F46C",  # men holding hands
})  # fmt: skip
#: upper hue edges (degrees) of the named bins, set in the gaps of OpenMoji's palette (reds 3-7, oranges and
#: skins 23-43, yellow 55, greens 69-71 and 96, blues 201-217, purples 268, pinks 340-345); hues from the last
#: edge to 360 are red again, pinks count as purple
HUE_BINS: tuple[tuple[float, str], ...] = (
    (15.0, "red"),
    (45.0, "orange"),
    (65.0, "yellow"),
    (165.0, "green"),
    (260.0, "blue"),
    (345.0, "purple"),
)
MIN_SATURATION = 0.15  # HSV saturation of a chromatic pixel (light skin #FADCBC is 0.25, greys < 0.05)
MIN_VALUE = 0.25  # HSV value (brightness) of a chromatic pixel (the outlines are black)
MIN_CHROMATIC = 0.2  # share of the drawn pixels that must be chromatic, else "achromatic"


def codepoint_attributes(codepoints: str, group: str) -> dict[str, int]:
    """``group``, ``skin``, ``hair`` and ``gender`` value indices of one emoji (module docstring)."""
    if group not in EMOJI_GROUPS:
        raise ValueError(f"{codepoints}: unknown emoji group {group!r}; expected one of {', '.join(EMOJI_GROUPS)}")
    parts = normalise_codepoints(codepoints).split("-")
    skin = next((_SKIN_TONES[c] for c in parts if c in _SKIN_TONES), 0)
    hair = next((_HAIR[c] for c in parts if c in _HAIR), 0)
    gender = next((_SIGNS[c] for c in parts if c in _SIGNS), 0)
    if not gender:
        female, male = any(c in FEMALE_PEOPLE for c in parts), any(c in MALE_PEOPLE for c in parts)
        gender = 1 if female and not male else 2 if male and not female else 0
    return {"group": EMOJI_GROUPS.index(group), "skin": skin, "hair": hair, "gender": gender}


def dominant_color(image: Image.Image | np.ndarray, background: Sequence[int] = (255, 255, 255)) -> int:
    """Index in ``ATTRIBUTE_VALUES["color"]`` of the dominant hue of an RGB image (module docstring)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"dominant_color expects an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float64) / 255.0
    drawn = (rgb != np.asarray(background, dtype=np.uint8)).any(-1)
    chromatic = drawn & (hsv[..., 1] >= MIN_SATURATION) & (hsv[..., 2] >= MIN_VALUE)
    if not chromatic.any() or chromatic.sum() < MIN_CHROMATIC * drawn.sum():
        return 0
    hue = hsv[..., 0][chromatic] * 360.0
    names = [name for _, name in HUE_BINS]
    index = np.searchsorted([edge for edge, _ in HUE_BINS], hue, side="right")  # 0..6, 6 = red again
    counts = np.bincount(np.where(index == len(HUE_BINS), 0, index), minlength=len(HUE_BINS))
    return ATTRIBUTE_VALUES["color"].index(names[int(np.argmax(counts))])


def attribute_table(
    attributes: np.ndarray,
    held_out: np.ndarray | None = None,
    names: Sequence[str] = ATTRIBUTE_NAMES,
    values: Mapping[str, Sequence[str]] = ATTRIBUTE_VALUES,
) -> str:
    """Markdown table of the class balance: per attribute and value, the count (and train / held out)."""
    attributes = np.asarray(attributes)
    if attributes.ndim != 2 or attributes.shape[1] != len(names):
        raise ValueError(f"attributes must be (N, {len(names)}) for {list(names)}, got {attributes.shape}")
    split = held_out is not None
    held = np.zeros(len(attributes), dtype=bool) if held_out is None else np.asarray(held_out, dtype=bool)
    head = "| attribute | value | images | share |" + (" train / held out |" if split else "")
    lines = [head, "| --- | --- | ---: | ---: |" + (" ---: |" if split else "")]
    for j, name in enumerate(names):
        for k, value in enumerate(values[name]):
            hit = attributes[:, j] == k
            row = f"| {name} | {value} | {int(hit.sum()):,} | {hit.mean():.1%} |"
            lines.append(row + (f" {int((hit & ~held).sum()):,} / {int((hit & held).sum()):,} |" if split else ""))
    return "\n".join(lines)
