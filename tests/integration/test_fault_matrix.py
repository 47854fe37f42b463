"""The fault matrix (#30 item 4): real subprocesses killed (SIGKILL) or interrupted (SIGINT) in each
stage that writes something, and the damaged-input cases. For each: the work resumes or is refused with
a clear message, and nothing written before the fault is lost or altered (files compared byte for byte
before and after).

=================================  ==========  ==================================================
stage                               fault       expected
=================================  ==========  ==================================================
autoencoder training (quick start)  SIGKILL     no autoencoder file cached, run dir untouched;
                                                rerun trains it and finishes
latent-cache encoding               SIGKILL     finished chunks kept byte for byte; rerun resumes
flow training                       SIGINT      interrupted.ckpt (+ .xxh128); resume into the same
                                                directory finishes, earlier step checkpoints and
                                                CSV rows kept, each step logged once
flow training                       SIGKILL     every step checkpoint intact (atomic saves);
                                                resume from last.ckpt finishes
evaluate                            SIGKILL     images written so far kept byte for byte; rerun
                                                resumes and scores
reference_stats                     SIGKILL     finished chunks kept; rerun resumes, the statistics
                                                equal an uninterrupted run's
resume                              config err  refused, run dir byte for byte (test_failed_resume)
sample                              corrupted   refused naming the file, no output written
sample                              truncated   refused as truncated
multirun (2 jobs, 1 bad)            bad lr      the good job finishes, the bad one is refused
                                                before writing anything
=================================  ==========  ==================================================

The heaviest cases are ``slow`` (``make test-slow``); the fast ones run in the default suite.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def _cmd(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", f"latent_flow.{module}", *args]


def _run(module: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(module, args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _run_until(module: str, args: list[str], ready, sig: int, timeout: float = 900) -> subprocess.Popen:
    """Start ``latent_flow.<module>``, wait until ``ready()`` is true, send ``sig``, wait for the exit.

    The limits are generous: on a loaded 2-core machine a tiny run's start-up alone can take minutes."""
    proc = subprocess.Popen(
        _cmd(module, args),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started as a background job (nohup ... &) ignores SIGINT, and so would the child: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"latent_flow.{module} ended (rc {proc.returncode}) before the fault: {proc.stderr.read()[-2000:]}"
                )
            if time.time() > deadline:
                pytest.fail(f"latent_flow.{module} did not reach the fault point in {timeout} s")
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=600)  # an interrupted run still writes its checkpoint and status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def _snapshot(root: Path, pattern: str = "*") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern)) if p.is_file()}


