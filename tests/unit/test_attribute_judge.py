"""Pixel-space attribute judges (latent_flow.evaluation.attribute_judge): scores in closed form, training on a
tiny synthetic set whose attributes are written in the pixels, class balancing, the cache and its checksums."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import latent_flow.evaluation.attribute_judge as aj
from latent_flow.evaluation.attribute_judge import (
    AttributeJudge,
    JudgeConfig,
    judge_attributes,
    judge_scores,
    load_or_train_judges,
    predict,
    train_judge,
)
from latent_flow.utils.checkpoint_files import CheckpointIntegrityError

RES = 16
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions on a shared CPU: one intra-op thread is faster than two (conftest sets two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toy(n: int, seed: int, rare_every: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """White images with a coloured square (attribute ``color``) in the left or right half (attribute ``side``).
    ``rare_every``: only every k-th image is blue (a rare value, for the balancing test)."""
    rng = np.random.default_rng(seed)
    images = np.full((n, RES, RES, 3), 255, np.uint8)
    attrs = np.zeros((n, 2), np.int64)
    for i in range(n):
        c = int(rng.integers(2)) if rare_every else int(rng.integers(3))
        if rare_every and i % rare_every == 0:
            c = 2
        side = int(rng.integers(2))
        x0 = int(rng.integers(0, RES // 2 - 5)) + side * (RES // 2)
        y0 = int(rng.integers(0, RES - 5))
        images[i, y0 : y0 + 5, x0 : x0 + 5] = list(COLOURS.values())[c]
        attrs[i] = (c, side)
    return images, attrs


class _ToyDataset:
    """The interface the judges need: items with ``image`` in [-1, 1], ``attribute_names`` / ``_values``, a
    fingerprint."""

    attribute_names = ["color", "side"]
    attribute_values = {"color": list(COLOURS), "side": ["left", "right"]}

    def __init__(self, n: int, seed: int) -> None:
        self.images, self.attributes = _toy(n, seed)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 127.5 - 1.0}

    def fingerprint(self) -> str:
        return f"toy-{len(self)}-{self.seed}"


def test_scores_in_closed_form(monkeypatch):
    judge = AttributeJudge("skin", ["none", "light", "dark"], RES)
    labels = np.array([0, 0, 0, 0, 1, 1, 0])
    fixed = torch.tensor([0, 0, 0, 1, 1, 0, 0])  # value 0: 4 of 5 right; value 1: 1 of 2; value 2 absent
    monkeypatch.setattr(aj, "predict", lambda j, images, batch_size=256: fixed)
    s = judge_scores(judge, np.zeros((7, RES, RES, 3), np.uint8), labels)
    assert s["num_images"] == 7 and s["accuracy"] == pytest.approx(5 / 7)
    assert s["balanced_accuracy"] == pytest.approx((4 / 5 + 1 / 2) / 2)  # the absent value is left out
    assert s["per_value"]["none"] == {"count": 5, "recall": pytest.approx(0.8), "predicted": 5}
    assert s["per_value"]["light"] == {"count": 2, "recall": 0.5, "predicted": 2}
    assert s["per_value"]["dark"] == {"count": 0, "recall": None, "predicted": 0}
    assert s["confusion"] == [[4, 1, 0], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="7 images but 3 labels"):
        judge_scores(judge, np.zeros((7, RES, RES, 3), np.uint8), labels[:3])


def test_judges_learn_attributes_written_in_the_pixels_and_read_held_out_images():
    torch.manual_seed(0)
    train_x, train_y = _toy(160, seed=0)
    test_x, test_y = _toy(60, seed=1)
    cfg = JudgeConfig(widths=(8, 16, 16), steps=120, batch_size=32, lr=5e-3)
    judges = {
        "color": train_judge(train_x, train_y[:, 0], "color", list(COLOURS), cfg),
        "side": train_judge(
            train_x,
            train_y[:, 1],
            "side",
            ["left", "right"],
            JudgeConfig(widths=(8, 16, 16), steps=120, batch_size=32, lr=5e-3, flip=False),
        ),  # fmt: skip
    }
    assert judge_scores(judges["color"], test_x, test_y[:, 0])["balanced_accuracy"] > 0.9
    # side is not mirror invariant: trained without flips it is read; uint8 and float inputs agree
    assert judge_scores(judges["side"], test_x, test_y[:, 1])["balanced_accuracy"] > 0.9
    read = judge_attributes(judges, test_x)
    floats = torch.from_numpy(test_x).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(read["color"], predict(judges["color"], floats))
    with pytest.raises(ValueError, match=r"expects images \(B, 3, 16, 16\)"):
        judges["color"](torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8 image tensors are ambiguous"):
        predict(judges["color"], torch.zeros(1, 3, RES, RES, dtype=torch.uint8))


def test_balanced_batches_learn_a_rare_value_that_uniform_batches_outvote():
    """Blue is 1 image in 20: with balance=0 (batches uniform over images) the judge barely predicts it; with the
    default balance=1 it reads it (higher balanced accuracy on a held-out set where blue is as rare)."""
    train_x, train_y = _toy(200, seed=2, rare_every=20)
    test_x, test_y = _toy(200, seed=3, rare_every=20)
    recall = {}
    for balance in (0.0, 1.0):
        cfg = JudgeConfig(widths=(8, 16, 16), steps=40, batch_size=16, lr=5e-3, balance=balance, seed=1)
        judge = train_judge(train_x, train_y[:, 0], "color", list(COLOURS), cfg)
        recall[balance] = judge_scores(judge, test_x, test_y[:, 0])["per_value"]["blue"]["recall"]
    assert recall[1.0] > recall[0.0]


def test_bad_inputs_and_configs_are_refused():
    with pytest.raises(ValueError, match="balance must be in"):
        JudgeConfig(balance=2.0)
    with pytest.raises(ValueError, match="needs >= 2 values"):
        AttributeJudge("hair", ["none"], RES)
    x, y = _toy(8, seed=0)
    with pytest.raises(ValueError, match=r"value indices must be in \[0, 1\]"):
        train_judge(x, y[:, 0] + 1, "side", ["left", "right"], JudgeConfig(steps=1))
    with pytest.raises(ValueError, match="8 images but labels of shape"):
        train_judge(x, y[:4, 0], "color", list(COLOURS), JudgeConfig(steps=1))


def test_cache_loads_without_training_and_refuses_a_damaged_file(tmp_path, monkeypatch):
    train, held = _ToyDataset(40, seed=0), _ToyDataset(20, seed=1)
    cfg = JudgeConfig(widths=(4, 8, 8), steps=3, batch_size=8)
    first = load_or_train_judges(tmp_path, train, held, config=cfg, name="toy")
    assert list(first) == ["color", "side"]
    files = sorted((tmp_path / "judges").glob("toy-*.pt"))
    assert len(files) == 2 and all(f.with_name(f.name + ".xxh128").is_file() for f in files)
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["held_out"]["num_images"] == 20 and meta["train"]["num_images"] == 40
    assert first["color"].metrics["held_out"]["per_value"]["red"]["count"] == int((held.attributes[:, 0] == 0).sum())

    def no_training(*args, **kwargs):
        raise AssertionError("a cached judge was trained again")

    monkeypatch.setattr(aj, "train_judge", no_training)
    again = load_or_train_judges(tmp_path, train, held, attributes=["side"], config=cfg, name="toy")
    x = torch.randn(2, 3, RES, RES)
    assert torch.equal(again["side"](x), first["side"](x))
    assert again["side"].metrics["held_out"] == first["side"].metrics["held_out"]
    with pytest.raises(ValueError, match="unknown attribute 'hat' for the judges; the dataset's attributes are"):
        load_or_train_judges(tmp_path, train, attributes=["hat"], config=cfg, name="toy")
    side = next(f for f in files if "-side-" in f.name)
    blob = bytearray(side.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    side.write_bytes(bytes(blob))
    with pytest.raises(CheckpointIntegrityError):
        load_or_train_judges(tmp_path, train, attributes=["side"], config=cfg, name="toy")
