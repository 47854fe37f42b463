"""A run that fails before its first training step leaves its run directory byte for byte as it was (no
step-0 ``interrupted.ckpt``, no rewritten ``metrics.json`` / ``config.yaml`` / CSV log / log file); a resumed
run records each attempt; a damaged resume checkpoint is refused before anything runs. Real subprocesses
where Hydra's own writes matter (``python -m latent_flow.train ...``), in-process runs elsewhere."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]


def _train(run_dir: Path, cache: Path, extra: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LATENT_FLOW_CACHE": str(cache),
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",
    }
    args = TINY_TRAIN + [f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}", *extra]
    return subprocess.run(
        [sys.executable, "-m", "latent_flow.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (``None``) under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run (checkpoints at steps 3 and 6, last.ckpt = step 6) and its cache."""
    root = tmp_path_factory.mktemp("failed_resume")
    run, cache = root / "run", root / "cache"
    proc = _train(run, cache, [])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, cache


def test_a_config_error_on_resume_leaves_the_run_directory_byte_for_byte(trained):
    run, cache = trained
    before = _snapshot(run)
    assert "attempts/001/status.json" in before and "checkpoints/last.ckpt.xxh128" in before
    proc = _train(run, cache, ["backbone=dit_t2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert proc.returncode != 0 and "BackboneMismatchError" in proc.stderr
    after = _snapshot(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, b"?") != after.get(k, b"?"))
    assert not changed, f"the failed resume changed {changed}"
    assert "checkpoints/interrupted.ckpt" not in after


def test_a_fresh_run_that_fails_at_start_up_writes_nothing(trained, tmp_path, compose_cfg):
    """The warm-up / cosine check fails in configure_optimizers, after Lightning started (a multirun job with
    a bad schedule): no step-0 interrupted.ckpt, no metrics.json, no config.yaml, no CSV log."""
    from latent_flow.train import run_training

    _, cache = trained
    cfg = compose_cfg("train", TINY_TRAIN + ["optim.warmup_steps=100", f"paths.cache_dir={cache}"])
    with pytest.raises(ValueError, match="optim.cosine=true needs trainer.max_steps > optim.warmup_steps"):
        run_training(cfg)
    run = tmp_path / "run"
    assert not run.exists() or [p for p in run.rglob("*") if p.is_file()] == []


def test_a_damaged_resume_checkpoint_is_refused_before_the_stages(trained, tmp_path, compose_cfg):
    from latent_flow.train import run_training
    from latent_flow.training.checkpoints import CheckpointIntegrityError

    source, cache = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    last = run / "checkpoints" / "last.ckpt"
    with open(last, "r+b") as handle:  # 4 KiB of random bytes inside the tensor records
        handle.seek(last.stat().st_size // 2)
        handle.write(os.urandom(4096))
    before = _snapshot(run)
    cfg = compose_cfg("train", TINY_TRAIN + [f"ckpt_path={last}", f"paths.cache_dir={cache}"])
    with pytest.raises(CheckpointIntegrityError) as info:
        run_training(cfg)
    message = str(info.value)
    assert f"refusing checkpoint {last}: its XXH3-128" in message
    assert f"use ckpt_path={run / 'checkpoints' / 'step_0000006.ckpt'} instead" in message
    assert _snapshot(run) == before


def test_a_resume_into_the_same_directory_records_each_attempt_and_keeps_the_curve(trained, tmp_path, compose_cfg):
    from latent_flow.train import run_training

    source, cache = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    first = (run / "attempts" / "001" / "status.json").read_bytes()
    rows_before = list(csv.DictReader(open(run / "csv" / "metrics.csv", newline="")))
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    ckpt = run / "checkpoints" / "step_0000003.ckpt"  # steps 3.. are trained again
    cfg = compose_cfg("train", overrides + ["trainer.max_steps=9", f"ckpt_path={ckpt}", f"paths.cache_dir={cache}"])
    assert run_training(cfg)["global_step"] == 9
    assert (run / "attempts" / "001" / "status.json").read_bytes() == first
    second = json.loads((run / "attempts" / "002" / "status.json").read_text())
    assert (second["status"], second["start_step"], second["global_step"]) == ("finished", 3, 9)
    assert second["ckpt_path"] == str(ckpt)
    assert (run / "attempts" / "002" / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 9
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv", newline="")))
    kept = [r for r in rows_before if int(r["step"]) < 3]
    assert rows[: len(kept)] == kept  # the first attempt's rows before the resume step, unchanged
    keys = [(r["step"], tuple(sorted(k for k, v in r.items() if v and k not in ("epoch", "step")))) for r in rows]
    assert len(keys) == len(set(keys)), "a step logged twice"
    assert max(int(r["step"]) for r in rows) >= 8
