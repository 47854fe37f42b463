"""Exact resume: a run killed with SIGKILL and resumed from last.ckpt continues bit for bit like an uninterrupted one."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# 136 training items of batch 16: 8 batches per epoch (drop_last), so step 8 ends epoch 0 and step 4 is mid-epoch
RESUME_TRAIN = [
    "data.dataset.num_samples=139",  # 139 - round(0.02 * 139) = 136 training items
    "data.batch_size=16",
    "backbone=dit_xs2",
    "autoencoder.training.max_steps=2",
    "autoencoder.training.batch_size=16",
    "trainer.max_steps=12",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "samples.per_class=1",
    "sampler.steps=1",
    "callbacks.progress_bar.refresh_rate=0",
    "optim.warmup_steps=2",
    "seed=7",
]


def _train(run_dir: Path, tmp_path: Path, extra: list[str], expect_kill: bool = False) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "LATENT_FLOW_CACHE": str(tmp_path / "cache"),
        "HYDRA_FULL_ERROR": "1",
        "OMP_NUM_THREADS": "1",
    }
    args = RESUME_TRAIN + [f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}", *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "latent_flow.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if expect_kill:
        assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    elif proc.returncode != 0:
        raise AssertionError(f"training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _losses(run_dir: Path) -> dict[int, str]:
    """``{step: train/loss as written}`` of the run's CSV log (the exact decimal text)."""
    out: dict[int, str] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = row["train/loss"]
    return out


def _val_ema(run_dir: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("val/loss_ema"):
                out[int(row["step"])] = row["val/loss_ema"]
    return out


def test_sigkill_and_resume_from_last_ckpt_is_bit_exact(tmp_path):
    """Two kills (mid-epoch and at an epoch's end), each resumed into the same run directory from last.ckpt."""
    straight = tmp_path / "straight"
    _train(straight, tmp_path, [])  # also trains the autoencoder and fills the latent cache (the others reuse them)
    reference = _losses(straight)
    assert sorted(reference) == list(range(12))  # train/loss of every step (CSV "step" = global_step - 1)

    broken = tmp_path / "broken"
    last = broken / "checkpoints" / "last.ckpt"
    # killed during step 6 (last.ckpt holds step 4, mid-epoch 0), resumed, killed during step 10
    # (last.ckpt holds step 8 = the end of epoch 0), resumed to the end
    _train(
        broken,
        tmp_path,
        ["+callbacks.kill._target_=resume_helpers.SigkillMidStep", "+callbacks.kill.step=6"],
        expect_kill=True,
    )
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    _train(
        broken,
        tmp_path,
        [f"ckpt_path={last}", "+callbacks.kill._target_=resume_helpers.SigkillMidStep", "+callbacks.kill.step=10"],
        expect_kill=True,
    )
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 8
    _train(broken, tmp_path, [f"ckpt_path={last}"])

    resumed = _losses(broken)
    assert resumed and all(resumed[s] == reference[s] for s in resumed), {
        s: (resumed[s], reference[s]) for s in resumed if resumed[s] != reference[s]
    }
    # the CSV keeps the curve of every attempt, each step once (a resumed attempt replaces the rows of the steps
    # it trains again): the whole curve of the uninterrupted run
    assert sorted(resumed) == sorted(reference) == list(range(12))
    with open(broken / "csv" / "metrics.csv") as f:
        assert sum(1 for row in csv.DictReader(f) if row.get("train/loss")) == 12
    # every checkpoint of the interrupted run (step 4: first part, 8: after one resume, 12: after two) holds the
    # weights, EMA and optimizer state of the uninterrupted run's, bit for bit
    for step in (4, 8, 12):
        a = torch.load(straight / "checkpoints" / f"step_{step:07d}.ckpt", map_location="cpu", weights_only=False)
        b = torch.load(broken / "checkpoints" / f"step_{step:07d}.ckpt", map_location="cpu", weights_only=False)
        assert a["global_step"] == b["global_step"] == step
        different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
        assert not different, f"step {step}: weights differ after the resume: {different[:5]}"
        for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert a["LatentDataModule"] == b["LatentDataModule"]  # the data position
        ra, rb = a["rng_states"]["per_rank"][0], b["rng_states"]["per_rank"][0]
        assert torch.equal(ra["torch"], rb["torch"])
    assert b["LatentDataModule"]["train_sampler"]["epoch"] == 1  # 8 batches per epoch: step 12 is in epoch 1
    assert _val_ema(broken)[11] == _val_ema(straight)[11]  # val/loss_ema at step 12


def test_sigterm_interrupted_ckpt_resumes_bit_exact(compose_cfg, tmp_path, monkeypatch):
    """SIGTERM after step 5 (mid-epoch): interrupted.ckpt holds the RNG states and data position; resumed, the run
    ends with the uninterrupted run's weights (in-process runs, like tests/integration/test_train_pipeline.py)."""
    import signal

    from lightning.pytorch.callbacks import Callback

    import latent_flow.cli.run as train_mod
    from conftest import TINY_TRAIN
    from latent_flow.train import run_training

    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=8"]
    straight = run_training(compose_cfg("train", overrides, tmp_path / "a"))
    assert straight["global_step"] == 8
    cache = [f"paths.cache_dir={tmp_path / 'a' / 'cache'}"]

    class SigtermAtStep(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                os.kill(os.getpid(), signal.SIGTERM)

    original = train_mod.instantiate_callbacks
    monkeypatch.setattr(train_mod, "instantiate_callbacks", lambda c: original(c) + [SigtermAtStep()])
    try:
        run_training(compose_cfg("train", overrides + cache, tmp_path / "b"))
    except BaseException as error:  # Lightning raises SIGTERMException (a SystemExit)
        assert "SIGTERM" in type(error).__name__
    monkeypatch.setattr(train_mod, "instantiate_callbacks", original)
    interrupted = tmp_path / "b" / "run" / "checkpoints" / "interrupted.ckpt"
    state = torch.load(interrupted, map_location="cpu", weights_only=False)
    assert state["global_step"] == 5 and sorted(state["rng_states"]["per_rank"]) == [0]
    assert state["LatentDataModule"]["train_sampler"]["consumed"] == 5 * 32  # 7 batches per epoch: mid-epoch 0
    resumed = run_training(compose_cfg("train", overrides + cache + [f"ckpt_path={interrupted}"], tmp_path / "c"))
    assert resumed["global_step"] == 8
    a = torch.load(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "c" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"weights differ after resuming interrupted.ckpt: {different[:5]}"
