"""Inpainting masks: hole-ratio ranges, determinism, files (1 = known, 0 = hole)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from latent_flow.data.masks import MaskGenerator, check_mask, hole_ratio, load_mask


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
