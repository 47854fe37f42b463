"""Paper datasets (LSUN / keyed LMDB, ImageNet, CelebAMask-HQ) on tiny fixtures built in tmp_path."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

lmdb = pytest.importorskip("lmdb")

from latent_flow.data import lmdb_dataset  # noqa: E402
from latent_flow.data.celebamask import PART_NAMES, SEMANTIC_CLASSES, CelebAMaskHQDataset  # noqa: E402
from latent_flow.data.image_folder import resize_center_crop  # noqa: E402
from latent_flow.data.imagenet import ImageNetDataset, adm_center_crop  # noqa: E402
from latent_flow.data.lmdb_dataset import KEY_CACHE_NAME, LMDBImageDataset  # noqa: E402

RES = 16


# ---------------------------------------------------------------------------- fixture builders
def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def solid(size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, color)


def stripes(size: tuple[int, int]) -> Image.Image:
    """Left third red, middle third green, right third blue (width > height)."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3, 0] = 255
    a[:, w // 3 : 2 * w // 3, 1] = 255
    a[:, 2 * w // 3 :, 2] = 255
    return Image.fromarray(a)


def write_lmdb(path: Path, items: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()


LSUN_ITEMS = {
    b"0a1b2c": ("JPEG", solid((40, 30), (200, 30, 30))),
    b"1f00aa": ("WEBP", stripes((48, 16))),
    b"2e9d01": ("PNG", solid((33, 33), (10, 220, 10))),
    b"3c3c3c": ("WEBP", solid((17, 50), (20, 20, 240))),
}
CORRUPT_KEY = b"9fffff"


@pytest.fixture
def lsun_db(tmp_path):
    path = tmp_path / "church_outdoor_train_lmdb"
    items = {k: encode(img, fmt) for k, (fmt, img) in LSUN_ITEMS.items()}
    items[CORRUPT_KEY] = b"\xff\xd8 this is not a jpeg"
    write_lmdb(path, items)
    return path


@pytest.fixture
def keyed_db(tmp_path):
    path = tmp_path / "ffhq_lmdb"
    items = {f"{i:08d}".encode(): encode(solid((24 + 8 * i, 24), (40 * i, 100, 200)), "JPEG") for i in range(3)}
    items[b"length"] = b"3"
    write_lmdb(path, items)
    return path


def imagenet_tree(root: Path) -> Path:
    sizes = {"n01440764": [(64, 48), (20, 30)], "n01443537": [(50, 50)]}
    for _k, (synset, shapes) in enumerate(sorted(sizes.items())):
        folder = root / "train" / synset
        folder.mkdir(parents=True)
        for j, size in enumerate(shapes):
            stripes(size).save(folder / f"{synset}_{j}.JPEG", quality=95)
    return root


def celebamask_tree(root: Path) -> Path:
    """3 images (32 px), part masks at 16 px in 4x4 blocks; image 2 has no masks."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for i in range(3):
        solid((32, 32), (50 * i, 120, 80)).save(root / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    anno.mkdir(parents=True)

    def part(i: int, name: str, rows: slice, cols: slice) -> None:
        m = np.zeros((16, 16), np.uint8)
        m[rows, cols] = 255
        Image.fromarray(m).save(anno / f"{i:05d}_{name}.png")

    part(0, "skin", slice(0, 16), slice(0, 16))  # everything skin (1) ...
    part(0, "hair", slice(0, 8), slice(0, 16))  # ... top half hair (13) overwrites skin
    part(0, "nose", slice(0, 16), slice(0, 4))  # nose (2) comes before hair: hair wins on the overlap
    part(0, "cloth", slice(12, 16), slice(8, 16))  # cloth (18) last: wins over skin
    part(1, "l_eye", slice(4, 8), slice(4, 8))
    return root


def expected_semantic_0() -> np.ndarray:
    m = np.ones((16, 16), np.int64)
    m[:, 0:4] = 2
    m[0:8, :] = 13
    m[12:16, 8:16] = 18
    return m


def check_item(item, index: int, label: int = 0, res: int = RES) -> None:
    assert item["image"].shape == (3, res, res) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0
    assert item["label"].dtype == torch.long and item["label"].shape == () and int(item["label"]) == label
    assert item["index"].dtype == torch.long and int(item["index"]) == index


# ---------------------------------------------------------------------------- LSUN LMDB
def test_lsun_items_decode_resize_and_crop(lsun_db):
    ds = LMDBImageDataset(lsun_db, RES)
    assert len(ds) == 5 and ds.num_classes == 1 and ds.class_names == ["church_outdoor_train"]
    for i in range(4):
        check_item(ds[i], i)
    red = ds[0]["image"].mean(dim=(1, 2))  # JPEG 40x30 solid red
    assert red[0] > 0.5 and red[1] < -0.5 and red[2] < -0.5
    # WebP stripes 48x16: shorter side already 16, the centre crop is the green third
    mid = ds[1]["image"]
    assert mid[1].mean() > 0.8 and mid[0].mean() < -0.8 and mid[2].mean() < -0.8
    assert ds[-2]["index"] == 3
    with pytest.raises(IndexError):
        ds[5]


def test_lsun_corrupt_entry_names_key(lsun_db):
    ds = LMDBImageDataset(lsun_db, RES)
    with pytest.raises(RuntimeError, match="9fffff"):
        ds[4]


def test_lsun_key_cache_written_and_reused(lsun_db):
    ds = LMDBImageDataset(lsun_db, RES)
    cache = lsun_db / KEY_CACHE_NAME
    assert ds.key_cache_file == cache and cache.exists()
    header, *keys = cache.read_text().splitlines()
    assert [bytes.fromhex(k) for k in keys] == sorted(list(LSUN_ITEMS) + [CORRUPT_KEY])
    # a valid cache is used instead of rescanning: reversed order shows through
    cache.write_text("\n".join([header, *reversed(keys)]) + "\n")
    again = LMDBImageDataset(lsun_db, RES)
    with pytest.raises(RuntimeError, match="9fffff"):
        again[0]
    again.close()  # py-lmdb: a database open for reading in this process cannot be opened for writing
    # a stale cache (database changed) is rebuilt
    write_lmdb(lsun_db, {b"4aaaaa": encode(solid((20, 20), (1, 2, 3)), "PNG")})
    fresh = LMDBImageDataset(lsun_db, RES)
    assert len(fresh) == 6 and fresh._keys == sorted(fresh._keys)


def test_lsun_key_cache_fallback_when_folder_is_file(tmp_path):
    path = tmp_path / "single.mdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"k1", encode(solid((20, 20), (9, 9, 9)), "PNG"))
    env.close()
    ds = LMDBImageDataset(path, 8, cache_dir=tmp_path / "cache")
    assert len(ds) == 1 and ds.key_cache_file is not None
    check_item(ds[0], 0, res=8)


def test_lsun_fingerprint_stable_and_changes(lsun_db):
    a, b = LMDBImageDataset(lsun_db, RES), LMDBImageDataset(lsun_db, RES)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 40
    assert LMDBImageDataset(lsun_db, RES * 2).fingerprint() != a.fingerprint()
    assert LMDBImageDataset(lsun_db, RES, center_crop=False).fingerprint() != a.fingerprint()
    write_lmdb(lsun_db, {b"5bbbbb": encode(solid((20, 20), (1, 2, 3)), "PNG")})
    assert LMDBImageDataset(lsun_db, RES).fingerprint() != a.fingerprint()


def test_lsun_missing_path_and_not_lmdb(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere_lmdb") as info:
        LMDBImageDataset(tmp_path / "nowhere_lmdb", RES)
    assert "download.py" in str(info.value) and "docs/datasets.md" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data.mdb"):
        LMDBImageDataset(tmp_path / "empty", RES)
    with pytest.raises(ValueError, match="layout"):
        LMDBImageDataset(tmp_path, RES, layout="zip")


def test_lmdb_lazy_open_shared_handle_pickle_and_workers(lsun_db):
    key = str(lsun_db.resolve())
    ds = LMDBImageDataset(lsun_db, RES)
    assert key not in lmdb_dataset._ENVS  # nothing held open after construction
    ds[0]
    pid, env = lmdb_dataset._ENVS[key]
    assert pid == os.getpid()
    other = LMDBImageDataset(lsun_db, RES)  # a second dataset on the same database shares the handle
    torch.testing.assert_close(other[1]["image"], ds[1]["image"])
    assert lmdb_dataset._ENVS[key][1] is env
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[2]["image"], ds[2]["image"])
    # forked workers after the main process has read: the inherited handle is replaced
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, [0, 1, 2, 3]), batch_size=2, num_workers=2, multiprocessing_context="fork"
    )
    batches = list(loader)
    assert batches[1]["image"].shape == (2, 3, RES, RES)
    torch.testing.assert_close(batches[0]["image"][1], ds[1]["image"])
    lmdb_dataset._ENVS[key] = (-1, env)  # as if inherited: closed and reopened here
    ds[0]
    assert lmdb_dataset._ENVS[key][0] == os.getpid()
    ds.close()
    assert key not in lmdb_dataset._ENVS


# ---------------------------------------------------------------------------- keyed LMDB
def test_keyed_lmdb_with_length_key(keyed_db):
    ds = LMDBImageDataset(keyed_db, RES, layout="keyed", key_format="{index:08d}")
    assert len(ds) == 3  # from the "length" key, not the 4 entries
    for i in range(3):
        check_item(ds[i], i)
    assert ds[2]["image"][0].mean() > ds[0]["image"][0].mean()  # red channel grows with i
    with pytest.raises(KeyError, match="key_format"):
        LMDBImageDataset(keyed_db, RES, layout="keyed")  # default "{index}" finds no key "0"
    with pytest.raises(ValueError, match="layout='keyed'"):
        LMDBImageDataset(keyed_db, RES, key_format="{index}")


def test_keyed_lmdb_default_format_and_raw_rgb(tmp_path):
    path = tmp_path / "nvae_lmdb"
    raw = {str(i).encode(): np.full((20, 20, 3), 30 * i, np.uint8).tobytes() for i in range(2)}
    raw[b"2"] = b"\x00" * 7  # not a square RGB image
    write_lmdb(path, raw)
    ds = LMDBImageDataset(path, 10, layout="keyed", raw_rgb=True)
    assert len(ds) == 3  # no length key: the entry count
    check_item(ds[1], 1, res=10)
    assert torch.allclose(ds[1]["image"], torch.full((3, 10, 10), 30 / 127.5 - 1), atol=1e-6)
    with pytest.raises(RuntimeError, match="'2'"):
        ds[2]
    encoded = tmp_path / "enc_lmdb"
    write_lmdb(
        encoded, {b"0": encode(solid((30, 30), (0, 0, 0)), "PNG"), b"1": encode(solid((30, 30), (255,) * 3), "PNG")}
    )
    enc = LMDBImageDataset(encoded, RES, layout="keyed")
    assert float(enc[1]["image"].min()) == 1.0 and float(enc[0]["image"].max()) == -1.0


def test_resize_center_crop_matches_image_folder(tmp_path):
    from latent_flow.data import ImageFolderDataset

    img = stripes((45, 20))
    img.save(tmp_path / "a.png")
    folder = ImageFolderDataset(tmp_path, 12)
    ours = np.asarray(resize_center_crop(img, 12))
    theirs = ((folder[0]["image"].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------------------- ImageNet
def reference_center_crop_arr(pil_image, image_size):
    """guided-diffusion image_datasets.center_crop_arr, verbatim logic."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize("size", [(64, 48), (20, 30), (100, 33), (16, 16)])
def test_adm_center_crop_matches_reference(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = adm_center_crop(img, RES)
    assert out.size == (RES, RES)
    np.testing.assert_array_equal(np.asarray(out), reference_center_crop_arr(img, RES))


def test_imagenet_labels_shapes_and_crop(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    ds = ImageNetDataset(root, resolution=RES)
    assert ds.class_names == ["n01440764", "n01443537"] and ds.num_classes == 2 and len(ds) == 3
    assert [int(ds[i]["label"]) for i in range(3)] == [0, 0, 1]
    for i in range(3):
        check_item(ds[i], i, label=ds.targets[i])
    path = ds.samples[0][0]
    with Image.open(path) as im:
        expected = reference_center_crop_arr(im.convert("RGB"), RES)
    got = ((ds[0]["image"].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    again = ImageNetDataset(root, resolution=RES)
    assert again.fingerprint() == ds.fingerprint()
    assert ImageNetDataset(root, resolution=8).fingerprint() != ds.fingerprint()
    stripes((30, 30)).save(root / "train" / "n01443537" / "extra.JPEG")
    assert ImageNetDataset(root, resolution=RES).fingerprint() != ds.fingerprint()
    with pytest.raises(FileNotFoundError, match="val"):
        ImageNetDataset(root, split="val")
    with pytest.raises(ValueError, match="split"):
        ImageNetDataset(root, split="test")


def test_imagenet_broken_file_named(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    bad = root / "train" / "n01443537" / "zz_broken.JPEG"
    bad.write_bytes(b"garbage")
    ds = ImageNetDataset(root, resolution=RES)
    index = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(RuntimeError, match="zz_broken.JPEG"):
        ds[index]


# ---------------------------------------------------------------------------- CelebAMask-HQ
def test_celebamask_official_class_order():
    assert len(SEMANTIC_CLASSES) == 19 and SEMANTIC_CLASSES[0] == "background"
    assert PART_NAMES[:3] == ("skin", "nose", "eye_g") and PART_NAMES[12] == "hair" and PART_NAMES[-1] == "cloth"


def test_celebamask_part_masks_combined_in_official_order(tmp_path):
    root = celebamask_tree(tmp_path / "CelebAMask-HQ")
    ds = CelebAMaskHQDataset(root, resolution=8)
    assert len(ds) == 3 and ds.num_classes == 1 and ds.num_semantic_classes == 19
    for i in range(3):
        item = ds[i]
        check_item(item, i, res=8)
        assert item["semantic"].shape == (8, 8) and item["semantic"].dtype == torch.long
    full = ds.load_semantic_full(0, (32, 32))
    np.testing.assert_array_equal(full, expected_semantic_0())
    # nearest-neighbour 16 -> 8 of 4x4 blocks = every second pixel
    np.testing.assert_array_equal(ds[0]["semantic"].numpy(), expected_semantic_0()[::2, ::2])
    sem1 = ds[1]["semantic"].numpy()
    assert set(np.unique(sem1)) == {0, 4} and (sem1 == 4).sum() == 4
    assert int(ds[2]["semantic"].abs().sum()) == 0  # no annotation -> background
    # resolution larger than the masks: upsampled, still exact classes
    big = CelebAMaskHQDataset(root, resolution=32)[0]["semantic"].numpy()
    np.testing.assert_array_equal(big, np.kron(expected_semantic_0(), np.ones((2, 2), np.int64)))


def test_celebamask_fingerprint(tmp_path):
    root = celebamask_tree(tmp_path / "CelebAMask-HQ")
    a = CelebAMaskHQDataset(root, resolution=8)
    assert a.fingerprint() == CelebAMaskHQDataset(root, resolution=8).fingerprint()
    assert CelebAMaskHQDataset(root, resolution=16).fingerprint() != a.fingerprint()
    m = np.zeros((16, 16), np.uint8)
    m[0:4, 0:4] = 255
    Image.fromarray(m).save(root / "CelebAMask-HQ-mask-anno" / "0" / "00002_hat.png")
    b = CelebAMaskHQDataset(root, resolution=8)
    assert b.fingerprint() != a.fingerprint() and int((b[2]["semantic"] == 14).sum()) == 4


def test_celebamask_precombined_masks(tmp_path):
    root = celebamask_tree(tmp_path / "CelebAMask-HQ")
    masks = root / "CelebAMaskHQ-mask"
    masks.mkdir()
    for i in range(3):
        m = np.full((16, 16), i * 9, np.uint8)  # 0, 9, 18
        Image.fromarray(m).save(masks / f"{i}.png")
    ds = CelebAMaskHQDataset(root, resolution=8, mask_dir="CelebAMaskHQ-mask")
    assert [int(ds[i]["semantic"][0, 0]) for i in range(3)] == [0, 9, 18]
    assert ds.fingerprint() != CelebAMaskHQDataset(root, resolution=8).fingerprint()
    bad = np.zeros((16, 16), np.uint8)
    bad[0, 0], bad[1, 1] = 25, 200
    Image.fromarray(bad).save(masks / "1.png")
    ds = CelebAMaskHQDataset(root, resolution=8, mask_dir=masks)
    with pytest.raises(ValueError, match=r"1\.png.*\[25, 200\]"):
        ds[1]
    (masks / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="2.png"):
        CelebAMaskHQDataset(root, resolution=8, mask_dir=masks)


def test_celebamask_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="switchablenorms"):
        CelebAMaskHQDataset(tmp_path / "nope")
    root = celebamask_tree(tmp_path / "CelebAMask-HQ")
    with pytest.raises(FileNotFoundError, match="mask_dir"):
        CelebAMaskHQDataset(root, anno_dir="missing")


# ---------------------------------------------------------------------------- Hydra configs
def instantiate_data(compose_cfg, overrides):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", overrides)
    assert cfg.data.num_workers == 8 and cfg.data.resolution == 256
    return cfg, instantiate(cfg.data.dataset)


def test_configs_lsun(compose_cfg, lsun_db):
    for name in ("lsun_church", "lsun_bedroom"):
        cfg, ds = instantiate_data(compose_cfg, [f"data={name}", f"data.dataset.path={lsun_db}"])
        assert isinstance(ds, LMDBImageDataset) and ds.layout == "lsun" and len(ds) == 5 and cfg.data.flip
    cfg = compose_cfg("train", ["data=lsun_church"])
    assert cfg.data.dataset.path.endswith("lsun/church_outdoor_train_lmdb")


def test_configs_faces_folder_and_lmdb_override(compose_cfg, tmp_path, keyed_db):
    folder = tmp_path / "faces"
    folder.mkdir()
    solid((40, 40), (1, 2, 3)).save(folder / "0.png")
    for name in ("celebahq256", "ffhq256"):
        cfg, ds = instantiate_data(compose_cfg, [f"data={name}", f"data.dataset.root={folder}"])
        assert len(ds) == 1 and ds[0]["image"].shape == (3, 256, 256) and cfg.data.flip
        _, ds = instantiate_data(
            compose_cfg,
            [
                f"data={name}",
                "data.dataset._target_=latent_flow.data.lmdb_dataset.LMDBImageDataset",
                "~data.dataset.root",
                f"+data.dataset.path={keyed_db}",
                "+data.dataset.layout=keyed",
                '+data.dataset.key_format="{index:08d}"',
            ],
        )
        assert isinstance(ds, LMDBImageDataset) and len(ds) == 3


def test_config_imagenet(compose_cfg, tmp_path):
    root = imagenet_tree(tmp_path / "imagenet")
    cfg, ds = instantiate_data(compose_cfg, ["data=imagenet256", f"data.dataset.root={root}"])
    assert isinstance(ds, ImageNetDataset) and ds.num_classes == 2 and cfg.data.flip
    assert ds[2]["image"].shape == (3, 256, 256)


def test_config_celebamask(compose_cfg, tmp_path):
    root = celebamask_tree(tmp_path / "CelebAMask-HQ")
    cfg, ds = instantiate_data(compose_cfg, ["data=celebamask256", f"data.dataset.root={root}"])
    assert isinstance(ds, CelebAMaskHQDataset) and len(ds) == 3
    assert ds[0]["semantic"].shape == (256, 256)
