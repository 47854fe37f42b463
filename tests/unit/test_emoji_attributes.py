"""Attributes of real emoji (latent_flow.data.emoji_attributes, EmojiDataset(attributes=True)): the
codepoint rules against the Unicode names of emoji-test.txt, the pixel colour on real OpenMoji renders."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_flow.autoencoders import IdentityAutoencoder
from latent_flow.compositional.expression import parse, validate
from latent_flow.compositional.training import holdout_mask
from latent_flow.data.emoji import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_VALUES,
    COMPONENT_GROUP,
    EmojiDataset,
    attribute_table,
    codepoint_attributes,
    dominant_color,
    find_openmoji_svg_dir,
    load_emoji_test,
    prepare_emoji,
)
from latent_flow.data.latent_cache import LatentCache

RES = 32
BG = (255, 255, 255)
#: real OpenMoji files and the colour a person sees first
HEARTS = {
    "2764": "red",
    "1F9E1": "orange",
    "1F49B": "yellow",
    "1F49A": "green",
    "1F499": "blue",
    "1F49C": "purple",
    "1F5A4": "achromatic",  # black heart
    "1F90D": "achromatic",  # white heart
}
PEOPLE = ["1F600", "1F469-1F3FD-200D-1F9B0", "1F9D1-1F3FF-200D-1F9B2", "1F3C3-1F3FB-200D-2640-FE0F"]


def _values(codepoints: str, group: str = "People & Body") -> dict[str, str]:
    index = codepoint_attributes(codepoints, group)
    return {name: ATTRIBUTE_VALUES[name][v] for name, v in index.items()}


def test_codepoint_rules_in_closed_form():
    assert _values("1F600", "Smileys & Emotion") == {"group": "smileys", "skin": "none", "hair": "none",
                                                       "gender": "none"}  # fmt: skip
    assert _values("1F469-1F3FD-200D-1F9B0") == {"group": "people", "skin": "medium", "hair": "red",
                                                 "gender": "female"}  # fmt: skip
    assert _values("1F9D1-1F3FF-200D-1F9B2") == {"group": "people", "skin": "dark", "hair": "bald", "gender": "none"}
    assert _values("1F468-1F3FC-200D-1F9B1")["hair"] == "curly" and _values("1F9D1-200D-1F9B3")["hair"] == "white"
    assert _values("1F3C3-1F3FB-200D-2640-FE0F") == {"group": "people", "skin": "light", "hair": "none",
                                                     "gender": "female"}  # fmt: skip
    assert _values("1F3C3-200D-2642-FE0F")["gender"] == "male"
    assert _values("1F9DC-200D-2642-FE0F")["gender"] == "male"  # merman: the sign, not the name
    assert _values("1F46D")["gender"] == "female" and _values("1F46C")["gender"] == "male"
    assert _values("1F468-200D-1F469-200D-1F467")["gender"] == "none"  # family: man, woman, girl (mixed)
    assert _values("1F468-200D-1F466")["gender"] == "male"  # family: man, boy
    # two tones: the first person's
    assert _values("1F469-1F3FB-200D-1F91D-200D-1F469-1F3FF")["skin"] == "light"
    assert _values("1F461", "Objects")["gender"] == "none"  # woman's sandal is an object
    with pytest.raises(ValueError, match="unknown emoji group 'Component'"):
        codepoint_attributes("1F3FB", COMPONENT_GROUP)


def test_codepoint_rules_agree_with_the_unicode_names():
    """Over all of emoji-test.txt: names say 'woman' / 'man', '<tone> skin tone', '<hair> hair'."""
    table, _ = load_emoji_test()
    counts = {name: Counter() for name in ("skin", "hair", "gender")}
    tones = {"light": "light", "medium-light": "medium-light", "medium": "medium", "medium-dark": "medium-dark",
             "dark": "dark"}  # fmt: skip
    for key, info in table.items():
        if info.group == COMPONENT_GROUP:
            continue
        values = _values(key, info.group)
        for name in counts:
            counts[name][values[name]] += 1
        name = info.name.lower()
        first_tone = re.search(r"\b(light|medium-light|medium|medium-dark|dark) skin tone", name)
        assert values["skin"] == (tones[first_tone.group(1)] if first_tone else "none"), info.name
        hair = re.search(r"\b(red|curly|white) hair|\bbald\b", name)
        if hair:
            assert values["hair"] == (hair.group(1) or "bald"), info.name
        elif values["hair"] != "none":
            raise AssertionError(f"{info.name}: hair {values['hair']} without a hair word")
        if info.group != "People & Body":  # woman's sandal, men's room, flag: Isle of Man are no people
            sign = {"female sign": "female", "male sign": "male"}.get(name, "none")  # the signs themselves
            assert values["gender"] == sign, info.name
            continue
        female = re.search(r"\b(woman|women|girl|princess|mrs|mermaid)\b", name)
        male = re.search(r"\b(man|men|boy|prince|santa|merman)\b", name)
        if female and not male:
            assert values["gender"] == "female", info.name
        elif male and not female:
            assert values["gender"] == "male", info.name
        else:  # person, people, child, older person, couples and families of both
            assert values["gender"] == "none", info.name
    assert set(counts["skin"]) == set(ATTRIBUTE_VALUES["skin"])
    assert len({counts["skin"][tone] for tone in tones}) == 1  # every tone equally often (first tones too)
    assert set(counts["hair"]) == set(ATTRIBUTE_VALUES["hair"]) and set(counts["gender"]) == {"none", "female", "male"}


def _image(colours: dict[tuple[int, int, int], int], size: int = 100) -> np.ndarray:
    """A (1, size, 3) strip: ``count`` pixels of each colour, the rest white."""
    pixels = [c for c, n in colours.items() for _ in range(n)]
    pixels += [(255, 255, 255)] * (size - len(pixels))
    return np.array([pixels], dtype=np.uint8)


def test_dominant_color_rule():
    values = ATTRIBUTE_VALUES["color"]
    assert values[dominant_color(_image({(220, 30, 30): 40, (0, 0, 0): 20}))] == "red"
    assert values[dominant_color(_image({(240, 20, 120): 30}))] == "purple"  # hue 327: pink counts as purple
    assert values[dominant_color(_image({(250, 20, 40): 30}))] == "red"  # hue 354: red wraps around 360
    assert values[dominant_color(_image({(146, 211, 245): 10, (252, 234, 43): 25, (0, 0, 0): 30}))] == "yellow"
    # lines, greys and white are not colours: a grey object with a little blue is achromatic
    assert values[dominant_color(_image({(0, 0, 0): 30, (150, 150, 150): 50, (146, 211, 245): 10}))] == "achromatic"
    assert values[dominant_color(_image({(0, 0, 0): 30, (150, 150, 150): 40, (146, 211, 245): 30}))] == "blue"
    assert values[dominant_color(_image({}))] == "achromatic"  # nothing drawn
    # light skin (#FADCBC, saturation 0.25) is a colour: orange, as the darker tones
    assert values[dominant_color(_image({(250, 220, 188): 40, (0, 0, 0): 20}))] == "orange"
    # the background is not counted, whatever it is
    strip = _image({(40, 200, 60): 10, (30, 60, 200): 20})
    strip[strip.sum(-1) == 765] = (40, 200, 60)
    assert values[dominant_color(strip, background=(40, 200, 60))] == "blue"
    with pytest.raises(ValueError, match="RGB uint8"):
        dominant_color(np.zeros((4, 4), dtype=np.uint8))


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> tuple[Path, Path]:
    installed, _ = find_openmoji_svg_dir()
    svgs = tmp_path_factory.mktemp("openmoji_attr_svg")
    for name in [*HEARTS, *PEOPLE]:
        shutil.copy(installed / f"{name}.svg", svgs / f"{name}.svg")
    out = tmp_path_factory.mktemp("emoji_attr")
    prepare_emoji(out, ["openmoji"], RES, BG, source_paths={"openmoji": svgs}, progress=False)
    return out, svgs


def test_dataset_attributes_on_real_openmoji(dataset_root, tmp_path):
    out, _ = dataset_root
    ds = EmojiDataset(out, resolution=RES, split="all", prepare=False, attributes=True)
    assert ds.attribute_names == list(ATTRIBUTE_NAMES) == ["group", "skin", "hair", "gender", "color"]
    assert ds.attribute_values == {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}
    by_cp = {r["codepoints"]: i for i, r in enumerate(ds.records)}
    for codepoints, colour in HEARTS.items():
        assert ds.describe_attributes(by_cp[codepoints])["color"] == colour, codepoints
        assert ds.describe_attributes(by_cp[codepoints])["group"] == "smileys"
    assert ds.describe_attributes(by_cp["1F600"]) == {"group": "smileys", "skin": "none", "hair": "none",
                                                      "gender": "none", "color": "yellow"}  # fmt: skip
    woman = ds.describe_attributes(by_cp["1F469-1F3FD-200D-1F9B0"])
    assert woman["skin"] == "medium" and woman["hair"] == "red" and woman["gender"] == "female"
    item = ds[by_cp["1F9D1-1F3FF-200D-1F9B2"]]
    assert item["attributes"].dtype == torch.long and item["attributes"].shape == (5,)
    assert [ATTRIBUTE_VALUES[n][int(v)] for n, v in zip(ATTRIBUTE_NAMES, item["attributes"])][:4] == [
        "people", "dark", "bald", "none"]  # fmt: skip
    assert ds.attributes[:, 0].tolist() == ds.targets  # the group is the label
    # without attributes: the item and the fingerprint are what they were
    plain = EmojiDataset(out, resolution=RES, split="all", prepare=False)
    assert "attributes" not in plain[0] and plain.fingerprint() != ds.fingerprint()
    assert not hasattr(plain, "attribute_names")
    # the latent cache keeps them (the compositional classifiers read them from there)
    cache = LatentCache(tmp_path, ds, IdentityAutoencoder(space_to_depth=2))
    cache.build(progress=False)
    view = cache.dataset_view(random_flip=False)
    assert view.meta.has_attributes
    assert all(torch.equal(view[i]["attributes"], ds[i]["attributes"]) for i in range(len(ds)))
    # holdout rules and expressions of the LACE tools take these names and values
    held = holdout_mask(ds.attributes, ds.attribute_names, ds.attribute_values, [{"skin": "medium", "hair": "red"}])
    assert held.sum() == 1 and held[by_cp["1F469-1F3FD-200D-1F9B0"]]
    validate(parse("group=animals & color=blue | !(skin=dark & hair=red)"), ds.attribute_values)


def test_attribute_table_counts(dataset_root):
    out, _ = dataset_root
    ds = EmojiDataset(out, resolution=RES, split="all", prepare=False, attributes=True, val_fraction=0.5)
    _, held = ds.split_indices()
    mask = np.zeros(len(ds), dtype=bool)
    mask[held] = True
    table = attribute_table(ds.attributes, mask)
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    assert len(rows) == sum(len(v) for v in ATTRIBUTE_VALUES.values())
    for name in ATTRIBUTE_NAMES:
        counts = [int(r[2]) for r in rows if r[0].strip() == name]
        assert sum(counts) == len(ds)
        split = [tuple(int(v) for v in r[4].split("/")) for r in rows if r[0].strip() == name]
        assert sum(a for a, _ in split) == len(ds) - mask.sum() and sum(b for _, b in split) == mask.sum()
    assert "| color | achromatic | 2 |" in table
    with pytest.raises(ValueError, match=r"must be \(N, 5\)"):
        attribute_table(ds.attributes[:, :3])


def test_data_config_attributes(compose_cfg, dataset_root):
    from hydra.utils import instantiate

    out, _ = dataset_root
    cfg = compose_cfg("train", ["data=emoji", f"data.dataset.root={out}", f"data.dataset.resolution={RES}",
                                "data.dataset.split=all", "data.dataset.attributes=true",
                                "data.dataset.prepare=false"])  # fmt: skip
    dataset = instantiate(cfg.data.dataset)
    assert dataset.attributes.shape == (len(HEARTS) + len(PEOPLE), 5)
