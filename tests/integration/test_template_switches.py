"""The lightning-hydra-template switches: extras, tags, debug=overfit|profiler|limit, trainer=ddp_sim|mps, the
Rich / LearningRateMonitor / EarlyStopping callback entries, and plain progress lines when stdout is no terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)

from conftest import TINY_TRAIN
from latent_flow.cli.extras import apply_extras
from latent_flow.cli.run import build_trainer, instantiate_callbacks, instantiate_loggers
from latent_flow.training.progress import ProgressBar, format_progress_line

ROOT = Path(__file__).resolve().parents[2]
DEBUG_CONFIGS = ["default", "fdr", "overfit", "profiler", "limit"]


# ------------------------------------------------------------------ composition
@pytest.mark.parametrize("name", DEBUG_CONFIGS)
def test_every_debug_config_is_a_debug_run(name, compose_cfg):
    cfg = compose_cfg("train", [f"debug={name}"])
    assert cfg.task_name == "debug" and cfg.logger is None and cfg.trainer.detect_anomaly is True
    assert instantiate_loggers(cfg.logger) == []
    assert cfg.extras.enforce_tags is False and cfg.extras.ignore_warnings is False
    own = {
        "fdr": {"fast_dev_run": True},
        "overfit": {"overfit_batches": 3},
        "limit": {"limit_train_batches": 4, "limit_val_batches": 2, "max_epochs": 3},
    }.get(name, {})
    for key, value in own.items():
        assert cfg.trainer[key] == value
    if name == "profiler":
        assert cfg.trainer.profiler._target_.endswith("SimpleProfiler") and cfg.trainer.profiler.filename == "profile"
    assert cfg.optim.warmup_steps < cfg.trainer.max_steps  # the cosine schedule can run


def test_ddp_sim_is_two_cpu_processes_over_gloo(compose_cfg):
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    cfg = compose_cfg("train", ["trainer=ddp_sim"])
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy.process_group_backend == "gloo"
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 2
    assert trainer.precision == "bf16-mixed"  # the quick start's recipe (bf16 autocast on the CPU too)
    assert compose_cfg("train", ["trainer=ddp_sim", "~recipe"]).trainer.precision == "32-true"
    assert compose_cfg("train", ["trainer=ddp_sim", "trainer.devices=3"]).trainer.devices == 3


def test_mps_trainer_composes(compose_cfg):
    cfg = compose_cfg("train", ["trainer=mps", "~recipe"])  # the quick start's recipe would ask for bf16-mixed
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("mps", 1, "32-true")
    assert cfg.trainer.max_steps == compose_cfg("train", ["~recipe"]).trainer.max_steps  # the default trainer otherwise


def test_rich_progress_bar_and_model_summary_replace_the_default_bar(compose_cfg):
    kept = instantiate_callbacks(compose_cfg("train", []).callbacks)
    assert sum(isinstance(c, TQDMProgressBar) for c in kept) == 1
    rich = instantiate_callbacks(compose_cfg("train", ["callbacks=[default,rich_progress_bar]"]).callbacks)
    assert not any(isinstance(c, TQDMProgressBar) for c in rich)
    assert sum(isinstance(c, RichProgressBar) for c in rich) == 1 and any(isinstance(c, RichModelSummary) for c in rich)
    assert len(rich) == len(kept) + 1  # the other defaults stay
    # Lightning accepts the set (one progress bar, one summary)
    build_trainer(compose_cfg("train", ["callbacks=[default,rich_progress_bar]"]), callbacks=rich, loggers=[])


@pytest.mark.parametrize("base", ["default", "eval_fid"])
def test_lr_monitor_and_early_stopping_can_be_switched_on(base, compose_cfg):
    plain = instantiate_callbacks(compose_cfg("train", [f"callbacks={base}"]).callbacks)
    assert not any(isinstance(c, (LearningRateMonitor, EarlyStopping)) for c in plain)
    cfg = compose_cfg("train", [f"callbacks=[{base},lr_monitor,early_stopping]", "callbacks.early_stopping.patience=5"])
    callbacks = instantiate_callbacks(cfg.callbacks)
    (stop,) = [c for c in callbacks if isinstance(c, EarlyStopping)]
    assert stop.monitor == "val/loss_ema" and stop.patience == 5 and stop.mode == "min"
    assert any(isinstance(c, LearningRateMonitor) for c in callbacks)
    assert len(callbacks) == len(plain) + 2 and any(isinstance(c, ModelCheckpoint) for c in callbacks)


# ------------------------------------------------------------------ extras and tags
def test_tags_are_part_of_the_config_and_the_wandb_tags(compose_cfg):
    assert list(compose_cfg("train", []).tags) == []
    cfg = compose_cfg("train", ["tags=[ablation,vp]", "logger=many"])
    assert list(cfg.tags) == ["ablation", "vp"] and list(cfg.logger.wandb.tags) == ["ablation", "vp"]


def test_enforce_tags_refuses_a_run_without_tags(compose_cfg):
    with pytest.raises(ValueError, match=r"enforce_tags=true and this run has no tags.*tags=\["):
        apply_extras(compose_cfg("train", ["extras.enforce_tags=true"]))
    apply_extras(compose_cfg("train", ["extras.enforce_tags=true", "tags=[baseline]"]))


def test_ignore_warnings_silences_python_warnings(compose_cfg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_extras(compose_cfg("train", []))
        warnings.warn("shown", UserWarning, stacklevel=1)
        apply_extras(compose_cfg("train", ["extras.ignore_warnings=true"]))
        warnings.warn("hidden", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown"]


def test_print_config_prints_the_resolved_tree_and_nothing_by_default(compose_cfg, tmp_path):
    quiet = io.StringIO()
    apply_extras(compose_cfg("train", []), file=quiet)
    assert quiet.getvalue() == ""
    out = io.StringIO()
    apply_extras(compose_cfg("train", ["extras.print_config=true", "tags=[smoke]", "backbone=dit_xs2"]), file=out)
    text = out.getvalue()
    assert text.startswith("CONFIG") and "├── data" in text and "DiT-XS/2" in text
    groups = [line.split("── ")[1] for line in text.splitlines() if line[:4] in ("├── ", "└── ")]
    assert groups[:3] == ["data", "condition", "backbone"] and groups[-1] == "(top level)"
    assert str(tmp_path / "run") in text  # resolved: paths.output_dir as the run writes it
    assert "- smoke" in text


# ------------------------------------------------------------------ plain progress lines
class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> torch.utils.data.DataLoader:
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _fit(tmp_path, bar: ProgressBar) -> str:
    """Fit the toy module for 12 steps with ``bar``; the text of the ``latent_flow.progress`` lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("latent_flow.progress")
    logger.addHandler(handler)
    # an earlier in-process Hydra run may have configured logging with disable_existing_loggers, a higher level
    # (whose answer Logger.isEnabledFor caches: setLevel clears that cache, assigning .level does not) or a
    # process-wide logging.disable
    old_level, old_disabled, old_disable = logger.level, logger.disabled, logging.root.manager.disable
    logger.setLevel(logging.INFO)
    logger.disabled = False
    logging.disable(logging.NOTSET)
    try:
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=12,
            val_check_interval=6,
            limit_val_batches=2,
            callbacks=[bar],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(_Regression(), train_dataloaders=_loader(), val_dataloaders=_loader())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.disabled = old_disabled
        logging.disable(old_disable)
    return stream.getvalue()


