"""Reference statistics: the training split rule, lossless images, resume, rank split, file checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latent_flow.evaluation.frechet import frechet_distance, gaussian_stats
from latent_flow.evaluation.reference import (
    ReferenceStatsError,
    build_feature_extractor,
    compute_reference,
    load_reference_stats,
    reference_indices,
)

POOL = {
    "_target_": "torch.nn.Sequential",
    "_args_": [{"_target_": "torch.nn.AdaptiveAvgPool2d", "output_size": 2}, {"_target_": "torch.nn.Flatten"}],
}


class CountingExtractor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


@pytest.fixture
def folder(tmp_path):
    """12 random 8x8 PNGs at the training resolution (no resize)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    root.mkdir()
    pixels = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(root / f"{i:03d}.png")
    return root, pixels


def test_splits_follow_the_training_rule_and_subsets_are_fixed():
    from latent_flow.data.datamodule import split_indices

    train, val = split_indices(100, 0.1, 3)
    assert reference_indices(100, split="train", val_fraction=0.1, seed=3).tolist() == train.tolist()
    assert reference_indices(100, split="val", val_fraction=0.1, seed=3).tolist() == val.tolist()
    assert reference_indices(100, split="all", val_fraction=0.1, seed=3).tolist() == list(range(100))
    sub = reference_indices(100, split="train", val_fraction=0.1, seed=3, num_images=20)
    assert len(sub) == 20 and set(sub) <= set(train)
    assert sub.tolist() == reference_indices(100, split="train", val_fraction=0.1, seed=3, num_images=20).tolist()
    with pytest.raises(ValueError, match="has only 10 images"):
        reference_indices(100, split="val", val_fraction=0.1, seed=3, num_images=11)
    with pytest.raises(ValueError, match="not one of"):
        reference_indices(100, split="test", val_fraction=0.1, seed=3)


