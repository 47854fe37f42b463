"""Unit tests of the datasets: procedural shapes and folders of images."""

from __future__ import annotations

import os
import re
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_flow.data import ImageFolderDataset, ShapesDataset
from latent_flow.data import shapes as shapes_module
from latent_flow.data.shapes import (
    BORDER_PAD,
    HPOS_EDGES,
    HPOS_MARGIN,
    OBJECT_GAP,
    SIZE_RANGES,
)

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an (N, 2) array of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, pixels = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        out.append(np.array(pixels))
    return out


def hpos_bin(x: float) -> int:
    return int(x >= HPOS_EDGES[0]) + int(x >= HPOS_EDGES[1])


# ------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------


def test_shapes_item_layout_and_ranges():
    ds = ShapesDataset(num_samples=300, resolution=32, seed=0)
    assert len(ds) == 300
    assert ds.num_classes == len(ds.class_names) == 5
    assert ds.attribute_names == ["shape", "color", "size", "hpos", "count"]
    assert ds.semantic_classes == ["background", *ds.class_names]
    assert ds.attribute_values["shape"] == ds.class_names
    for i in range(0, 300, 3):
        item = ds[i]
        assert set(item) == {"image", "label", "index", "attributes", "semantic"}
        image, label, attrs, sem = item["image"], item["label"], item["attributes"], item["semantic"]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert label.shape == () and label.dtype == torch.long
        assert item["index"].dtype == torch.long and int(item["index"]) == i
        assert attrs.shape == (5,) and attrs.dtype == torch.long
        assert sem.shape == (32, 32) and sem.dtype == torch.long
        for name, value in zip(ds.attribute_names, attrs.tolist()):
            assert 0 <= value < len(ds.attribute_values[name]), (name, value)
        assert int(label) == int(attrs[0])
        classes = set(torch.unique(sem).tolist())
        assert classes == {0, int(label) + 1}, classes  # background plus the label's class only
        assert (sem > 0).sum() > 0


def test_shapes_deterministic_and_seeded():
    a = ShapesDataset(num_samples=50, seed=3)
    b = ShapesDataset(num_samples=50, seed=3)
    c = ShapesDataset(num_samples=50, seed=4)
    order = [7, 1, 42, 7]
    first = {i: a[i] for i in order}
    for i in reversed(order):  # access order does not matter
        item = b[i]
        for key in first[i]:
            assert torch.equal(item[key], first[i][key]), key
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(5))
    assert not torch.equal(a[0]["image"], a[1]["image"])
    # the dataset length does not change an item
    assert torch.equal(ShapesDataset(num_samples=1000, seed=3)[7]["image"], first[7]["image"])


