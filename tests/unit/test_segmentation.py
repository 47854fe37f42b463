"""mIoU in closed form on hand-made maps (latent_flow.evaluation.segmentation) and the part segmenter's
training, scoring and cache (latent_flow.evaluation.segmenter) on a tiny synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_flow.evaluation.segmentation import confusion_matrix, miou, miou_from_confusion
from latent_flow.evaluation.segmenter import (
    PartSegmenter,
    SegmenterConfig,
    load_or_train_segmenter,
    segment,
    segmentation_scores,
    train_segmenter,
)
from latent_flow.utils.checkpoint_files import CheckpointIntegrityError


def test_miou_closed_form_on_hand_made_maps():
    # 4x4 maps, classes 0..3; class 3 in neither map, class 2 only predicted
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 2]])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[11, 0, 1, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    value, per_class = miou(pred, target, 4)
    # class 0: TP 11, FP 1 (a 1 predicted as 0), FN 1 (a 0 predicted as 2) -> 11 / 13
    # class 1: TP 3, FP 0, FN 1 -> 3 / 4; class 2: TP 0, union 1 -> 0; class 3: absent -> None
    assert per_class[0] == pytest.approx(11 / 13) and per_class[1] == pytest.approx(3 / 4)
    assert per_class[2] == 0.0 and per_class[3] is None
    assert value == pytest.approx((11 / 13 + 3 / 4 + 0.0) / 3)


def test_miou_accumulates_pixels_over_maps_and_edge_cases():
    a_t, a_p = np.zeros((2, 2), int), np.zeros((2, 2), int)  # all background, right
    b_t = np.array([[1, 1], [1, 1]])
    b_p = np.array([[1, 1], [0, 0]])
    value, per_class = miou(np.stack([a_p, b_p]), np.stack([a_t, b_t]), 2)
    # over both maps: class 0 TP 4, FP 2 -> 4 / 6; class 1 TP 2, FN 2 -> 2 / 4 (not the mean of per-map IoUs)
    assert per_class == [pytest.approx(4 / 6), pytest.approx(2 / 4)]
    assert value == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert miou(b_t, b_t, 3) == (1.0, [None, 1.0, None])  # a perfect map: 1, absent classes left out
    assert miou_from_confusion(torch.zeros(3, 3))[1] == [None, None, None]
    assert np.isnan(miou_from_confusion(torch.zeros(3, 3))[0])
    with pytest.raises(ValueError, match=r"target class ids span \[0, 3\], outside \[0, 1\]"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 3], [0, 0]]), 2)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)


def _toy(n: int, res: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is written in the pixels: background white, class 1 red squares, class 2 a black line."""
    rng = np.random.default_rng(seed)
    images = np.full((n, res, res, 3), 255, np.uint8)
    maps = np.zeros((n, res, res), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, res - 6, size=2)
        maps[i, y : y + 6, x : x + 6] = 1
        maps[i, int(rng.integers(0, res)), :] = 2
    images[maps == 1] = (220, 30, 30)
    images[maps == 2] = (0, 0, 0)
    return images, maps


class _ToyDataset:
    semantic_classes = ["background", "square", "line"]

    def __init__(self, n: int, seed: int) -> None:
        self.images, self.maps = _toy(n, seed=seed)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 127.5 - 1.0
        return {"image": image, "semantic": torch.from_numpy(self.maps[i].astype(np.int64))}

    def fingerprint(self) -> str:
        return f"toy-{len(self)}-{self.seed}"


def test_segmenter_learns_a_toy_task_and_scores_it():
    images, maps = _toy(64)
    seg = train_segmenter(images, maps, 3, SegmenterConfig(widths=(8, 8, 8), steps=60, batch_size=16, lr=1e-2))
    held_images, held_maps = _toy(16, seed=1)
    scores = segmentation_scores(seg, held_images, held_maps)
    assert scores["num_images"] == 16 and scores["miou"] > 0.8
    assert set(scores["miou_per_class"]) == {"0", "1", "2"}
    ids = segment(seg, held_images)
    assert ids.shape == (16, 16, 16) and ids.dtype == torch.long
    # uint8 NHWC and float NCHW in [-1, 1] give the same maps
    floats = torch.from_numpy(held_images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(segment(seg, floats), ids)
    assert scores["miou"] == pytest.approx(miou(ids, held_maps, 3)[0])
    with pytest.raises(ValueError, match=r"expects images \(B, 3, 16, 16\)"):
        segment(seg, np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="4 images but 3 maps"):
        segmentation_scores(seg, held_images[:4], held_maps[:3])


def test_segmenter_cache_round_trip_and_integrity(tmp_path):
    train, held = _ToyDataset(32, 0), _ToyDataset(8, 1)
    cfg = SegmenterConfig(widths=(8, 8, 8), steps=4, batch_size=8)
    seg = load_or_train_segmenter(tmp_path, train, held, cfg, name="toy")
    files = sorted(p.name for p in (tmp_path / "segmenters").iterdir())
    key = seg.metrics["key"]
    assert files[:2] == [f"toy-{key}.json", f"toy-{key}.pt"] and len(files) == 3
    assert files[2].startswith(f"toy-{key}.pt.")  # its checksum beside it (utils.checkpoint_files)
    meta = json.loads((tmp_path / "segmenters" / f"toy-{key}.json").read_text())
    assert meta["held_out"]["num_images"] == 8 and meta["classes"] == train.semantic_classes
    assert 0.0 <= meta["held_out"]["miou"] <= 1.0 and meta["train"]["num_images"] == 32
    again = load_or_train_segmenter(tmp_path, train, held, cfg, name="toy")  # loaded, not trained
    assert isinstance(again, PartSegmenter) and again.metrics == meta and again.class_names == train.semantic_classes
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(segment(seg, x), segment(again, x))
    # another training set (fingerprint) or recipe: another key
    other = load_or_train_segmenter(tmp_path, _ToyDataset(32, 5), None, cfg, name="toy")
    assert other.metrics["key"] != key and "held_out" not in other.metrics
    # a damaged file is refused, not used
    weights = tmp_path / "segmenters" / f"toy-{key}.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError):
        load_or_train_segmenter(tmp_path, train, held, cfg, name="toy")