def test_plain_lines_every_n_steps_after_validations_and_at_the_end(tmp_path, capsys):
    text = _fit(tmp_path, ProgressBar(refresh_rate=1, every_n_steps=4, every_n_seconds=None, plain=True))
    lines = text.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == ["step 4/12 (33.3%)", "step 8/12 (66.7%)", "step 12/12 (100.0%)"]
    assert all("train/loss " in line and " it/s" in line and "elapsed 0:00:" in line for line in steps)
    assert sum(line.startswith("validation at step ") and "val/loss " in line for line in lines) == 2
    assert lines[-1].startswith("done: step 12/12 (100.0%)") and "eta" not in lines[-1]
    assert "\r" not in text and "\r" not in capsys.readouterr().out  # no bar drawn either
    # refresh_rate=0 turns the lines off too; on a terminal the bar draws and no line is written
    assert _fit(tmp_path, ProgressBar(refresh_rate=0, every_n_steps=1, plain=True)) == ""
    assert _fit(tmp_path, ProgressBar(refresh_rate=1, every_n_steps=1, plain=False)) == ""


def test_plain_is_chosen_when_stdout_is_no_terminal(monkeypatch):
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(sys, "stdout", Stream(False))
    assert ProgressBar().plain is True and ProgressBar(plain=False).plain is False
    monkeypatch.setattr(sys, "stdout", Stream(True))
    assert ProgressBar().plain is False and ProgressBar().is_enabled
    with pytest.raises(ValueError, match="every_n_steps"):
        ProgressBar(every_n_steps=0)