def test_shapes_render_numpy_and_describe():
    ds = ShapesDataset(num_samples=10, resolution=32)
    image, attributes, semantic = ds.render(2)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert semantic.shape == (32, 32) and semantic.dtype == np.int64
    assert list(attributes) == ds.attribute_names
    item = ds[2]
    assert torch.allclose(item["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1)
    text = ds.describe(item["attributes"])
    for name, value in zip(ds.attribute_names, item["attributes"].tolist()):
        assert ds.attribute_values[name][value].rstrip("s") in text
    assert ds.describe(attributes) == text
    with pytest.raises(ValueError, match="out of range"):
        ds.describe([0, 0, 0, 9, 0])


def test_shapes_objects_distinct_from_background():
    """Object interiors are saturated colours; backgrounds are desaturated (never confusable)."""
    ds = ShapesDataset(num_samples=200, resolution=32, seed=1)
    pixel_centres = (np.arange(32) + 0.5) / 32
    for i in range(0, 200, 2):
        image, _, sem = ds.render(i)
        spec = ds.layout(i)
        chroma = (image.max(axis=2).astype(int) - image.min(axis=2)) / 255.0
        mask = sem > 0
        interior = mask.copy()  # pixels whose 8 neighbours are all in the mask
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= np.roll(mask, (dy, dx), axis=(0, 1))
        # background: pixels outside every object's bounding box grown by one pixel
        near = np.zeros_like(mask)
        reach = spec.size / 2 + 1 / 32
        for cx, cy in spec.centers:
            near |= (np.abs(pixel_centres[None, :] - cx) <= reach) & (np.abs(pixel_centres[:, None] - cy) <= reach)
        assert chroma[~near].max() < 0.2, i
        if interior.any():
            assert chroma[interior].min() > 0.5, i


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_count_and_hpos_match_mask(resolution):
    """Objects are separate blobs (count = 8-connected components) and hpos = bin of their mean x."""
    ds = ShapesDataset(num_samples=400, resolution=resolution, seed=2)
    n = 300 if resolution == 32 else 80
    counts_seen = set()
    for i in range(n):
        _, attributes, sem = ds.render(i)
        blobs = components(sem > 0)
        count = attributes["count"] + 1
        counts_seen.add(count)
        assert len(blobs) == count, (i, ds.describe(attributes), len(blobs))
        mean_x = np.mean([(blob[:, 1] + 0.5).mean() for blob in blobs]) / resolution
        assert hpos_bin(mean_x) == attributes["hpos"], (i, ds.describe(attributes), mean_x)
    assert counts_seen == {1, 2, 3}


def test_shapes_layout_geometry():
    """Objects inside the image, bounding boxes OBJECT_GAP apart, mean x away from the bin edges."""
    ds = ShapesDataset(num_samples=3000, seed=5)
    for i in range(0, 3000, 2):
        spec = ds.layout(i)
        check_layout(spec.centers, spec.size, spec.attributes["hpos"])
        lo, hi = SIZE_RANGES[spec.attributes["size"]]
        assert lo <= spec.size <= hi
        assert len(spec.centers) == spec.attributes["count"] + 1


def check_layout(centers: np.ndarray, size: float, hpos: int) -> None:
    assert centers.min() >= size / 2 + BORDER_PAD - 1e-6
    assert centers.max() <= 1 - size / 2 - BORDER_PAD + 1e-6
    for i in range(len(centers)):
        for j in range(i):
            assert np.abs(centers[i] - centers[j]).max() >= size + OBJECT_GAP - 1e-6
    mean_x = centers[:, 0].mean()
    assert hpos_bin(mean_x) == hpos
    assert min(abs(mean_x - edge) for edge in HPOS_EDGES) >= HPOS_MARGIN - 1e-6


@pytest.mark.parametrize("templates", [True, False])
def test_shapes_crowded_layouts_always_feasible(monkeypatch, templates):
    """Three large objects fit in every hpos bin, also with only the fixed fallback layout."""
    if not templates:
        monkeypatch.setattr(shapes_module, "_NUM_RANDOM_LAYOUTS", 0)
        monkeypatch.setattr(shapes_module, "_NUM_TEMPLATE_LAYOUTS", 0)
    rng = np.random.default_rng(0)
    for size in (SIZE_RANGES[2][1], SIZE_RANGES[1][1]):
        for count in (2, 3):
            for hpos in range(3):
                for _ in range(10):
                    centers = shapes_module._random_layout(count, size, hpos, rng)
                    check_layout(centers, size, hpos)


def test_shapes_exclude():
    exclude = [{"shape": "triangle", "color": "red"}, {"count": 3, "hpos": ["left", "right"]}]
    ds = ShapesDataset(num_samples=2000, seed=0, exclude=exclude)
    values = ds.attribute_values
    tri, red = values["shape"].index("triangle"), values["color"].index("red")
    combos = set()
    for i in range(2000):
        attrs = ds[i]["attributes"].tolist() if i < 200 else list(ds.layout(i).attributes.values())
        shape, color, _, hpos, count = attrs
        assert not (shape == tri and color == red), i
        assert not (count == 2 and hpos in (0, 2)), i
        combos.add((shape, color))
        combos.add(("count-hpos", count, hpos))
    # the other combinations still appear
    assert (tri, values["color"].index("blue")) in combos
    assert (values["shape"].index("circle"), red) in combos
    assert ("count-hpos", 2, 1) in combos and ("count-hpos", 1, 0) in combos
    # images never show an excluded combination: rendered images agree with their attributes
    _, attributes, sem = ds.render(5)
    assert set(np.unique(sem)) == {0, attributes["shape"] + 1}


@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
def test_shapes_any_resolution(resolution):
    ds = ShapesDataset(num_samples=20, resolution=resolution, seed=1)
    for i in range(4):
        item = ds[i]
        assert item["image"].shape == (3, resolution, resolution)
        assert item["semantic"].shape == (resolution, resolution)
        assert set(torch.unique(item["semantic"]).tolist()) == {0, int(item["label"]) + 1}
        assert item["image"].min() >= -1 and item["image"].max() <= 1


def test_shapes_small_objects_are_big_enough_at_32px():
    ds = ShapesDataset(num_samples=200, resolution=32, seed=0)
    small = ds.attribute_values["size"].index("small")
    for i in range(200):
        spec = ds.layout(i)
        if spec.attributes["size"] == small:
            assert spec.size * 32 >= 8.0 - 1e-6


def test_shapes_subsets_of_shapes_and_colors():
    ds = ShapesDataset(num_samples=100, shapes=["star", "circle"], colors=["cyan", "red", "green"], max_objects=1)
    assert ds.class_names == ["star", "circle"] and ds.num_classes == 2
    assert ds.semantic_classes == ["background", "star", "circle"]
    for i in range(30):
        item = ds[i]
        assert int(item["label"]) in (0, 1)
        assert int(item["attributes"][1]) in (0, 1, 2)
        assert int(item["attributes"][4]) == 0  # count 1


def test_shapes_accepts_omegaconf_containers():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"shapes": ["circle", "cross"], "exclude": [{"shape": "cross", "size": ["small"]}]})
    ds = ShapesDataset(num_samples=50, shapes=cfg.shapes, exclude=cfg.exclude)
    plain = ShapesDataset(num_samples=50, shapes=["circle", "cross"], exclude=[{"shape": "cross", "size": "small"}])
    assert ds.fingerprint() == plain.fingerprint()
    assert torch.equal(ds[3]["image"], plain[3]["image"])


