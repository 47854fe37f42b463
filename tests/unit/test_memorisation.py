"""evaluation.memorisation: exact batched k-NN, the copy criterion, the closest-pairs grid."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_flow.evaluation.memorisation import closest_pairs_grid, memorisation_report, nearest_neighbours


def _brute_force(queries: np.ndarray, support: np.ndarray, k: int, exclude_self: bool = False):
    diff = queries[:, None, :].astype(np.float64) - support[None, :, :].astype(np.float64)
    dist = np.sqrt((diff**2).sum(-1))
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_knn_matches_brute_force(batch_size):
    rng = np.random.default_rng(0)
    queries, support = rng.normal(size=(37, 5, 3)), rng.normal(size=(53, 5, 3))
    dist, idx = nearest_neighbours(torch.from_numpy(queries), torch.from_numpy(support), k=4, batch_size=batch_size)
    want_d, want_i = _brute_force(queries.reshape(37, -1), support.reshape(53, -1), 4)
    assert dist.dtype == torch.float64 and idx.dtype == torch.int64 and dist.shape == idx.shape == (37, 4)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(idx.numpy(), want_i)


def test_knn_float32_and_uint8_inputs_are_computed_in_float64():
    rng = np.random.default_rng(1)
    queries = rng.integers(0, 256, size=(20, 64 * 64 * 3), dtype=np.uint8)
    support = rng.integers(0, 256, size=(30, 64 * 64 * 3), dtype=np.uint8)
    dist, idx = nearest_neighbours(torch.from_numpy(queries), torch.from_numpy(support), batch_size=8)
    want_d, want_i = _brute_force(queries, support, 1)
    np.testing.assert_array_equal(dist.numpy(), want_d)  # integer data: the expansion is exact
    np.testing.assert_array_equal(idx.numpy(), want_i)
    # float32 inputs scaled to [0, 1]: the same neighbours, distances / 255 to float64 precision
    d32, i32 = nearest_neighbours(torch.from_numpy(queries).float() / 255, torch.from_numpy(support).float() / 255)
    np.testing.assert_array_equal(i32.numpy(), want_i)
    np.testing.assert_allclose(d32.numpy(), want_d / 255, rtol=1e-6)


def test_knn_exclude_self_is_leave_one_out():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(41, 6))
    points[10] = points[3]  # a duplicate elsewhere in the set still counts, at distance 0
    dist, idx = nearest_neighbours(torch.from_numpy(points), torch.from_numpy(points), k=3, exclude_self=True)
    want_d, want_i = _brute_force(points, points, 3, exclude_self=True)
    np.testing.assert_allclose(dist.numpy(), want_d, atol=1e-9)
    assert (idx.numpy() != np.arange(41)[:, None]).all()
    assert idx[3, 0] == 10 and idx[10, 0] == 3 and dist[3, 0] == 0.0
    # without it every point is its own nearest neighbour (distance clamped at exactly 0)
    self_d, self_i = nearest_neighbours(torch.from_numpy(points), torch.from_numpy(points))
    assert (self_d[:, 0] == 0).all()
    assert set(self_i[:, 0].tolist()) <= set(range(41))


def test_knn_rejects_bad_arguments():
    a, b = torch.zeros(4, 3), torch.zeros(5, 3)
    with pytest.raises(ValueError, match="values per point"):
        nearest_neighbours(a, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="same length"):
        nearest_neighbours(a, b, exclude_self=True)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        nearest_neighbours(a, a, k=4, exclude_self=True)
    with pytest.raises(ValueError, match="at least one"):
        nearest_neighbours(torch.zeros(0, 3), b)


def test_exact_copies_are_flagged():
    rng = np.random.default_rng(3)
    train = torch.from_numpy(rng.normal(size=(200, 12)))
    held_out = torch.from_numpy(rng.normal(size=(150, 12)))
    samples = train[torch.from_numpy(rng.permutation(200)[:100])]
    s_d, _ = nearest_neighbours(samples, train)
    h_d, _ = nearest_neighbours(held_out, train)
    assert (s_d == 0).all()
    report = memorisation_report(s_d[:, 0], h_d[:, 0])
    assert report["threshold"] > 0
    assert report["copy_rate"] == 1.0 and report["exact_copy_rate"] == 1.0
    assert report["rate_ratio"] == pytest.approx(20.0) and report["copies"] is True
    assert report["median_ratio"] == 0.0
    assert report["num_samples"] == 100 and report["num_held_out"] == 150


def test_samples_from_the_held_out_distribution_are_not_flagged():
    rng = np.random.default_rng(4)
    train = torch.from_numpy(rng.normal(size=(1000, 16)))
    held_out = torch.from_numpy(rng.normal(size=(2000, 16)))
    samples = torch.from_numpy(rng.normal(size=(2000, 16)))
    h_d = nearest_neighbours(held_out, train)[0][:, 0]
    s_d = nearest_neighbours(samples, train)[0][:, 0]
    t_d = nearest_neighbours(train, train, exclude_self=True)[0][:, 0]
    report = memorisation_report(s_d, h_d, train_to_train=t_d)
    # binomial spread of 2,000 samples at 5% (~0.005) plus that of the threshold: sd ~0.13 over seeds, 0.4 is 3 sigma
    assert abs(report["rate_ratio"] - 1.0) < 0.4, report
    assert abs(report["median_ratio"] - 1.0) < 0.05, report
    assert 0.05 < report["rate_ratio_se"] < 0.2  # sqrt(2 * 0.05 * 0.95 / 2000) / 0.05 = 0.14
    assert report["copies"] is False
    assert report["expected_rate"] == 0.05 and report["held_out_rate"] == pytest.approx(0.05, abs=1e-3)
    assert report["num_train"] == 1000 and set(report["quantiles"]) == {"samples", "held_out", "train_to_train"}
    q = report["quantiles"]["held_out"]
    assert list(q) == ["p1", "p5", "p25", "p50", "p75"] and q["p5"] == report["threshold"]
    assert q["p1"] <= q["p5"] <= q["p25"] <= q["p50"] <= q["p75"]


def test_partial_copying_is_flagged_and_far_samples_are_not():
    rng = np.random.default_rng(5)
    held_out = rng.uniform(1.0, 2.0, size=1000)
    copier = np.concatenate([np.zeros(150), rng.uniform(1.0, 2.0, size=850)])  # 15% copies
    assert memorisation_report(copier, held_out)["copies"] is True
    far = rng.uniform(1.5, 3.0, size=1000)  # blurry / off-distribution samples: far, not copies
    report = memorisation_report(far, held_out)
    assert report["copy_rate"] == 0.0 and report["copies"] is False and report["median_ratio"] > 1.0
    # the ratio threshold is a parameter: 15% + 5% * 0.85 below the 5% quantile is ~3.9x
    assert memorisation_report(copier, held_out, max_rate_ratio=5.0)["copies"] is False


@pytest.mark.parametrize(
    ("samples", "held_out", "message"),
    [
        (np.zeros((3, 2)), np.ones(3), "sample_to_train must be 1-D"),
        (np.ones(3), np.ones(()), "held_out_to_train must be 1-D"),
        (np.ones(0), np.ones(3), "sample_to_train is empty"),
        (np.ones(3), np.array([1.0, np.nan]), "held_out_to_train has 1 non-finite"),
        (np.array([1.0, np.inf]), np.ones(3), "sample_to_train has 1 non-finite"),
        (np.array([-1.0, 1.0]), np.ones(3), "negative"),
    ],
)
def test_report_rejects_bad_distances(samples, held_out, message):
    with pytest.raises(ValueError, match=message):
        memorisation_report(samples, held_out)


def test_report_rejects_bad_parameters():
    with pytest.raises(ValueError, match="quantile"):
        memorisation_report(np.ones(3), np.ones(3), quantile=0.0)
    with pytest.raises(ValueError, match="max_rate_ratio"):
        memorisation_report(np.ones(3), np.ones(3), max_rate_ratio=0.0)
    with pytest.raises(ValueError, match="train_to_train is empty"):
        memorisation_report(np.ones(3), np.ones(3), train_to_train=np.ones(0))


def test_closest_pairs_grid_layout():
    rng = np.random.default_rng(6)
    samples = rng.integers(0, 256, size=(20, 8, 6, 3), dtype=np.uint8)
    train = rng.integers(0, 256, size=(30, 8, 6, 3), dtype=np.uint8)
    distances = rng.uniform(1, 2, size=20)
    distances[13] = 0.5  # the closest sample
    indices = rng.integers(0, 30, size=20)
    image = closest_pairs_grid(samples, train, distances[:, None], indices[:, None], gap=2, pair_gap=10)
    # 16 pairs in 4 rows of 4: width 4 * (2 * 6 + 2) + 5 * 10, height 4 * 8 + 5 * 10
    assert image.size == (4 * 14 + 50, 4 * 8 + 50)
    arr = np.asarray(image)
    np.testing.assert_array_equal(arr[10:18, 10:16], samples[13])
    np.testing.assert_array_equal(arr[10:18, 18:24], train[indices[13]])
    assert (arr[0, 0] == 128).all()  # background
    second = int(np.argsort(distances)[1])
    np.testing.assert_array_equal(arr[10:18, 34:40], samples[second])
    # fewer samples than pairs: one short row; upscaling is a nearest zoom
    small = closest_pairs_grid(samples[:3], train, distances[:3], indices[:3], upscale=2, gap=2, pair_gap=10)
    assert small.size == (2 * (3 * 14 + 40), 2 * (8 + 20))


def test_closest_pairs_grid_rejects_bad_inputs():
    samples = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        closest_pairs_grid(samples.astype(np.float32), samples, np.zeros(4), np.zeros(4, int))
    with pytest.raises(ValueError, match="differ in size"):
        closest_pairs_grid(samples, np.zeros((4, 8, 9, 3), np.uint8), np.zeros(4), np.zeros(4, int))
    with pytest.raises(ValueError, match="one distance and one index per sample"):
        closest_pairs_grid(samples, samples, np.zeros(3), np.zeros(4, int))
    with pytest.raises(ValueError, match="point into"):
        closest_pairs_grid(samples, samples, np.zeros(4), np.full(4, 4))


# ------------------------------------------------------------------ experiments/emoji/memorisation.py


SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "emoji" / "memorisation.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("emoji_memorisation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _PoolFeatures:
    """A cheap stand-in for the Inception: 2 x 2 average pooling of images in [0, 1], flattened."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        self.calls += len(images01)
        return torch.nn.functional.avg_pool2d(images01, 2).flatten(1)


