"""Issue #27 item 1: FlowTurbo on emoji end to end on tiny settings. A tiny emoji base (the emoji64_taef2
experiment on real OpenMoji SVGs at 32 px, pixel space: no autoencoder weights needed), a 3-step refiner by
+experiment=emoji64_refiner, then experiments/emoji_flowturbo/measure.py (Heun, FlowTurbo, dopri5 and
autoguidance; FID / KID in the 4x4-pixel feature space instead of Inception) writes its scores, latencies,
table and plot, and resumes without sampling again."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, compose
from latent_flow.data.emoji import find_openmoji_svg_dir, prepare_emoji

RES = 32
ROOT = Path(__file__).resolve().parents[2]
SVGS = [f"1F6{k:02X}" for k in range(0x00, 0x18)] + ["1F44B-1F3FD", "1F442-1F3FD", "1F9D1-1F3FF-200D-1F9B2"]


def _load_measure():
    spec = importlib.util.spec_from_file_location("emoji_ft_measure", ROOT / "experiments/emoji_flowturbo/measure.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _data_overrides(root: Path, svg_dir: Path) -> list[str]:
    return [
        f"data.dataset.root={root}",
        f"+data.dataset.source_paths.openmoji={svg_dir}",
        f"data.dataset.resolution={RES}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "trainer.accelerator=cpu",
        "trainer.limit_val_batches=1",
        "callbacks.progress_bar.refresh_rate=0",
        "optim.warmup_steps=1",
    ]


def test_refiner_experiment_composes_from_the_emoji_base(compose_cfg):
    base = compose_cfg("train", ["+experiment=emoji64_taef2"])
    cfg = compose_cfg("train", ["+experiment=emoji64_refiner", "base_ckpt_path=some.ckpt"])
    assert cfg.task_name == "emoji64_refiner" and cfg.base_ckpt_path == "some.ckpt"
    # the base's data as it was trained (flips, design split), the refiner's own recipe and step budget
    assert cfg.data == base.data and cfg.refiner.time_offset.max == 0.12 and cfg.refiner.label_dropout == 0.1
    assert cfg.trainer.max_steps == 1500 and cfg.trainer.max_time is None
    assert "posthoc_ema" not in cfg.callbacks and cfg.callbacks.get("sample_grid") is None
    assert cfg.callbacks.model_checkpoint.every_n_train_steps == cfg.trainer.val_check_interval


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny emoji base (6 steps, a checkpoint at step 3 for autoguidance), its refiner and pixel reference stats."""
    from latent_flow.reference_stats import run_reference_stats
    from latent_flow.train import run_training

    installed, _ = find_openmoji_svg_dir()
    svg_dir = tmp_path_factory.mktemp("svgs")
    for name in SVGS:
        shutil.copy(installed / f"{name}.svg", svg_dir / f"{name}.svg")
    root = tmp_path_factory.mktemp("emoji")
    prepare_emoji(root, ["openmoji"], RES, source_paths={"openmoji": svg_dir}, progress=False)
    tmp = tmp_path_factory.mktemp("emoji_flowturbo")
    data = _data_overrides(root, svg_dir)
    kept = [o for o in TINY_TRAIN if o.startswith(("trainer.max_steps", "trainer.val_check_interval", "samples."))]
    base_cfg = compose(
        "train",
        [
            "+experiment=emoji64_taef2",
            *kept,
            *data,
            "autoencoder=pixel_s2d",
            "backbone=dit_xs2",
            "trainer.max_time=null",
            "callbacks.model_checkpoint.train_time_interval=null",
            "callbacks.model_checkpoint.every_n_train_steps=3",
            "samples.max_rows=2",
        ],  # fmt: skip
        tmp / "base",
    )
    run_training(base_cfg)
    ckpts = Path(base_cfg.paths.output_dir) / "checkpoints"
    refiner_cfg = compose(
        "train",
        [
            "+experiment=emoji64_refiner",
            f"base_ckpt_path={ckpts / 'last.ckpt'}",
            f"paths.cache_dir={tmp / 'base' / 'cache'}",
            *data,
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        ],  # fmt: skip
        tmp / "refiner",
    )
    summary = run_training(refiner_cfg)
    ref_dir = tmp / "reference"
    run_reference_stats(
        compose(
            "reference_stats",
            [
                "data=emoji",
                *data[:3],
                "data.dataset.split=train",
                "split=all",
                "feature_extractor=pixels",
                f"out_dir={ref_dir}",
            ],  # fmt: skip
            tmp / "ref_run",
        )
    )
    return {
        "base": ckpts / "last.ckpt",
        "guide": ckpts / "step_0000003.ckpt",
        "refiner": Path(refiner_cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        "refiner_summary": summary,
        "reference": ref_dir,
        "tmp": tmp,
    }


def test_measure_scores_and_times_every_setting_and_resumes(tiny_runs, tmp_path, monkeypatch):
    summary = tiny_runs["refiner_summary"]
    assert summary["status"] == "finished" and summary["global_step"] == 3
    assert summary["refiner_parameter_percent"] > 0
    measure = _load_measure()
    out = tmp_path / "measure"
    argv = [
        "--ckpt", str(tiny_runs["base"]), "--refiner", str(tiny_runs["refiner"]), "--guide", str(tiny_runs["guide"]),
        "--reference", str(tiny_runs["reference"]), "--out", str(out), "--num-samples", "6", "--batch-size", "6",
        "--heun", "1,2,3", "--turbo", "H1P1R1,H1P2R2", "--dopri5-tol", "1e-2", "--autoguidance-steps", "2",
        "--latency-batch", "4", "--rounds", "2", "--override", "feature_extractor=pixels",
    ]  # fmt: skip
    results = measure.main(argv)
    names = ["heun1", "heun2", "heun3", "flowturbo_H1P1R1", "flowturbo_H1P2R2", "dopri5", "autoguidance3_heun2"]
    assert [r["name"] for r in results["rows"]] == names
    saved = json.loads((out / "results.json").read_text())
    for name in names:
        sc, lt = saved["scores"][name], saved["latency"]["ms_per_image"][name]
        assert sc["fid"] > 0 and sc["kid"] is not None and sc["num_samples"] == 6
        assert (out / "fid" / name / "metrics.json").exists() and len(
            list((out / "fid" / name / "images").glob("*.png"))
        ) == 6
        assert lt["best"] > 0 and lt["best"] <= lt["median"]
        assert len(lt["rounds"]) == (1 if name == "dopri5" else 2)  # dopri5: --dopri5-rounds 1
    # NFE as each sampler counts it: Heun 2 per step; FlowTurbo H1P2R2 = 2 + 2 base and 2 x 2 refiner calls
    assert saved["scores"]["heun3"]["base_nfe"] == 6 and saved["scores"]["flowturbo_H1P2R2"]["base_nfe"] == 4
    assert saved["scores"]["flowturbo_H1P2R2"]["refiner_nfe"] == 4
    assert saved["scores"]["autoguidance3_heun2"]["guide_nfe"] == 4
    assert saved["latency"]["batch"] == 4 and saved["latency"]["threads"] == torch.get_num_threads()
    # matched-FID entries for each FlowTurbo and autoguidance setting; the table and the plot
    assert [m["name"] for m in saved["matched"]] == names[3:5] + names[6:]
    table = (out / "table.md").read_text()
    assert all(f"| {r['kind']} | {r['label']} |" in table for r in saved["rows"])
    assert (out / "fid_vs_latency.png").stat().st_size > 1000

    # resumable: nothing is sampled or timed again
    def fail(*args, **kwargs):
        raise AssertionError("a scored setting was sampled again")

    monkeypatch.setattr(measure, "run_evaluation", fail)
    monkeypatch.setattr(measure, "time_settings", fail)
    again = measure.main(argv)
    assert again["scores"] == results["scores"] and again["latency"] == results["latency"]


def test_measure_refuses_bad_input(tiny_runs, tmp_path):
    measure = _load_measure()
    common = ["--ckpt", str(tiny_runs["base"]), "--reference", str(tiny_runs["reference"]), "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="need --refiner"):
        measure.main(common + ["--turbo", "H1P5R3"])
    with pytest.raises(SystemExit, match="comma-separated integers"):
        measure.main(common + ["--turbo", "", "--heun", "5,x"])
    with pytest.raises(SystemExit, match="does not exist"):
        measure.main(common + ["--refiner", str(tmp_path / "missing.ckpt")])
