"""``callbacks=eval_fid`` as a metric the trainer knows: 2 CPU processes (gloo, ``trainer=ddp_sim``) log the FID of
the one-process run on the same indices under ``eval/fid``; a ModelCheckpoint monitoring it keeps the best step;
an Optuna sweep on it finishes and picks the lower trial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import TINY_TRAIN
from latent_flow.api import load_model
from latent_flow.training.callbacks import SampleMetricsCallback

ROOT = Path(__file__).resolve().parents[2]
PIXELS = {
    "_target_": "torch.nn.Sequential",
    "_args_": [{"_target_": "torch.nn.AdaptiveAvgPool2d", "output_size": 4}, {"_target_": "torch.nn.Flatten"}],
}
#: FID of 7 samples against 20 training images (pixel features), every 3 steps; references in chunks of 8
EVAL = [
    "callbacks=eval_fid",
    "feature_extractor=pixels",
    "callbacks.sample_metrics.num_samples=7",
    "callbacks.sample_metrics.batch_size=4",
    "callbacks.sample_metrics.reference_num_images=20",
    "callbacks.sample_metrics.reference_chunk_size=8",
    "callbacks.sample_metrics.sampler.steps=1",
    "callbacks.sample_grid.every_n_steps=0",
]


def _run(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LATENT_FLOW_ROOT": str(tmp_path),
        "LATENT_FLOW_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "",
        "HYDRA_FULL_ERROR": "1",
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "latent_flow.train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_ddp_eval_fid_equals_the_one_process_fid_and_a_checkpoint_monitor_keeps_the_best(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(
        [
            *TINY_TRAIN,
            *EVAL,
            "trainer=ddp_sim",  # 2 CPU processes over gloo
            "callbacks.model_checkpoint.monitor=eval/fid",
            "callbacks.model_checkpoint.mode=min",
            "callbacks.model_checkpoint.save_top_k=1",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    summary = json.loads((run_dir / "metrics.json").read_text())
    history = summary["eval_history"]
    assert [h["step"] for h in history] == [3, 6]
    assert summary["eval_settings"]["world_size"] == 2 and summary["eval_settings"]["num_samples"] == 7
    for h in history:  # stable keys, N beside them (and the keys of earlier versions, for one release)
        assert h["eval/fid"] > 0 and "eval/kid" in h and h["num_samples"] == 7
        assert h["eval/fid@7"] == h["eval/fid"] and h["eval/kid@7_mean"] == h["eval/kid"]
    # the trainer knows the metric: the run's final metrics (and the sweeper's value) hold the last evaluation
    assert summary["metrics"]["eval/fid"] == pytest.approx(history[-1]["eval/fid"], rel=1e-6)

    # ModelCheckpoint(monitor="eval/fid", mode="min", save_top_k=1) kept the step with the lower FID
    best = min(history, key=lambda h: h["eval/fid"])
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.ckpt"))
    assert kept == [f"step_{best['step']:07d}.ckpt"], (kept, history)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert float(state["best_model_score"]) == pytest.approx(best["eval/fid"], rel=1e-6)

    # the reference statistics were computed by both ranks (3 chunks of 8 of 20 images: rank 0 took 0 and 2)
    (ref_dir,) = (tmp_path / "cache" / "references").iterdir()
    assert sorted(p.name for p in (ref_dir / "parts").glob("part_*.npz")) == [f"part_0000{k}.npz" for k in range(3)]
    assert "[rank 1/2] computing reference statistics" in proc.stdout + proc.stderr

    # one process, the same weights (last.ckpt: step 6) and indices 0..6: the FID logged by the two ranks
    model = load_model(run_dir / "checkpoints" / "last.ckpt", device="cpu")
    callback = SampleMetricsCallback(
        every_n_steps=3,
        num_samples=7,
        batch_size=4,
        sampler={"name": "heun", "steps": 1},
        cfg_scale=2.0,  # samples.cfg_scale of the run
        cache_dir=str(tmp_path / "cache"),
        metrics_path=str(tmp_path / "single.json"),
        metrics=["fid", "kid"],
        feature_extractor=PIXELS,
        reference_stats=str(ref_dir),
    )
    callback.on_fit_start(SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True), model)
    single, _ = callback.score(model)
    ddp = history[-1]
    relative = abs(single["fid"] - ddp["eval/fid"]) / single["fid"]
    print(f"FID 1 process {single['fid']!r}, 2 processes {ddp['eval/fid']!r}: relative difference {relative:.3g}")
    assert relative <= 1e-6
    assert single["kid_mean"] == pytest.approx(ddp["eval/kid"], rel=1e-6, abs=1e-12)


@pytest.mark.slow
def test_an_optuna_sweep_on_eval_fid_finishes_and_picks_the_lower_trial(tmp_path):
    sweep = tmp_path / "optuna"
    _run(
        [
            "hparams_search=optuna",
            "optimized_metric=eval/fid",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "logger=none",
            *TINY_TRAIN,
            *EVAL,
            "optim.cosine=false",  # the sweep's warm-up choices exceed these 6 steps
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(trials) == 2
    values = [t["metrics"]["eval/fid"] for t in trials]
    assert values[0] != values[1]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(values), rel=1e-9)