def test_script_caches_features_by_key_and_content(script, tmp_path):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    extractor = _PoolFeatures()
    first = script.cached_features(extractor, images, tmp_path, "train_abc")
    assert extractor.calls == 6 and first.shape == (6, 48)
    assert [p.name for p in tmp_path.iterdir()] == ["inception_train_abc__PoolFeatures.npz"]
    again = script.cached_features(extractor, images, tmp_path, "train_abc")
    assert extractor.calls == 6  # read back
    np.testing.assert_array_equal(again, first)
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    script.cached_features(extractor, other, tmp_path, "train_abc")  # same key, other pixels: recomputed
    assert extractor.calls == 12


def test_script_end_to_end_flags_copies_and_writes_its_files(script, tmp_path):
    rng = np.random.default_rng(8)
    train = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    held_out = rng.integers(0, 256, size=(500, 8, 8, 3), dtype=np.uint8)
    copies = train[:20]
    extractor = _PoolFeatures()
    features = {
        name: script.cached_features(extractor, images, None, name)
        for name, images in (("samples", copies), ("train", train), ("held_out", held_out))
    }
    result = script.run_check(copies, train, held_out, features, tmp_path, train_names=[f"e{i}" for i in range(60)])
    files = ("memorisation.json", "closest_pairs_pixels.png", "closest_pairs_inception.png", "nn_distances.png")
    for name in files + ("nn_distances.npz",):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "memorisation.json").read_text())
    assert saved["num_samples"] == 20 and saved["num_train"] == 60 and saved["num_held_out"] == 500
    for space in ("pixels", "inception"):
        assert saved[space]["copies"] is True and saved[space]["copy_rate"] == 1.0
        pair = saved[space]["closest_pairs"][0]
        assert pair["distance"] == 0.0 and pair["train"] == pair["sample"] and pair["train_name"] == f"e{pair['train']}"
    assert saved["copies"] is True and result["pixels"]["threshold"] == saved["pixels"]["threshold"]
    arrays = np.load(tmp_path / "nn_distances.npz")
    assert arrays["pixels_sample_to_train"].shape == (20,) and (arrays["inception_sample_index"] == np.arange(20)).all()
    assert arrays["pixels_held_out_to_train"].shape == (500,) and arrays["pixels_train_to_train"].shape == (60,)
    # pixel distances are of images in [0, 1]: at most sqrt(8 * 8 * 3)
    assert 0 < saved["pixels"]["threshold"] < np.sqrt(192)
    # fresh images from the held-out distribution are not flagged in either space
    fresh = rng.integers(0, 256, size=(500, 8, 8, 3), dtype=np.uint8)
    features["samples"] = script.cached_features(extractor, fresh, None, "fresh")
    fresh_result = script.run_check(fresh, train, held_out, features, tmp_path / "fresh")
    assert fresh_result["copies"] is False