def test_progress_line_format():
    line = format_progress_line(50, 200, {"train/loss": 0.123456, "v_num": 3}, rate=5.0, elapsed=10.0)
    assert line == "step 50/200 (25.0%) | train/loss 0.1235 | 5 it/s | elapsed 0:00:10 | eta 0:00:30"
    assert format_progress_line(7, None, {}, rate=None, elapsed=61.0) == "step 7 | elapsed 0:01:01"


# ------------------------------------------------------------------ the switches, run
def test_debug_limit_with_tags_and_print_config_as_a_command_writing_to_a_file(tmp_path):
    """``python -m latent_flow.train debug=limit extras.print_config=true tags=[smoke] > file``: the tree, plain
    progress lines (not a tqdm bar of carriage returns), a debug run with no logger, the tags recorded."""
    overrides = [o for o in TINY_TRAIN if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    overrides = [o for o in overrides if not o.startswith(("callbacks.progress_bar", "trainer.limit_val_batches"))]
    run_dir = tmp_path / "run"
    env = {**os.environ, "LATENT_FLOW_ROOT": str(tmp_path), "LATENT_FLOW_CACHE": str(tmp_path / "cache")}
    env.update({"WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"})
    log_file = tmp_path / "train.out"
    with open(log_file, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "latent_flow.train", *overrides, "debug=limit", "extras.print_config=true"]
            + [
                "tags=[smoke,limit]",
                "callbacks.progress_bar.every_n_steps=4",
                "callbacks.progress_bar.every_n_seconds=null",
            ]
            + [f"hydra.run.dir={run_dir}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    text = log_file.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and max(map(len, text.splitlines())) < 1000
    assert "├── trainer" in text and "limit_train_batches: 4" in text
    lines = text.splitlines()
    steps = [line.split("step ", 1)[1].split(" |")[0] for line in lines if "] - step " in line]
    assert steps == ["4/12 (33.3%)", "8/12 (66.7%)", "12/12 (100.0%)"], text[-3000:]
    tree_start = next(i for i, line in enumerate(lines) if line.strip() == "CONFIG")
    assert tree_start < min(i for i, line in enumerate(lines) if "] - step " in line)
    assert "├── logger" in text  # null in a debug run, shown as such
    # the flow run's lines (an autoencoder trained first for the empty cache writes its own)
    flow = text[text.index("attempt 1 of run") :]
    assert "done: step 12/12" in flow and flow.count("validation at step") == 3
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["tags"] == ["smoke", "limit"] and config["task_name"] == "debug" and config["logger"] is None
    assert not (run_dir / "csv").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 12  # 3 epochs of 4 batches


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_debug_overfit_trains_on_the_same_few_batches(compose_cfg, shared_cache, tmp_path):
    from latent_flow.train import run_training

    overrides = TINY_TRAIN + ["debug=overfit", "trainer.overfit_batches=2", f"paths.cache_dir={shared_cache}"]
    summary = run_training(compose_cfg("train", overrides))
    assert summary["global_step"] == 6 and summary["status"] == "finished"
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history["global_step"] == 6 and not (tmp_path / "run" / "csv").exists()  # no logger


def test_debug_profiler_reports_the_hooks(compose_cfg, shared_cache, tmp_path):
    from latent_flow.train import run_training

    summary = run_training(compose_cfg("train", TINY_TRAIN + ["debug=profiler", f"paths.cache_dir={shared_cache}"]))
    assert summary["global_step"] == 6
    report = (tmp_path / "run" / "fit-profile.txt").read_text()
    assert "Profiler Report" in report and "run_training_batch" in report and "optimizer_step" in report
