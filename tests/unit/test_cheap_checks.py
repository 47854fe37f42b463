"""#30 item 3: every cheap check before expensive work, skipped inputs counted and reported, floors at the
score's own sample counts."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from latent_flow.cli import train as train_cli
from latent_flow.cli.evaluate import load_image_folder
from latent_flow.data.datamodule import report_split
from latent_flow.data.image_folder import ImageFolderDataset
from latent_flow.evaluation import oracle as oracle_mod
from latent_flow.training.lr_schedule import check_schedule


# ------------------------------------------------------------------ optimiser schedule, before any stage
@pytest.mark.parametrize(
    ("optim", "max_steps", "message"),
    [
        ({"lr": 0.0}, 100, "optim.lr must be a positive finite number, got 0.0"),
        ({"lr": -1e-3}, 100, "positive finite"),
        ({"lr": math.nan}, 100, "positive finite"),
        ({"lr": "fast"}, 100, "optim.lr must be a number, got 'fast'"),
        ({"lr": 1e-3, "warmup_steps": -5}, 100, "warmup_steps must be >= 0"),
        ({"lr": 1e-3, "warmup_steps": 200, "cosine": True}, 20, "max_steps=20, warmup_steps=200"),
        ({"lr": 1e-3, "cosine": True}, -1, "max_steps=None"),
        ({"lr": 1e-3, "min_lr_ratio": 1.5}, 100, "min_lr_ratio must be in"),
    ],
)
def test_check_schedule_refuses_with_the_key(optim, max_steps, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_schedule(optim, max_steps)


def test_check_schedule_accepts_the_shipped_recipes():
    check_schedule({"lr": 2e-3, "warmup_steps": 200, "cosine": False}, -1)  # a max_time budget
    check_schedule({"lr": 1e-3, "warmup_steps": 100, "cosine": True, "min_lr_ratio": 0.1}, 2200)


def test_a_bad_schedule_is_refused_before_the_autoencoder_stage(compose_cfg, monkeypatch, tmp_path):
    """The quick start trains an autoencoder first: a cosine schedule shorter than its warm-up used to be
    refused only when Lightning built the optimizer, minutes later."""
    cfg = compose_cfg("train", ["trainer.max_steps=20", "optim.cosine=true", "optim.warmup_steps=100"])

    def stage_ran(*args, **kwargs):
        raise AssertionError("the autoencoder stage ran before the config was checked")

    monkeypatch.setattr(train_cli, "ensure_autoencoder", stage_ran)
    with pytest.raises(ValueError, match="optim.cosine=true needs trainer.max_steps > optim.warmup_steps"):
        train_cli.run_training(cfg)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ------------------------------------------------------------------ inputs that are skipped are reported
def _png(path, size=(16, 16), value=100):
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_images_dir_skips_unreadable_files_and_reports_them(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", value=40 * i)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    skipped: list[str] = []
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\) of 4 \(scored 3\): broken.png"):
        arr = load_image_folder(tmp_path, skipped=skipped)
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
    assert len(skipped) == 1 and skipped[0].startswith("broken.png: ")
    with pytest.raises(ValueError, match=r"1 of 4 file\(s\) .* cannot be read \(images_strict=true\):\n  broken.png"):
        load_image_folder(tmp_path, strict=True)


def test_images_dir_with_no_readable_file_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no file could be read"):
        load_image_folder(tmp_path)


def test_upscaled_images_are_counted_and_named(tmp_path):
    _png(tmp_path / "big.png", size=(64, 48))
    _png(tmp_path / "tiny.png", size=(1, 1))
    _png(tmp_path / "narrow.png", size=(100, 20))
    with pytest.warns(UserWarning, match=r"2 of 3 image\(s\) .* smaller than 32x32 .*narrow.png \(100x20\), tiny.png"):
        data = ImageFolderDataset(tmp_path, resolution=32)
    assert sorted(p.name for p in data.upscaled_files) == ["narrow.png", "tiny.png"]
    assert data.num_resized == 3
    (tmp_path / "tiny.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to report: every image's shorter side is >= 20
        assert ImageFolderDataset(tmp_path, resolution=20).upscaled_files == []


def test_split_report_warns_without_validation_set_or_a_full_batch(caplog):
    with caplog.at_level(logging.WARNING, logger="latent_flow.data.datamodule"):
        report_split(9, 0, 0.0, 64)
    text = caplog.text
    assert "no validation set (val_fraction=0.0 of 9 items)" in text
    assert "9 training item(s), fewer than one batch of 64" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latent_flow.data.datamodule"):
        report_split(900, 18, 0.02, 64)
    assert caplog.text == ""


# ------------------------------------------------------------------ floors at the score's sample counts
def test_fd_shapes_floor_uses_the_scores_set_sizes(monkeypatch):
    sizes = []
    monkeypatch.setattr(oracle_mod, "real_images", lambda n, resolution, seed: sizes.append(n) or n)
    monkeypatch.setattr(oracle_mod, "fd_shapes", lambda oracle, a, b: float(a + b))
    assert oracle_mod.fd_shapes_floor(object(), n=200, resolution=32, n_reference=1000) == 1200.0
    assert sizes == [200, 1000]
    assert oracle_mod.fd_shapes_floor(object(), n=200, resolution=32) == 400.0  # default: equal sizes


# ------------------------------------------------------------------ resume: backbone before any stage
def test_a_resume_with_another_backbone_is_refused_before_the_stages(compose_cfg, monkeypatch, tmp_path):
    from latent_flow.training.module import BackboneMismatchError
    from latent_flow.utils.checkpoint_files import save_checkpoint_file

    cfg = compose_cfg("train", ["backbone=dit_t2"])
    saved = {"backbone": {"name": "UNet-XS", "grad_checkpointing": False}, "condition": dict(cfg.condition)}
    ckpt = tmp_path / "old" / "last.ckpt"
    save_checkpoint_file({"hyper_parameters": saved, "state_dict": {}, "global_step": 40}, ckpt)
    cfg.ckpt_path = str(ckpt)

    def stage_ran(*args, **kwargs):
        raise AssertionError("the autoencoder stage ran before the resume was checked")

    monkeypatch.setattr(train_cli, "ensure_autoencoder", stage_ran)
    with pytest.raises(BackboneMismatchError, match=r"was written with backbone=\{'name': 'UNet-XS'"):
        train_cli.run_training(cfg)
