"""The W&B logger of a run directory (offline, no network): nothing written before the first logged
metrics, and a second attempt in the same directory continues the same W&B run id."""

from __future__ import annotations

import pytest

from latent_flow.training.loggers import WANDB_RUN_ID_FILE, RunWandbLogger, build_wandb_logger

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    yield
    if wandb.run is not None:
        wandb.finish()


def test_nothing_is_written_before_the_first_metrics_and_resume_keeps_the_run_id(tmp_path):
    run_dir = tmp_path / "run"
    first = build_wandb_logger(project="lf-test", name="a", save_dir=str(run_dir), mode="offline")
    first.log_hyperparams({"optim": {"lr": 0.1}})  # what Lightning does at start-up
    assert not run_dir.exists()  # a start that fails here leaves no W&B run and no folder
    assert not first.resumes

    first.log_metrics({"train/loss": 1.0}, step=1)
    assert (run_dir / "wandb" / WANDB_RUN_ID_FILE).read_text().strip() == first.version
    assert first.experiment.config["optim"] == {"lr": 0.1}  # the held hyper-parameters were sent
    first.experiment.finish()

    second = build_wandb_logger(project="lf-test", name="a", save_dir=str(run_dir), mode="offline")
    assert second.resumes and second.version == first.version
    second.log_metrics({"train/loss": 0.5}, step=2)
    second.experiment.finish()
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{first.version}") for name in runs)


def test_a_new_directory_gets_a_new_run_id(tmp_path):
    a = RunWandbLogger(save_dir=str(tmp_path / "a"), project="lf-test", offline=True)
    b = RunWandbLogger(save_dir=str(tmp_path / "b"), project="lf-test", offline=True)
    assert a.version != b.version and len(a.version) == 8
    assert RunWandbLogger.previous_run_id(tmp_path / "a") is None
