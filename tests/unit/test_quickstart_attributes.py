"""experiments/quickstart/attributes.py: the resampled real set has the samples' attribute frequencies, bad files fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from latent_flow.data.shapes import ATTRIBUTE_NAMES, ShapesDataset
from latent_flow.evaluation.oracle import _render

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "quickstart" / "attributes.py"


@pytest.fixture(scope="module")
def attributes():
    spec = importlib.util.spec_from_file_location("quickstart_attributes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attribute_mix_follows_the_target_frequencies(attributes):
    pool = _render(ShapesDataset(num_samples=3000, resolution=16, seed=3))
    target = {"color": [2, 1, 1, 1, 1, 1], "size": [1, 1, 2], "count": [2, 1, 1]}  # as skewed as samples are
    picked = attributes._attribute_mix(pool, target, 300, seed=0)
    assert picked.shape == (300, 3, 16, 16) and picked.min() >= -1 and picked.max() <= 1
    # find which pool renders were drawn (renders are distinct), then their true attributes
    flat = pool["images_u8"].flatten(1).numpy()
    index = {row.tobytes(): i for i, row in enumerate(flat)}
    drawn = ((picked.flatten(1).numpy() + 1) * 127.5).round().astype(np.uint8)
    rows = [index[row.tobytes()] for row in drawn]
    assert len(set(rows)) == 300  # without replacement
    attrs = pool["attributes"].numpy()[rows]
    for name, want in target.items():
        got = np.bincount(attrs[:, ATTRIBUTE_NAMES.index(name)], minlength=len(want)) / 300
        # sampling without replacement from a finite pool flattens the target a little
        assert np.abs(got - np.asarray(want) / sum(want)).max() < 0.05, (name, got)


def test_load_samples_checks_the_file(attributes, tmp_path):
    with pytest.raises(FileNotFoundError, match="samples.npz"):
        attributes._load_samples(tmp_path)
    np.savez(tmp_path / "samples.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(KeyError, match="arr_0"):
        attributes._load_samples(tmp_path)
    np.savez(tmp_path / "samples.npz", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        attributes._load_samples(tmp_path)
    np.savez(tmp_path / "samples.npz", np.full((2, 8, 8, 3), 255, np.uint8))
    images = attributes._load_samples(tmp_path)
    assert images.shape == (2, 3, 8, 8) and float(images.min()) == 1.0