def test_shapes_fingerprint():
    base = dict(num_samples=100, resolution=32, seed=0)
    fp = ShapesDataset(**base).fingerprint()
    assert isinstance(fp, str) and fp == ShapesDataset(**base).fingerprint()
    variants = [
        dict(num_samples=101),
        dict(resolution=64),
        dict(seed=1),
        dict(min_objects=2),
        dict(max_objects=2),
        dict(shapes=["circle", "square"]),
        dict(colors=["red", "blue"]),
        dict(exclude=[{"shape": "star"}]),
    ]
    prints = {fp}
    for change in variants:
        prints.add(ShapesDataset(**{**base, **change}).fingerprint())
    assert len(prints) == len(variants) + 1
    original = shapes_module.RENDER_VERSION
    try:
        shapes_module.RENDER_VERSION = original + 1
        assert ShapesDataset(**base).fingerprint() != fp
    finally:
        shapes_module.RENDER_VERSION = original


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(shapes=["circle", "hexagon"]), ValueError, r"hexagon.*valid shapes: circle, square"),
        (dict(colors=["red", "orange"]), ValueError, r"orange.*valid colors: red, green"),
        (dict(resolution=8), ValueError, "resolution must be >= 16"),
        (dict(min_objects=0), ValueError, r"min_objects must be in \[1, 3\]"),
        (dict(max_objects=4), ValueError, r"max_objects must be in \[1, 3\]"),
        (dict(min_objects=3, max_objects=2), ValueError, "min_objects"),
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(shapes=[]), ValueError, "must not be empty"),
        (dict(shapes=["circle", "circle"]), ValueError, "duplicate"),
        (dict(exclude=[{"texture": "dots"}]), ValueError, "unknown attribute 'texture'"),
        (dict(exclude=[{"color": "purple"}]), ValueError, "unknown value 'purple'"),
        (dict(shapes=["circle"], exclude=[{"shape": "circle"}]), ValueError, "removes every"),
        (dict(resolution=32.0), TypeError, "resolution must be an int"),
    ],
)
def test_shapes_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ShapesDataset(**kwargs)