def test_images_are_the_files_bit_exact_and_stats_match_the_features(folder, tmp_path):
    from latent_flow.data import ImageFolderDataset

    root, pixels = folder
    ds = ImageFolderDataset(root, resolution=8)
    idx = reference_indices(len(ds), split="all", val_fraction=0.0, seed=0)
    summary = compute_reference(
        ds,
        idx,
        build_feature_extractor(POOL),
        tmp_path / "ref",
        extractor_spec=POOL,
        chunk_size=5,
        batch_size=3,
        save_images=True,
        progress=False,
    )
    assert summary["num_images"] == 12 and summary["feature_dim"] == 12
    ref = np.load(tmp_path / "ref" / "reference.npz")["arr_0"]
    assert ref.dtype == np.uint8 and np.array_equal(ref, pixels)  # no flip, no lossy re-encoding
    stats = load_reference_stats(tmp_path / "ref", feature_extractor=POOL)
    expect = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    expect = torch.nn.functional.adaptive_avg_pool2d(expect, 2).flatten(1)
    assert torch.allclose(stats["features"].float(), expect, atol=1e-6)
    mu, sigma = gaussian_stats(expect.double())
    assert frechet_distance(stats["mu"], stats["sigma"], mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_an_interrupted_run_resumes_without_redoing_chunks(folder, tmp_path):
    from latent_flow.data import ImageFolderDataset

    ds = ImageFolderDataset(folder[0], resolution=8)
    idx = np.arange(len(ds))
    first = CountingExtractor()
    compute_reference(ds, idx, first, tmp_path / "r", extractor_spec=POOL, chunk_size=5, progress=False)
    before = np.load(tmp_path / "r" / "stats.npz")["mu"]
    (tmp_path / "r" / "parts" / "part_00001.npz").unlink()  # "interrupted" before chunk 1 was written
    (tmp_path / "r" / "stats.npz").unlink()
    again = CountingExtractor()
    compute_reference(ds, idx, again, tmp_path / "r", extractor_spec=POOL, chunk_size=5, progress=False)
    assert first.images == 12 and again.images == 5  # only the missing chunk
    assert np.allclose(np.load(tmp_path / "r" / "stats.npz")["mu"], before)
    with pytest.raises(ReferenceStatsError, match="another setting"):
        compute_reference(ds, idx, again, tmp_path / "r", extractor_spec=POOL, chunk_size=4, progress=False)


def _plain_folder(root, value: int, n: int = 12, size: int = 8):
    root.mkdir()
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def test_resuming_a_folder_started_on_other_data_is_refused_naming_the_difference(tmp_path):
    """Interrupted on dataset A, rerun on B: the chunks of A were once reused (feature mean 0.5, not 1.0)."""
    from latent_flow.data import ImageFolderDataset

    black = ImageFolderDataset(_plain_folder(tmp_path / "black", 0), resolution=8)
    white = ImageFolderDataset(_plain_folder(tmp_path / "white", 255), resolution=8)
    idx = np.arange(12)
    out = tmp_path / "ref"
    compute_reference(black, idx, CountingExtractor(), out, extractor_spec=POOL, chunk_size=5, progress=False)
    (out / "parts" / "part_00001.npz").unlink()  # interrupted
    (out / "stats.npz").unlink()
    with pytest.raises(ReferenceStatsError, match=r"another setting .*dataset_fingerprint: '[0-9a-f]+' there"):
        compute_reference(white, idx, CountingExtractor(), out, extractor_spec=POOL, chunk_size=5, progress=False)
    assert not (out / "stats.npz").exists()
    plan = json.loads((out / "parts" / "plan.json").read_text())  # still the first run's
    assert plan["dataset_fingerprint"] == black.fingerprint() and plan["resolution"] == 8
    # the same files at another resolution, or another split of the same images: named too
    small = ImageFolderDataset(tmp_path / "black", resolution=4)
    with pytest.raises(ReferenceStatsError, match="resolution: 8 there, 4 now"):
        compute_reference(small, idx, CountingExtractor(), out, extractor_spec=POOL, chunk_size=5, progress=False)
    split_out = tmp_path / "split"
    compute_reference(
        black, idx, CountingExtractor(), split_out, extractor_spec=POOL, info={"split": "train"}, progress=False
    )
    with pytest.raises(ReferenceStatsError, match="split: 'train' there, 'val' now"):
        compute_reference(
            black, idx, CountingExtractor(), split_out, extractor_spec=POOL, info={"split": "val"}, progress=False
        )
    # a folder of plans written before the data were recorded cannot be checked: refused, not reused
    del plan["dataset_fingerprint"]
    (out / "parts" / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ReferenceStatsError, match="dataset_fingerprint: not recorded there"):
        compute_reference(black, idx, CountingExtractor(), out, extractor_spec=POOL, chunk_size=5, progress=False)
    # the same data resumes and gives the whole-run statistics of the black images
    (out / "parts" / "plan.json").unlink()
    again = CountingExtractor()
    summary = compute_reference(black, idx, again, out, extractor_spec=POOL, chunk_size=5, progress=False)
    assert again.images == 5 and summary["dataset_fingerprint"] == black.fingerprint()
    assert np.load(out / "stats.npz")["mu"].max() == 0.0


def test_two_ranks_split_the_chunks_and_give_the_single_process_stats(folder, tmp_path):
    from latent_flow.data import ImageFolderDataset

    ds = ImageFolderDataset(folder[0], resolution=8)
    idx = np.arange(len(ds))
    compute_reference(ds, idx, CountingExtractor(), tmp_path / "one", extractor_spec=POOL, chunk_size=4, progress=False)
    r1 = CountingExtractor()
    assert (
        compute_reference(
            ds, idx, r1, tmp_path / "two", extractor_spec=POOL, chunk_size=4, rank=1, world_size=2, progress=False
        )
        is None
    )
    assert r1.images == 4  # chunk 1 of 0, 1, 2
    r0 = CountingExtractor()
    compute_reference(
        ds,
        idx,
        r0,
        tmp_path / "two",
        extractor_spec=POOL,
        chunk_size=4,
        rank=0,
        world_size=2,
        progress=False,
        wait_timeout=5,
    )
    assert r0.images == 8
    a, b = np.load(tmp_path / "one" / "stats.npz"), np.load(tmp_path / "two" / "stats.npz")
    assert np.array_equal(a["indices"], b["indices"]) and np.allclose(a["sigma"], b["sigma"])


def test_missing_or_mismatched_statistics_are_refused(folder, tmp_path):
    from latent_flow.data import ImageFolderDataset

    with pytest.raises(ReferenceStatsError, match="latent_flow.reference_stats"):
        load_reference_stats(tmp_path / "nowhere")
    ds = ImageFolderDataset(folder[0], resolution=8)
    compute_reference(ds, np.arange(4), CountingExtractor(), tmp_path / "r", extractor_spec=POOL, progress=False)
    with pytest.raises(ReferenceStatsError, match="computed with feature extractor torch.nn.Sequential"):
        load_reference_stats(
            tmp_path / "r", feature_extractor={"_target_": "latent_flow.evaluation.metrics.InceptionFeatures"}
        )
    np.savez(tmp_path / "bad.npz", features=np.zeros((2, 2)))
    with pytest.raises(ReferenceStatsError, match=r"no \['mu', 'sigma'\]"):
        load_reference_stats(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="needs a _target_"):
        build_feature_extractor({"output_size": 2})


def test_the_command_writes_stats_of_the_requested_split(compose_cfg, tmp_path):
    from latent_flow.reference_stats import run_reference_stats

    cfg = compose_cfg(
        "reference_stats",
        [
            "feature_extractor=pixels",
            "data.dataset.num_samples=100",
            "data.val_fraction=0.1",
            "split=val",
            "chunk_size=4",
        ],
    )
    summary = run_reference_stats(cfg)
    out = tmp_path / "run"
    info = json.loads((out / "reference.json").read_text())
    assert summary["num_images"] == info["num_images"] == 10 and info["split"] == "val"
    assert info["feature_extractor"]["_target_"] == "torch.nn.Sequential" and info["augmentation"].startswith("none")
    assert np.load(out / "reference.npz")["arr_0"].shape == (10, 32, 32, 3)
    assert np.load(out / "stats.npz")["features"].shape == (10, 48)


class LinearExtractor(torch.nn.Module):
    """Pooled pixels through a seeded linear map: one config, different weights per seed."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(12, 4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(4, 12, generator=torch.Generator().manual_seed(seed)))
            self.proj.bias.zero_()

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def test_statistics_are_refused_for_other_weights_of_the_same_extractor(folder, tmp_path, caplog):
    from latent_flow.data import ImageFolderDataset
    from latent_flow.evaluation.reference import extractor_fingerprint

    a, a_again, b = LinearExtractor(0), LinearExtractor(0), LinearExtractor(1)
    assert extractor_fingerprint(a) == extractor_fingerprint(a_again) != extractor_fingerprint(b)
    assert extractor_fingerprint(lambda x: x) is None  # a plain function has no weights to record
    with torch.no_grad():
        a_again.proj.bias[0] += 1e-6  # any change of any weight shows
    assert extractor_fingerprint(a_again) != extractor_fingerprint(a)

    ds = ImageFolderDataset(folder[0], resolution=8)
    spec = {"_target_": "tests.LinearExtractor"}  # the same config for a and b: only the weights differ
    compute_reference(ds, np.arange(6), a, tmp_path / "r", extractor_spec=spec, progress=False)
    info = json.loads((tmp_path / "r" / "reference.json").read_text())
    assert info["feature_extractor_weights"] == extractor_fingerprint(a)
    assert load_reference_stats(tmp_path / "r", feature_extractor=spec, extractor_weights=extractor_fingerprint(a))[
        "features"
    ].shape == (6, 4)
    with pytest.raises(ReferenceStatsError, match=r"other weights of the feature extractor .* recompute them"):
        load_reference_stats(tmp_path / "r", feature_extractor=spec, extractor_weights=extractor_fingerprint(b))
    # statistics written before the weights were recorded: used, with a warning that they cannot be checked
    del info["feature_extractor_weights"]
    (tmp_path / "r" / "reference.json").write_text(json.dumps(info))
    with caplog.at_level("WARNING"):
        load_reference_stats(tmp_path / "r", feature_extractor=spec, extractor_weights=extractor_fingerprint(b))
    assert "records no feature-extractor weights" in caplog.text
