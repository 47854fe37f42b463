"""Emoji codepoint sequences and the held-out split rule.

An emoji is held out when the sha1 of its *split key* (as a fraction of 2**32, first 8 hex digits) is
below ``val_fraction`` (:func:`split_of`). The key depends only on the codepoints, so every source
(OpenMoji, Noto, Twemoji) holds out the same emoji whatever files it has and in whatever order.

Three keys (``split_by``):

* ``"design"`` (the default): every variant of one design shares a key (:func:`design_key`), so no
  held-out emoji has a sibling in training. Removed or merged: skin tones (``1F3FB``-``1F3FF``), hair
  components (``1F9B0``-``1F9B3``), gender signs ``2640`` / ``2642`` and the direction ``27A1`` inside
  ZWJ sequences; the gendered person bases (man / woman / person, boy / girl / child, old man /
  old woman / older person, prince / princess / person with crown, pregnant woman / man / person,
  Santa / Mrs Claus / Mx Claus, man / woman dancing) map to one base; couples (holding hands, kiss,
  couple with heart, bunny ears) map to their person-person ZWJ form; every family (``1F46A`` or a ZWJ
  sequence of people only) is one design.
* ``"base"``: only the skin tones removed (the 2026-12 rule; gender and hair variants leak).
* ``"sequence"``: the whole normalised sequence (the first rule; skin-tone variants leak).

Measured on OpenMoji 17.0 (``tests/unit/test_emoji_split.py``): with ``"sequence"`` 254 of 396
held-out emoji have a skin-tone sibling in training; with ``"design"`` none has a sibling by skin
tone, hair, gender sign, direction, or Unicode name before the colon (flags and keycaps aside: different
designs under one name prefix).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "SKIN_TONES",
    "SPLIT_BY",
    "VARIATION_SELECTORS",
    "check_val_fraction",
    "design_key",
    "normalise_codepoints",
    "split_key",
    "split_of",
    "split_value",
]

VARIATION_SELECTORS = frozenset({"FE0E", "FE0F"})
SKIN_TONES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
#: red / curly / white / bald hair components
HAIR = frozenset({"1F9B0", "1F9B1", "1F9B2", "1F9B3"})
ZWJ = "200D"
#: inside a ZWJ sequence these only change who is drawn or which way they face
ZWJ_MODIFIERS = frozenset({"2640", "2642", "27A1"}) | HAIR
#: gendered forms of one design -> the gender-neutral codepoint
PERSON_BASES = {
    "1F468": "1F9D1",  # man, woman -> person
    "1F469": "1F9D1",
    "1F466": "1F9D2",  # boy, girl -> child
    "1F467": "1F9D2",
    "1F474": "1F9D3",  # old man, old woman -> older person
    "1F475": "1F9D3",
    "1F934": "1FAC5",  # prince, princess -> person with crown
    "1F478": "1FAC5",
    "1F930": "1FAC4",  # pregnant woman, pregnant man -> pregnant person
    "1FAC3": "1FAC4",
    "1F936": "1F385",  # Mrs Claus -> Santa (Mx Claus is 1F9D1-200D-1F384 below)
    "1F483": "1F57A",  # woman dancing -> man dancing
}
#: whole sequences that are another form of a person-person design
COUPLES = {
    "1F46B": "1F9D1-1F91D-1F9D1",  # woman and man / men / women holding hands -> people holding hands
    "1F46C": "1F9D1-1F91D-1F9D1",
    "1F46D": "1F9D1-1F91D-1F9D1",
    "1F48F": "1F9D1-2764-1F48B-1F9D1",  # kiss
    "1F491": "1F9D1-2764-1F9D1",  # couple with heart
    "1F46F": "1F9D1-1F430-1F9D1",  # people with bunny ears
    "1F9D1-1F384": "1F385",  # Mx Claus
}
FAMILY = "1F46A"
#: the people a family sequence is made of (after PERSON_BASES)
_FAMILY_MEMBERS = frozenset({"1F9D1", "1F9D2", "1F476"})
SPLIT_BY = ("design", "base", "sequence")


def normalise_codepoints(sequence: str | Sequence[str | int]) -> str:
    """Canonical key of a codepoint sequence: upper-case hex (at least 4 digits) joined by ``-``,
    variation selectors ``FE0F`` / ``FE0E`` removed.

    Accepts ``"1f600"``, ``"0023-FE0F-20E3"``, ``"1F468 200D 1F469"``, ``"U+1F600"``, ``"1f600_fe0f"``
    or a sequence of hex strings / ints.
    """
    if isinstance(sequence, str):
        parts: Iterable[str | int] = re.split(r"[\s_\-]+", sequence.strip())
    else:
        parts = sequence
    out = []
    for part in parts:
        if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
            value = int(part)
        else:
            text = str(part).strip()
            if not text:
                continue
            if text[:2].upper() == "U+":
                text = text[2:]
            try:
                value = int(text, 16)
            except ValueError:
                raise ValueError(f"invalid codepoint {part!r} in {sequence!r}: expected hex such as 1F600") from None
        if not 0 <= value <= 0x10FFFF:
            raise ValueError(f"codepoint {part!r} in {sequence!r} is outside the Unicode range")
        hexa = f"{value:04X}"
        if hexa not in VARIATION_SELECTORS:
            out.append(hexa)
    if not out:
        raise ValueError(f"empty codepoint sequence {sequence!r}")
    return "-".join(out)


def design_key(sequence: str | Sequence[str | int]) -> str:
    """The key shared by every variant of one emoji design (see the module docstring).

    >>> design_key("1F469-1F3FD-200D-1F4BB") == design_key("1F468-200D-1F4BB") == "1F9D1-1F4BB"
    True
    >>> design_key("1F3C3-200D-2640-FE0F") == design_key("1F3C3-1F3FF") == "1F3C3"
    True
    """
    parts = normalise_codepoints(sequence).split("-")
    zwj = ZWJ in parts
    kept = [c for c in parts if c not in SKIN_TONES and c != ZWJ and not (zwj and c in ZWJ_MODIFIERS)]
    if not kept:  # a lone skin tone / hair swatch is its own design
        return "-".join(c for c in parts if c != ZWJ)
    kept = [PERSON_BASES.get(c, c) for c in kept]
    key = "-".join(kept)
    key = COUPLES.get(key, key)
    if key == FAMILY or (len(kept) > 1 and all(c in _FAMILY_MEMBERS for c in kept)):
        return FAMILY
    return key


def split_key(sequence: str | Sequence[str | int], split_by: str = "design") -> str:
    """The string the split hashes: :func:`design_key` (``"design"``), the sequence without skin
    tones (``"base"``) or the whole normalised sequence (``"sequence"``)."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if split_by == "design":
        return design_key(sequence)
    key = normalise_codepoints(sequence)
    if split_by == "base":
        base = "-".join(c for c in key.split("-") if c not in SKIN_TONES)
        key = base or key
    return key


def split_value(sequence: str | Sequence[str | int], split_by: str = "design") -> float:
    """Uniform in [0, 1): the first 32 bits of sha1(:func:`split_key`) over 2**32."""
    digest = hashlib.sha1(split_key(sequence, split_by).encode("ascii")).hexdigest()
    return int(digest[:8], 16) / 2**32


def split_of(sequence: str | Sequence[str | int], val_fraction: float, split_by: str = "design") -> str:
    """``"val"`` (held out) when :func:`split_value` < ``val_fraction``, else ``"train"``."""
    check_val_fraction(val_fraction)
    return "val" if split_value(sequence, split_by) < val_fraction else "train"


def check_val_fraction(val_fraction: float) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"val_fraction must be a number, got {val_fraction!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return float(val_fraction)