def test_shapes_index_out_of_range():
    ds = ShapesDataset(num_samples=5)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds.render(-6)
    assert int(ds[-1]["index"]) == 4


# ------------------------------------------------------------------------------------------------
# image folder
# ------------------------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    """Two classes; RGB, grayscale, RGBA, palette, other sizes, and a corrupt .png."""
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir(parents=True)
    dogs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(cats / "rgb.png")
    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(cats / "gray.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 16:, 3] = 255  # left half fully transparent, right half opaque red
    Image.fromarray(rgba, mode="RGBA").save(cats / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(cats / "wide.jpg")  # 64 x 48
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(dogs / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("P").save(dogs / "palette.png")
    (dogs / "corrupt.png").write_bytes(b"this is not an image \x00\x01\x02" * 10)
    (dogs / "notes.txt").write_text("ignored: not an image extension")


def test_image_folder_classes_conversion_and_skipping(tmp_path):
    make_tree(tmp_path)
    with pytest.warns(UserWarning) as record:
        ds = ImageFolderDataset(tmp_path, resolution=32)
    messages = [str(w.message) for w in record]
    assert any(re.search(r"skipped 1 unreadable file\(s\).*corrupt\.png", m) for m in messages), messages
    assert any(re.search(r"ignored 1 file\(s\) whose extension.*dogs/notes\.txt \(\.txt x1\)", m) for m in messages)
    assert [p.name for p in ds.ignored_files] == ["notes.txt"]
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert len(ds) == 6
    assert [p.name for p in ds.skipped_files] == ["corrupt.png"]
    assert ds.num_resized == 2  # wide.jpg and palette.png
    labels = {path.name: label for path, label in ds.samples}
    assert labels == {"gray.png": 0, "rgb.png": 0, "rgba.png": 0, "wide.jpg": 0, "a.png": 1, "palette.png": 1}
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"image", "label", "index"}
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert int(item["label"]) == ds.samples[i][1] and int(item["index"]) == i
    by_name = {path.name: i for i, (path, _) in enumerate(ds.samples)}
    gray = ds[by_name["gray.png"]]["image"]
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    assert torch.allclose(gray, torch.full_like(gray, 77 / 127.5 - 1))
    rgba = ds[by_name["rgba.png"]]["image"]
    assert torch.allclose(rgba[:, :, :14], torch.ones(3, 32, 14))  # transparent -> white
    assert torch.allclose(rgba[:, :, 18:], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 32, 14))


def test_image_folder_single_class_and_no_crop(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((20, 30 + i, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    ds = ImageFolderDataset(tmp_path, resolution=16, center_crop=False)
    assert ds.num_classes == 1 and ds.class_names == [tmp_path.name]
    assert ds.num_resized == 3 and not ds.skipped_files
    assert all(int(ds[i]["label"]) == 0 for i in range(3))
    assert ds[2]["image"].shape == (3, 16, 16)
    with pytest.raises(IndexError):
        ds[3]


def test_image_folder_truncated_file_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "trunc.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header fine, pixel data truncated
    ds = ImageFolderDataset(tmp_path, resolution=32)
    with pytest.raises(RuntimeError, match="trunc.png"):
        ds[0]


def test_image_folder_missing_and_empty(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match=r"does_not_exist.*folder of images or of class sub-folders"):
        ImageFolderDataset(missing, resolution=32)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty.*\.png, \.jpg"):
        ImageFolderDataset(empty, resolution=32)
    only_corrupt = tmp_path / "corrupt"
    only_corrupt.mkdir()
    (only_corrupt / "x.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable images"):
            ImageFolderDataset(only_corrupt, resolution=32)


def test_image_folder_fingerprint(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 10 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    fp = ImageFolderDataset(tmp_path, resolution=32).fingerprint()
    assert fp == ImageFolderDataset(tmp_path, resolution=32).fingerprint()
    assert fp != ImageFolderDataset(tmp_path, resolution=16).fingerprint()
    assert fp != ImageFolderDataset(tmp_path, resolution=32, center_crop=False).fingerprint()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img1.png")
    stat = os.stat(tmp_path / "img1.png")
    os.utime(tmp_path / "img1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = ImageFolderDataset(tmp_path, resolution=32).fingerprint()
    assert changed != fp
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img2.png")
    assert ImageFolderDataset(tmp_path, resolution=32).fingerprint() != changed


def test_image_folder_reads_gif_and_tiff_and_reports_other_extensions(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.tif")
    Image.fromarray(pixels).save(tmp_path / "c.TIFF")
    Image.fromarray(pixels).convert("P").save(tmp_path / "d.gif")
    Image.fromarray(pixels).save(tmp_path / "e.tga")  # PIL reads it, but it is not a listed extension
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.txt").write_text("hidden files stay silent")
    with pytest.warns(UserWarning, match=r"ignored 2 file\(s\) whose extension is not one of .*e\.tga.*notes\.txt"):
        ds = ImageFolderDataset(tmp_path, resolution=32)
    assert sorted(p.name for p, _ in ds.samples) == ["a.png", "b.tif", "c.TIFF", "d.gif"]
    assert sorted(p.name for p in ds.ignored_files) == ["e.tga", "notes.txt"] and not ds.skipped_files
    by_name = {p.name: i for i, (p, _) in enumerate(ds.samples)}
    ref = ds[by_name["a.png"]]["image"]
    assert torch.equal(ds[by_name["b.tif"]]["image"], ref) and torch.equal(ds[by_name["c.TIFF"]]["image"], ref)
    assert ds[by_name["d.gif"]]["image"].shape == (3, 32, 32)
    # an explicit list is honoured (.tga read, the rest reported)
    with pytest.warns(UserWarning, match=r"ignored 4 file\(s\)"):
        only = ImageFolderDataset(tmp_path, resolution=32, extensions=[".png", "tga"])
    assert sorted(p.name for p, _ in only.samples) == ["a.png", "e.tga"]
    assert torch.equal(only[[p.name for p, _ in only.samples].index("e.tga")]["image"], ref)
    with warnings.catch_warnings():  # a folder of accepted images only: nothing to report
        warnings.simplefilter("error")
        (tmp_path / "clean").mkdir()
        Image.fromarray(pixels).save(tmp_path / "clean" / "x.tiff")
        assert len(ImageFolderDataset(tmp_path / "clean", resolution=32)) == 1


def test_image_folder_no_images_message_names_the_ignored_files(tmp_path):
    (tmp_path / "scan.heic").write_bytes(b"\x00" * 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"no images found.*1 file\(s\) with other extensions.*scan\.heic"):
            ImageFolderDataset(tmp_path, resolution=32)


def test_shapes_cache_renders_serves_the_same_items_rendering_each_once(monkeypatch) -> None:
    plain = ShapesDataset(num_samples=6, resolution=32, seed=3)
    cached = ShapesDataset(num_samples=6, resolution=32, seed=3, cache_renders=True)
    assert cached.fingerprint() == plain.fingerprint()  # same items: the cache key must not change
    calls = []
    real = ShapesDataset._render
    monkeypatch.setattr(ShapesDataset, "_render", lambda self, i: calls.append(i) or real(self, i))
    for _ in range(2):
        for i in (0, 5, -1, 2):
            a, b = plain[i], cached[i]
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    # the plain dataset rendered 8 times; the cached one once per distinct item (0, 5, 2)
    assert len(calls) == 8 + 3
    image, _, _ = cached.render(0)
    image[:] = 0  # a caller writing into the returned array does not corrupt the cache
    assert torch.equal(cached[0]["image"], plain[0]["image"])


def test_shapes_cache_renders_refuses_more_than_its_memory_limit() -> None:
    small = ShapesDataset(num_samples=20000, resolution=32, cache_renders=True)
    assert small.render_cache_bytes() == 20000 * (4 * 32 * 32 + 8 * 5 + 1)
    with pytest.raises(ValueError, match=r"GiB of renders .*data\.dataset\.cache_renders=false"):
        ShapesDataset(num_samples=2_000_000, resolution=64, cache_renders=True)
    ShapesDataset(num_samples=2_000_000, resolution=64)  # without the cache: nothing held, no limit