def _kept(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Files of ``before`` that are gone or changed in ``after``."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


def _train_args(run: Path, cache: Path, extra: list[str]) -> list[str]:
    return TINY_TRAIN + [f"hydra.run.dir={run}", f"paths.cache_dir={cache}", *extra]


# ----------------------------------------------------------------------------------- flow training
# the faulted attempt is long (it must still be training when the signal comes, however the machine is
# loaded); the resumed one stops 40 steps after the step it resumes from
FLOW = ["trainer.max_steps=100000", "trainer.val_check_interval=20", "samples.every_n_steps=100000"]


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """A cache holding the tiny autoencoder and latent cache (a finished 6-step run made them)."""
    root = tmp_path_factory.mktemp("fault_cache")
    proc = _run("train", _train_args(root / "warm", root / "cache", []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "cache"


def _steps_in_csv(run: Path) -> list[int]:
    """The steps of the CSV log's training-loss rows (validation rows share steps with them)."""
    with open(run / "csv" / "metrics.csv", newline="") as handle:
        return [int(float(r["step"])) for r in csv.DictReader(handle) if r.get("train/loss")]


def test_sigint_in_flow_training_resumes_into_the_same_directory(warm_cache, tmp_path):
    run = tmp_path / "run"
    args = _train_args(run, warm_cache, FLOW)
    proc = _run_until("train", args, lambda: len(list((run / "checkpoints").glob("step_*.ckpt"))) >= 2, signal.SIGINT)
    assert proc.returncode != 0, "the run ended normally: the signal came too late"
    interrupted = run / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file() and (run / "checkpoints" / "interrupted.ckpt.xxh128").is_file()
    status = json.loads((run / "attempts" / "001" / "status.json").read_text())
    assert status["status"].startswith("interrupted")
    before = _snapshot(run / "checkpoints", "step_*")
    rows_before = _steps_in_csv(run)

    end = status["global_step"] + 40
    done = _run("train", [*args, f"ckpt_path={interrupted}", f"trainer.max_steps={end}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _kept(before, _snapshot(run / "checkpoints", "step_*")), "earlier step checkpoints changed"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == end and metrics["status"] == "finished"
    steps = _steps_in_csv(run)
    assert len(steps) == len(set(steps)), "a step was logged twice"
    assert set(rows_before) - {s for s in rows_before if s >= status["global_step"]} <= set(steps)
    assert sorted(p.name for p in (run / "attempts").iterdir()) == ["001", "002"]


@pytest.mark.slow
def test_sigkill_in_flow_training_leaves_intact_checkpoints(warm_cache, tmp_path):
    from latent_flow.training.checkpoints import checkpoint_problem

    run = tmp_path / "run"
    args = _train_args(run, warm_cache, FLOW)
    _run_until("train", args, lambda: len(list((run / "checkpoints").glob("step_*.ckpt"))) >= 3, signal.SIGKILL)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(checkpoint_problem(p) is None for p in ckpts), "a checkpoint was left half-written"
    before = _snapshot(run / "checkpoints", "step_*")
    import torch

    end = int(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]) + 40
    done = _run("train", [*args, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"trainer.max_steps={end}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _kept(before, _snapshot(run / "checkpoints", "step_*"))
    assert json.loads((run / "metrics.json").read_text())["global_step"] == end


# ----------------------------------------------------------------------------------- autoencoder and cache
@pytest.mark.slow
def test_sigkill_in_autoencoder_training_caches_nothing_and_the_rerun_finishes(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = _train_args(run, cache, ["autoencoder.training.max_steps=100000"])
    # the autoencoder's Lightning trainer logs nothing to disk: wait until its process has run for a while
    start = time.time()
    _run_until("train", args, lambda: time.time() - start > 25, signal.SIGKILL)
    assert not list((cache / "autoencoders").glob("*.pt")) if (cache / "autoencoders").exists() else True
    assert not run.exists() or not [p for p in run.rglob("*") if p.is_file()], "the run directory was written"
    done = _run("train", _train_args(run, cache, []))
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((cache / "autoencoders").glob("*.pt"))) == 1


@pytest.mark.slow
def test_sigkill_in_latent_cache_encoding_keeps_finished_chunks(warm_cache, tmp_path):
    cache = tmp_path / "cache"
    (cache / "autoencoders").mkdir(parents=True)
    for ae in (warm_cache / "autoencoders").iterdir():  # the tiny autoencoder, so the encoding is the stage hit
        (cache / "autoencoders" / ae.name).write_bytes(ae.read_bytes())
    run = tmp_path / "run"
    big = [a for a in _train_args(run, cache, []) if not a.startswith("data.dataset.num_samples")]
    big.append("data.dataset.num_samples=20000")
    _run_until("train", big, lambda: len(list(cache.rglob("shard_*.labels.npy"))) >= 1, signal.SIGKILL)
    complete = {p.name.split(".")[0] for p in cache.rglob("shard_*.labels.npy")}  # a shard ends with its labels
    before = {k: v for k, v in _snapshot(cache, "shard_*").items() if Path(k).name.split(".")[0] in complete}
    assert before, "no finished shard before the kill"
    done = _run("train", big)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _kept(before, _snapshot(cache, "shard_*")), "finished latent-cache shards were rewritten"


# ----------------------------------------------------------------------------------- evaluate, reference_stats
@pytest.fixture(scope="module")
def tiny_ckpt(warm_cache) -> Path:
    return warm_cache.parent / "warm" / "checkpoints" / "last.ckpt"


def _evaluate_args(ckpt: Path, out: Path, cache: Path) -> list[str]:
    return [
        f"ckpt_path={ckpt}",
        f"out_dir={out}",
        f"hydra.run.dir={out}",
        f"paths.cache_dir={cache}",
        "num_samples=300",
        "batch_size=10",
        "sampler.steps=4",
        "metrics=[label_accuracy]",
    ]


@pytest.mark.slow
def test_sigkill_in_evaluate_keeps_the_images_and_resumes(tiny_ckpt, warm_cache, tmp_path):
    out = tmp_path / "eval"
    args = _evaluate_args(tiny_ckpt, out, warm_cache)
    _run_until("evaluate", args, lambda: len(list((out / "images").glob("*.png"))) >= 40, signal.SIGKILL)
    before = _snapshot(out / "images")
    assert 40 <= len(before) < 300
    done = _run("evaluate", args)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _snapshot(out / "images")
    assert not _kept(before, after) and len(after) == 300
    assert "label_accuracy" in json.loads((out / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_sigkill_in_reference_stats_resumes_to_the_same_statistics(warm_cache, tmp_path):
    def args(out: Path) -> list[str]:
        return [
            f"out_dir={out}",
            f"hydra.run.dir={out}",
            f"paths.cache_dir={warm_cache}",
            "data.dataset.num_samples=6000",
            "split=all",
            "chunk_size=300",
            "save_images=false",
            "feature_extractor=shapes_oracle",
        ]

    out = tmp_path / "ref"
    _run_until("reference_stats", args(out), lambda: len(list((out / "parts").glob("*.npz"))) >= 2, signal.SIGKILL)
    before = _snapshot(out / "parts")
    done = _run("reference_stats", args(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not _kept(before, _snapshot(out / "parts"))
    clean = _run("reference_stats", args(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    a, b = np.load(out / "stats.npz"), np.load(tmp_path / "clean" / "stats.npz")
    np.testing.assert_array_equal(a["mu"], b["mu"])
    np.testing.assert_array_equal(a["sigma"], b["sigma"])


# ----------------------------------------------------------------------------------- damaged inputs, multirun
@pytest.mark.parametrize("damage", ["corrupted", pytest.param("truncated", marks=pytest.mark.slow)])
def test_sample_refuses_a_damaged_checkpoint_and_writes_nothing(tiny_ckpt, tmp_path, damage):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    data = bytearray(tiny_ckpt.read_bytes())
    (tmp_path / "checkpoints" / "last.ckpt.xxh128").write_bytes((tiny_ckpt.parent / "last.ckpt.xxh128").read_bytes())
    if damage == "corrupted":
        data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)
    else:
        data = data[: len(data) // 2]
    ckpt.write_bytes(bytes(data))
    out = tmp_path / "samples"
    proc = _run("sample", [f"ckpt_path={ckpt}", f"out_dir={out}", f"hydra.run.dir={out}", "num_samples=4"])
    assert proc.returncode != 0
    assert "CheckpointIntegrityError" in proc.stderr and str(ckpt) in proc.stderr
    assert ("truncated" in proc.stderr) == (damage == "truncated") or damage == "truncated"
    assert not out.exists() or not list(out.rglob("*.png"))


@pytest.mark.slow
def test_a_multirun_with_one_bad_job_keeps_the_good_one(warm_cache, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run(
        "train",
        [
            "-m",
            *TINY_TRAIN,
            f"paths.cache_dir={warm_cache}",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}",
            "optim.lr=1e-3,-1",
        ],
    )
    assert proc.returncode != 0 and "optim.lr must be a positive finite number, got -1" in proc.stderr
    good = json.loads((sweep / "0" / "metrics.json").read_text())
    assert good["status"] == "finished" and good["global_step"] == 6
    bad = sweep / "1"
    assert not bad.exists() or not [p for p in bad.rglob("*") if p.is_file() and ".hydra" not in p.parts]
