"""Inpainting masks: hole-ratio ranges, determinism, files (1 = known, 0 = hole)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from latent_flow.data.masks import MaskGenerator, check_mask, hole_ratio, load_mask

#: sha1 of the packed masks (index 0-19, variants 0-1) of MaskGenerator(32) before the mask families existed
ORIGINAL_MASKS_SHA1 = "8ff84b8cb6b12e455186141e3e9ae5fa2cfa8083"


@pytest.mark.parametrize("resolution, lo, hi", [(32, 0.1, 0.5), (32, 0.3, 0.35), (16, 0.05, 0.2), (64, 0.4, 0.7)])
def test_hole_ratio_is_inside_the_configured_range(resolution, lo, hi):
    gen = MaskGenerator(resolution, hole_min=lo, hole_max=hi)
    ratios = np.array([hole_ratio(gen(i, v)) for i in range(150) for v in range(2)])
    assert ratios.min() >= lo - 1e-9 and ratios.max() <= hi + 1e-9
    # the range is used, not a single value
    assert ratios.std() > 0 if hi - lo > 0.1 else True
    masks = gen.batch(range(5))
    assert masks.dtype == bool and masks.shape == (5, resolution, resolution)


def test_masks_are_deterministic_per_index_and_variant_and_mix_strokes_and_boxes():
    gen = MaskGenerator(32, 0.1, 0.5, seed=3)
    again = MaskGenerator(32, 0.1, 0.5, seed=3)
    assert np.array_equal(gen(7, 1), again(7, 1))
    assert np.array_equal(gen(7, 1), gen.batch([7], variant=1)[0])  # independent of call order
    assert not np.array_equal(gen(7, 0), gen(7, 1))
    assert not np.array_equal(gen(7, 0), gen(8, 0))
    assert not np.array_equal(gen(7, 0), MaskGenerator(32, 0.1, 0.5, seed=4)(7, 0))
    # boxes give axis-aligned rectangles: a hole made of boxes only is the union of its row/col runs
    boxes = MaskGenerator(32, 0.1, 0.5, box_fraction=1.0)
    strokes = MaskGenerator(32, 0.1, 0.5, box_fraction=0.0)

    def is_box_union(known):
        hole = ~known
        # every hole pixel belongs to a rectangle: checking that the 2x2 "L" patterns of strokes are rare
        patterns = hole[:-1, :-1] & hole[1:, 1:] & ~hole[:-1, 1:] & ~hole[1:, :-1]
        return not patterns.any()

    assert all(is_box_union(boxes(i)) for i in range(20))
    assert not all(is_box_union(strokes(i)) for i in range(20))


def test_generator_rejects_bad_ranges():
    with pytest.raises(ValueError, match="hole_min <= hole_max"):
        MaskGenerator(32, 0.6, 0.5)
    with pytest.raises(ValueError, match="hole_min <= hole_max"):
        MaskGenerator(32, 0.0, 0.5)
    with pytest.raises(ValueError, match="widen the range"):
        MaskGenerator(4, 0.52, 0.55)


def _save(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_mask_files_white_is_known_and_invert(tmp_path):
    known = np.zeros((16, 16), dtype=np.uint8)
    known[:, :10] = 255
    path = _save(tmp_path / "m.png", known)
    mask = load_mask(path, (16, 16))
    assert mask.dtype == bool and mask[:, :10].all() and not mask[:, 10:].any()
    assert np.array_equal(load_mask(path, (16, 16), invert=True), ~mask)
    assert hole_ratio(mask) == pytest.approx(6 / 16)


def test_mask_file_errors_are_clear(tmp_path):
    half = np.zeros((16, 16), dtype=np.uint8)
    half[:8] = 255
    with pytest.raises(ValueError, match=r"is 16x16 \(WxH\) but its image is 32x32"):
        load_mask(_save(tmp_path / "small.png", half), (32, 32))
    with pytest.raises(ValueError, match="all hole"):
        load_mask(_save(tmp_path / "black.png", np.zeros((16, 16))), (16, 16))
    with pytest.raises(ValueError, match="no hole"):
        load_mask(_save(tmp_path / "white.png", np.full((16, 16), 255)), (16, 16))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mask(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="no hole"):
        check_mask(np.ones((4, 4)))


# ------------------------------------------------------------------------------------------ mask families
def _part_map(res: int = 32) -> np.ndarray:
    """A hand-made class map: background 0, a colour disc 1, a skin square 2, a 1 px outline 5 around the disc."""
    yy, xx = np.mgrid[:res, :res]
    sem = np.zeros((res, res), dtype=np.int64)
    r = np.hypot(yy - res / 2 + 0.5, xx - res / 2 + 0.5)
    sem[r < res / 3] = 1
    sem[(r >= res / 3) & (r < res / 3 + 1)] = 5
    sem[2:8, 2:8] = 2
    return sem


def test_fixed_families_have_their_shapes_and_coverage():
    res = 32
    gen = MaskGenerator(res, families=["left"])
    for name, hole in (
        ("left", (slice(None), slice(0, 16))),
        ("right", (slice(None), slice(16, 32))),
        ("top", (slice(0, 16), slice(None))),
        ("bottom", (slice(16, 32), slice(None))),
        ("centre", (slice(8, 24), slice(8, 24))),
    ):
        mask = gen.only(name)(3, 1)
        expected = np.ones((res, res), dtype=bool)
        expected[hole] = False
        assert mask.dtype == bool and mask.shape == (res, res) and np.array_equal(mask, expected), name
    assert hole_ratio(gen.only("left")(0)) == 0.5 and hole_ratio(gen.only("centre")(0)) == 0.25
    assert hole_ratio(MaskGenerator(32, families=["centre"], centre_size=0.75)(0)) == 24 * 24 / 32**2
    # odd sides: the hole is res // 2 columns / rows
    assert (~MaskGenerator(33, families=["right"])(0)).sum() == 33 * 16
    # half: each of the four halves, chosen by (seed, index, variant)
    halves = MaskGenerator(res, families=["half"])
    seen = {tuple(halves(i, v)[:, 0].tolist() + halves(i, v)[0].tolist()) for i in range(40) for v in range(2)}
    assert len(seen) == 4 and all(hole_ratio(halves(i)) == 0.5 for i in range(10))


def test_strokes_and_boxes_families_keep_the_hole_ratio_range():
    for name in ("strokes", "boxes"):
        gen = MaskGenerator(32, 0.2, 0.4, families=[name])
        ratios = [hole_ratio(gen(i, v)) for i in range(60) for v in range(2)]
        assert min(ratios) >= 0.2 and max(ratios) <= 0.4


def test_part_family_masks_one_dilated_class_of_the_map():
    sem = _part_map()
    gen = MaskGenerator(32, families=["part"], part_dilation=0)
    holes = {(~gen(i, 0, sem)).tobytes() for i in range(40)}
    expected = {(sem == c).tobytes() for c in (1, 2, 5)}  # every non-background class, nothing else
    assert holes == expected
    dilated = MaskGenerator(32, families=["part"], part_dilation=1)
    for i in range(20):
        hole = ~dilated(i, 0, sem)
        cls = [c for c in (1, 2, 5) if hole[sem == c].all()]
        assert cls, "the hole covers a whole class"
        region = sem == cls[0]
        # the 3x3 dilation of the class: the class plus its 8-neighbours, nothing further
        grown = np.zeros_like(region)
        padded = np.pad(region, 1)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy : dy + 32, dx : dx + 32]
        if np.array_equal(hole, grown):
            break
    else:
        raise AssertionError("no dilated class hole")
    # cells: the hole grown to whole 8x8 cells (latent cells of a factor-8 autoencoder)
    cells = MaskGenerator(32, families=["part"], part_dilation=0, part_cells=8, part_max=0.99)
    for i in range(10):
        blocks = (~cells(i, 0, sem)).reshape(4, 8, 4, 8)
        assert np.all(blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3)))
    # only classes whose hole ratio is in [part_min, part_max]; a blank map falls back to the centre square
    big_only = MaskGenerator(32, families=["part"], part_dilation=0, part_min=0.2)
    assert all(np.array_equal(~big_only(i, 0, sem), sem == 1) for i in range(10))
    blank = np.zeros((32, 32), dtype=np.int64)
    assert np.array_equal(gen(0, 0, blank), gen.only("centre")(0))


def test_family_mixture_is_deterministic_and_uses_every_family():
    sem = _part_map()
    families = {"strokes": 1, "boxes": 1, "half": 1, "centre": 1, "part": 1}
    gen = MaskGenerator(32, families=families, seed=3)
    again = MaskGenerator(32, families=dict(reversed(list(families.items()))), seed=3)  # order does not matter
    masks = [gen(i, v, sem) for i in range(50) for v in range(2)]
    keys = [(i, v) for i in range(50) for v in range(2)]
    assert all(np.array_equal(m, again(i, v, sem)) for (i, v), m in zip(keys, masks))
    assert not np.array_equal(gen(5, 0, sem), MaskGenerator(32, families=families, seed=4)(5, 0, sem))
    assert np.array_equal(gen.batch([4, 9], 1, np.stack([sem, sem]))[1], gen(9, 1, sem))
    part_holes = {(sem == c).tobytes() for c in (1, 2, 5)}
    dilated_parts = {(~MaskGenerator(32, families=["part"])(i, 0, sem)).tobytes() for i in range(30)}
    assert any(np.array_equal(m, gen.only("centre")(0)) for m in masks)  # centre
    assert any(hole_ratio(m) == 0.5 and (m.all(0).any() or m.all(1).any()) for m in masks)  # a half
    assert any((~m).tobytes() in dilated_parts for m in masks)  # a part
    assert part_holes and len(dilated_parts) == 3
    for m in masks:
        check_mask(m)
    # with weight 0 a family is never drawn
    no_centre = MaskGenerator(32, families={**families, "centre": 0}, seed=3)
    assert not any(np.array_equal(no_centre(i, 0, sem), gen.only("centre")(0)) for i in range(60))


def test_families_without_a_map_leave_out_part_and_bad_names_fail_clearly():
    gen = MaskGenerator(32, families=["centre", "part"])
    assert gen.needs_maps and not MaskGenerator(32, families=["centre"]).needs_maps
    assert not MaskGenerator(32).needs_maps
    assert all(np.array_equal(gen(i), gen.only("centre")(0)) for i in range(10))  # no map: part left out
    with pytest.raises(ValueError, match="need the image's class map"):
        MaskGenerator(32, families=["part"])(0)
    with pytest.raises(ValueError, match=r"class map of a 'part' mask must be \(32, 32\)"):
        gen(0, 0, np.zeros((16, 16), dtype=np.int64))
    with pytest.raises(ValueError, match="unknown mask family 'center' \\(did you mean 'centre'\\?\\); valid: strokes"):
        MaskGenerator(32, families=["center"])
    with pytest.raises(ValueError, match="unknown mask family 'blob'"):
        MaskGenerator(32).only("blob")
    with pytest.raises(ValueError, match="no family with a positive weight"):
        MaskGenerator(32, families={"half": 0})
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        MaskGenerator(32, families={"half": -1})
    with pytest.raises(ValueError, match="centre_size must be in"):
        MaskGenerator(32, families=["centre"], centre_size=1.0)


def test_original_generator_is_unchanged_by_the_families():
    """families=None keeps the settings, the fingerprint and the masks of the original generator."""
    gen = MaskGenerator(32)
    assert gen.config() == {"resolution": 32, "hole_min": 0.1, "hole_max": 0.5, "box_fraction": 0.5, "seed": 0,
                            "max_tries": 20}  # fmt: skip
    assert gen.fingerprint() == "39c4ef9658ed7ba6"
    digest = hashlib.sha1(b"".join(np.packbits(gen(i, v)).tobytes() for i in range(20) for v in range(2))).hexdigest()
    assert digest == ORIGINAL_MASKS_SHA1
