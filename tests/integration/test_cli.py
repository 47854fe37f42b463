"""The command lines as a user runs them (subprocesses, tiny settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, args: list[str], tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LATENT_FLOW_ROOT": str(tmp_path),
        "LATENT_FLOW_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "",
        "HYDRA_FULL_ERROR": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_train_cli_with_wandb_offline_then_sample(tmp_path):
    run("latent_flow.train", TINY_TRAIN + ["logger=many", "hydra.run.dir=" + str(tmp_path / "run")], tmp_path)
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B should log offline without an API key"
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 6
    out = tmp_path / "samples"
    proc = run(
        "latent_flow.sample",
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            "num_samples=3",
            "sampler=midpoint",
            "sampler.steps=2",
            f"out_dir={out}",
            f"hydra.run.dir={tmp_path / 'sample_run'}",
        ],
        tmp_path,
    )
    assert "wrote 3 samples" in proc.stdout
    assert json.loads((out / "summary.json").read_text())["nfe_per_sample"] == 4


def test_multirun_sweep_over_backbones_and_paths(tmp_path):
    overrides = [o for o in TINY_TRAIN if not o.startswith("backbone=")]
    run(
        "latent_flow.train",
        [
            "-m",
            "backbone=dit_xs2,unet_t",
            "path=condot,vp",
            "logger=none",
            "callbacks=none",
            "trainer.enable_checkpointing=false",
            "trainer.max_steps=3",
            "hydra.sweep.dir=" + str(tmp_path / "sweep"),
        ]
        + [o for o in overrides if not o.startswith(("callbacks.", "trainer.max_steps"))],
        tmp_path,
    )
    jobs = sorted((tmp_path / "sweep").glob("*/config.yaml"))
    assert len(jobs) == 4


def test_optuna_sweep_optimises_the_logged_metric(tmp_path):
    run(
        "latent_flow.train",
        [
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            "logger=none",
            "hydra.sweep.dir=" + str(tmp_path / "optuna"),
        ]
        + TINY_TRAIN,
        tmp_path,
    )
    results = (tmp_path / "optuna" / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optim.lr" in results and "best_value" in results


def test_train_autoencoder_and_encode_cli(tmp_path):
    export = tmp_path / "ae.pt"
    trained = run(
        "latent_flow.train_autoencoder",
        [
            "data.dataset.num_samples=64",
            "autoencoder.training.max_steps=3",
            "autoencoder.training.batch_size=16",
            f"export_path={export}",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'ae_run'}",
        ],
        tmp_path,
    )
    assert export.exists()
    # not a terminal: plain progress lines, no tqdm bar ("  0%|...") redrawn into a log file
    assert "%|" not in trained.stdout + trained.stderr
    proc = run(
        "latent_flow.encode",
        [
            "data.dataset.num_samples=64",
            f"autoencoder.ckpt_path={export}",
            "shard_size=32",
            f"hydra.run.dir={tmp_path / 'enc_run'}",
        ],
        tmp_path,
    )
    assert "64 items x 1 view(s), latents (2, 16, 16)" in proc.stdout
    assert len(list((tmp_path / "cache" / "latents").glob("*/shard_*.labels.npy"))) == 2
    again = run(
        "latent_flow.encode",
        [
            "data.dataset.num_samples=64",
            f"autoencoder.ckpt_path={export}",
            "shard_size=32",
            f"hydra.run.dir={tmp_path / 'enc_run2'}",
        ],
        tmp_path,
    )
    assert "encoded in" not in again.stdout  # cached: nothing encoded again


@pytest.mark.parametrize(
    "args, message",
    [
        (["optim.learning_rate=1"], "Key 'learning_rate' is not in struct"),
        (["backbone=dit_huge"], "Could not find 'backbone/dit_huge'"),
        (["data=image_folder", "data.dataset.root=/no/such/folder"], "/no/such/folder"),
        (["autoencoder.ckpt_path=/no/ae.pt", "autoencoder.train_if_missing=false"], "/no/ae.pt does not exist"),
    ],
)
def test_bad_input_messages(args, message, tmp_path):
    proc = run("latent_flow.train", args + ["logger=none"], tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
