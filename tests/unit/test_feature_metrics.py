"""FID / KID / precision-recall / IS as torchmetrics Metrics: the maths of ``evaluation.metrics`` and
``evaluation.frechet``, any order of updates, and two gloo processes syncing to the one-process value."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from latent_flow.cli.train import sweep_value
from latent_flow.evaluation.feature_metrics import (
    FEATURE_METRICS,
    FID,
    ReferenceSet,
    feature_metrics,
    image_metrics,
    scores,
)
from latent_flow.evaluation.frechet import frechet_distance, gaussian_stats
from latent_flow.evaluation.metrics import inception_score, kid, precision_recall
from latent_flow.utils.distributed import gather_rows, rank_indices


def _sets(n_real: int = 40, n_fake: int = 31, dim: int = 8):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n_real, dim, generator=g, dtype=torch.float64)
    fake = torch.randn(n_fake, dim, generator=g, dtype=torch.float64) * 1.2 + 0.3
    logits = torch.randn(n_fake, 5, generator=g, dtype=torch.float64)
    return real, fake, logits


def test_the_metrics_give_the_functions_values():
    real, fake, logits = _sets()
    out = image_metrics(real, fake, fake_logits=logits)
    assert out["fid"] == pytest.approx(frechet_distance(*gaussian_stats(real), *gaussian_stats(fake)), rel=1e-12)
    assert (out["kid_mean"], out["kid_std"]) == kid(real, fake, subset_size=1000)
    assert (out["precision"], out["recall"]) == precision_recall(real, fake)
    assert (out["is_mean"], out["is_std"]) == inception_score(logits)


def test_updates_in_any_order_and_split_give_the_one_update_value():
    real, fake, logits = _sets()
    whole = image_metrics(real, fake, fake_logits=logits)
    collection = feature_metrics(FEATURE_METRICS, ReferenceSet.from_features(real), has_logits=True)
    perm = torch.randperm(len(fake), generator=torch.Generator().manual_seed(3))
    for part in perm.split(7):  # shuffled chunks, each with its sample indices
        collection.update(fake[part], part, logits[part])
    split = scores(collection)
    assert split["fid"] == pytest.approx(whole["fid"], rel=1e-12)
    for key in ("kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std"):
        assert split[key] == whole[key], key  # sorted by index: the same subsets and splits, bit for bit


def test_a_sample_index_added_twice_is_refused():
    real, fake, _ = _sets()
    collection = feature_metrics(("kid",), ReferenceSet.from_features(real))
    collection.update(fake[:5], torch.arange(5))
    collection.update(fake[5:10], torch.arange(4, 9))
    with pytest.raises(ValueError, match=r"sample indices \[4\] were added more than once"):
        scores(collection)


def test_mean_covariance_only_references_give_fid_and_refuse_kid():
    real, fake, _ = _sets()
    mu, sigma = gaussian_stats(real)
    reference = ReferenceSet.from_stats({"mu": mu, "sigma": sigma, "features": None, "info": {"num_images": 40}})
    fid = FID(reference.mu, reference.sigma)
    fid.update(fake)
    assert float(fid.compute()) == pytest.approx(image_metrics(real, fake, metrics=("fid",))["fid"], rel=1e-12)
    assert reference.num_images == 40
    with pytest.raises(ValueError, match="only mean / covariance.*'kid'"):
        feature_metrics(("fid", "kid"), reference)


def test_is_without_logits_is_recorded_as_unavailable():
    real, fake, _ = _sets()
    out = image_metrics(real, fake, metrics=("fid", "is"))
    assert out["is_mean"] is None and "classifier head" in out["is_unavailable"]


def _rank(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        real, fake, logits = _sets()
        collection = feature_metrics(FEATURE_METRICS, ReferenceSet.from_features(real), has_logits=True)
        mine = rank_indices(len(fake), rank, world)  # uneven shares: 16 and 15 samples
        for lo in range(0, len(mine), 6):
            idx = torch.tensor(mine[lo : lo + 6])
            collection.update(fake[idx], idx, logits[idx])
        values = scores(collection)
        rows = gather_rows(fake[mine], mine)
        torch.save({"scores": values, "rows": rows}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_sync_to_the_one_process_value():
    real, fake, logits = _sets()
    single = image_metrics(real, fake, fake_logits=logits)
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out")
        mp.start_processes(_rank, args=(2, init_file, out_file), nprocs=2, join=True, start_method="fork")
        results = [torch.load(f"{out_file}.{r}", weights_only=False) for r in range(2)]
    for result in results:  # every rank holds the scores of the whole set
        assert abs(result["scores"]["fid"] - single["fid"]) <= 1e-9 * single["fid"]
        for key in ("kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std"):
            assert result["scores"][key] == single[key], key
        assert torch.equal(result["rows"], fake)  # gather_rows: every rank's rows in index order


def test_a_missing_optimized_metric_stops_a_sweep_naming_the_logged_ones():
    cfg = OmegaConf.create({"optimized_metric": "eval/fid"})
    summary = {"metrics": {"val/loss_ema": 0.5, "train/loss": 0.6}}
    with pytest.raises(ValueError, match=r"optimized_metric=eval/fid was not logged.*\['train/loss', 'val/loss_ema'\]"):
        sweep_value(cfg, summary, sweeping=True)
    assert sweep_value(cfg, summary, sweeping=False) is None  # a plain run: a warning, not an error
    assert sweep_value(cfg, {"metrics": {"eval/fid": np.float64(3.5)}}, sweeping=True) == 3.5
