"""What a training attempt writes into its run directory, and when: the deferred log file, the CSV log of a
resumed run, the record of each attempt (``attempts/<nnn>/``)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import yaml

from latent_flow.training.callbacks import InterruptedCheckpoint, MetricsJSONCallback, RunAttempt
from latent_flow.training.loggers import RunCSVLogger
from latent_flow.utils.logfiles import DeferredFileHandler, release_deferred_file_logs


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_deferred_log_file_is_written_only_once_writing_starts(tmp_path):
    path = tmp_path / "train.log"
    logger = logging.getLogger("test_run_directory.deferred")
    logger.propagate = False
    handler = DeferredFileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        logger.warning("before %d", 1)
        assert not path.exists() and not handler.writing
        assert release_deferred_file_logs(logger) == 1
        logger.warning("after")
        handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "direct", (), None))
        assert path.read_text().splitlines() == ["before 1", "after", "direct"]
    finally:
        logger.removeHandler(handler)
        handler.close()
    unused = DeferredFileHandler(tmp_path / "never.log")
    unused.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "held", (), None))
    unused.close()  # a run that failed before its first step: the records are dropped, no file
    assert not (tmp_path / "never.log").exists()


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_the_csv_log_of_a_resumed_run_keeps_every_step_once(tmp_path):
    metrics = tmp_path / "csv" / "metrics.csv"
    _write_csv(metrics, [{"epoch": 0, "step": s, "train/loss": 1.0 + s} for s in range(0, 10)])
    (tmp_path / "csv" / "hparams.yaml").write_text("lr: 0.001\n")
    before = _snapshot(tmp_path)

    failed = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    failed.log_hyperparams({"lr": 0.5})
    _ = failed.experiment  # Lightning creates the experiment at start-up
    failed.finalize("failed")  # a run that failed before its first step
    assert _snapshot(tmp_path) == before  # Lightning's CSVLogger deleted metrics.csv here

    resumed = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    resumed.log_hyperparams({"lr": 0.002})
    for step in (6, 7, 8):  # resumed from a checkpoint of step 6: steps 6.. are trained again
        resumed.log_metrics({"train/loss": 100.0 + step, "val/loss": 0.5}, step=step)
    resumed.save()
    resumed.log_metrics({"train/loss": 109.0}, step=9)
    resumed.finalize("success")
    with open(metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(10))  # every step exactly once
    assert [float(r["train/loss"]) for r in rows] == [1.0 + s for s in range(6)] + [106.0, 107.0, 108.0, 109.0]
    assert rows[0]["val/loss"] == "" and rows[6]["val/loss"] == "0.5"  # the columns merged
    assert yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text()) == {"lr": 0.002}


def test_a_run_resumed_into_its_pending_validation_keeps_the_training_row_of_that_step(tmp_path):
    """Interrupted after the training step of batch 39 and before the validation that follows it: the
    resumed attempt first runs that validation, logged at step 39 (Lightning's label of both), and then
    trains from step 40. The training row of step 39 is not trained again and stays; the validation row
    is replaced; later rows of the interrupted attempt go."""
    metrics = tmp_path / "csv" / "metrics.csv"
    old = [{"epoch": 0, "step": s, "train/loss": 1.0 + s} for s in range(0, 41)]
    old.insert(20, {"epoch": 0, "step": 19, "val/loss": 0.9})
    old.append({"epoch": 0, "step": 39, "val/loss": 0.8})  # a half-written validation, say
    _write_csv(metrics, old)
    resumed = RunCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    resumed.log_metrics({"val/loss": 0.7}, step=39)
    resumed.log_metrics({"train/loss": 140.0}, step=40)
    resumed.finalize("success")
    with open(metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [(int(r["step"]), float(r["train/loss"])) for r in rows if r["train/loss"]]
    assert train == [(s, 1.0 + s) for s in range(40)] + [(40, 140.0)]  # step 39 kept, step 40 replaced
    val = [(int(r["step"]), float(r["val/loss"])) for r in rows if r["val/loss"]]
    assert val == [(19, 0.9), (39, 0.7)]


def _trainer(step: int, **extra) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=True, callback_metrics={}, **extra)


def test_run_attempt_writes_nothing_before_the_first_step_then_records_the_attempt(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("backbone: old\n")  # a run directory of an earlier version
    (run / "metrics.json").write_text(json.dumps({"status": "interrupted (KeyboardInterrupt)", "global_step": 40}))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- backbone=old\n")
    before = _snapshot(run)

    failed = RunAttempt(run, config_yaml="backbone: new\n", overrides=["backbone=new"], ckpt_path="last.ckpt")
    metrics = MetricsJSONCallback(str(run / "metrics.json"))
    trainer = _trainer(40)
    for callback in (failed, metrics):
        callback.on_train_start(trainer, None)
        callback.on_exception(trainer, None, RuntimeError("before the first step"))
    metrics.on_train_end(trainer, None)
    failed.finish(trainer, "finished")
    assert not failed.started and _snapshot(run) == before

    attempt = RunAttempt(run, config_yaml="backbone: new\n", overrides=["backbone=new"], ckpt_path="last.ckpt")
    trainer = _trainer(40)
    attempt.on_train_start(trainer, None)
    trainer.global_step = 41
    attempt.on_train_batch_end(trainer, None, None, None, 0)
    assert attempt.started and attempt.number == 2
    first = json.loads((run / "attempts" / "001" / "status.json").read_text())
    assert first["status"] == "interrupted (KeyboardInterrupt)" and first["global_step"] == 40
    assert (run / "attempts" / "001" / "config.yaml").read_text() == "backbone: old\n"
    assert (run / "attempts" / "001" / "overrides.yaml").read_text() == "- backbone=old\n"
    assert (run / "attempts" / "002" / "config.yaml").read_text() == "backbone: new\n"
    assert yaml.safe_load((run / "attempts" / "002" / "overrides.yaml").read_text()) == ["backbone=new"]
    assert (run / "config.yaml").read_text() == "backbone: new\n"
    trainer.global_step = 45
    attempt.on_exception(trainer, None, KeyboardInterrupt())
    status = json.loads((run / "attempts" / "002" / "status.json").read_text())
    assert status["status"] == "interrupted (KeyboardInterrupt)" and (status["start_step"], status["global_step"]) == (
        40,
        45,
    )
    assert status["ckpt_path"] == "last.ckpt"


def test_interrupted_ckpt_is_written_only_when_the_attempt_trained(tmp_path):
    saved: list[str] = []
    callback = InterruptedCheckpoint(dirpath=str(tmp_path), filename="interrupted")
    trainer = _trainer(6, save_checkpoint=saved.append, strategy=SimpleNamespace(remove_checkpoint=saved.remove))
    callback.on_exception(trainer, None, RuntimeError())  # before on_train_start: a config error
    callback.on_train_start(trainer, None)
    callback.on_exception(trainer, None, RuntimeError())  # resumed at step 6, failed before step 7
    callback.teardown(trainer, None, "fit")  # and an earlier attempt's interrupted.ckpt is not removed
    assert saved == []
    trainer.global_step = 8
    callback.on_exception(trainer, None, KeyboardInterrupt())
    assert saved == [str(tmp_path / "interrupted.ckpt")]
