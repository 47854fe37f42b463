"""FlowTurbo end to end on a CPU: train a refiner for a tiny base, sample / evaluate with it, wrong base fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN

#: the data settings of TINY_TRAIN (a refiner trains on its base's data) and a 3-step refiner run
TINY_REFINER = [
    "data.dataset.num_samples=256",
    "data.batch_size=32",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "optim.warmup_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture(scope="module")
def refiner_run(tmp_path_factory):
    """A tiny base run (DiT-XS/2) and a 3-step refiner run for it, shared by this module's tests."""
    from conftest import compose
    from latent_flow.train import run_training

    root = tmp_path_factory.mktemp("flowturbo")
    run_training(compose("train", TINY_TRAIN, root / "base"))
    base_ckpt = root / "base" / "run" / "checkpoints" / "last.ckpt"
    cfg = compose(
        "train",
        ["+experiment=shapes_refiner", f"base_ckpt_path={base_ckpt}", f"paths.cache_dir={root / 'base' / 'cache'}"]
        + TINY_REFINER,
        root / "refiner",
    )
    summary = run_training(cfg)
    return root, base_ckpt, root / "refiner" / "run" / "checkpoints" / "last.ckpt", summary


def _other_base(base_ckpt: Path, tmp_path: Path) -> Path:
    """The same architecture with different EMA weights (another training run, as far as a refiner can tell)."""
    ckpt = torch.load(base_ckpt, map_location="cpu", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("ema.module.") and k.endswith("weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
    path = tmp_path / "other_base.ckpt"
    torch.save(ckpt, path)
    return path


def test_refiner_training_writes_a_checkpoint_that_names_its_base(refiner_run):
    _, base_ckpt, refiner_ckpt, summary = refiner_run
    assert summary["global_step"] == 3 and summary["status"] == "finished"
    saved = torch.load(refiner_ckpt, map_location="cpu", weights_only=False)
    hp = saved["hyper_parameters"]
    assert hp["base_ckpt_path"] == str(base_ckpt.resolve()) and len(hp["base_hash"]) == 40
    # the refiner sees the latent and the base velocity: twice the base's latent channels
    base_channels = torch.load(base_ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["latent_shape"][0]
    assert hp["refiner_spec"]["family"] == "dit" and hp["refiner_spec"]["in_channels"] == 2 * base_channels
    assert 0 < hp["parameter_ratio"] < 1
    # the base is not part of the refiner checkpoint; the refiner and its EMA are
    keys = saved["state_dict"].keys()
    assert keys and all(k.startswith(("refiner.", "ema.")) for k in keys)
    metrics = json.loads((refiner_ckpt.parents[1] / "metrics.json").read_text())
    assert metrics["refiner_parameter_percent"] == pytest.approx(100 * hp["parameter_ratio"], abs=0.01)
    assert {"val/loss", "val/loss_carry"} <= set(metrics["metrics"])


def test_sample_with_flowturbo_writes_files_and_separate_nfe(refiner_run, compose_cfg):
    from latent_flow.sample import run_sampling

    _, base_ckpt, refiner_ckpt, _ = refiner_run
    cfg = compose_cfg(
        "sample",
        [
            f"ckpt_path={base_ckpt}",
            "num_samples=4",
            "batch_size=2",
            "sampler=flowturbo",
            "sampler.schedule=H1P2R2",
            f"sampler.refiner_ckpt_path={refiner_ckpt}",
            "cfg_scale=2.0",
        ],
    )
    summary = run_sampling(cfg)
    out = Path(cfg.out_dir)
    assert (out / "grid.png").exists() and len(list((out / "images").glob("*.png"))) == 4
    saved = json.loads((out / "summary.json").read_text())
    assert saved["base_nfe_per_sample"] == 4 == summary["nfe_per_sample"]  # H: 2, P: 1 each
    assert saved["refiner_nfe_per_sample"] == 4  # R: 2 each
    assert saved["sampler"]["schedule"] == "H1P2R2"


def test_evaluate_with_flowturbo_reports_both_nfe(refiner_run, compose_cfg):
    from latent_flow.evaluate import run_evaluation

    _, base_ckpt, refiner_ckpt, _ = refiner_run
    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={base_ckpt}",
            "num_samples=3",
            "batch_size=3",
            "sampler=flowturbo",
            "sampler.schedule=H1R1",
            f"sampler.refiner_ckpt_path={refiner_ckpt}",
            "metrics=[]",
        ],
    )
    summary = run_evaluation(cfg)
    assert (summary["base_nfe_per_sample"], summary["refiner_nfe_per_sample"]) == (2, 2)
    saved = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    assert saved["refiner_nfe_per_sample"] == 2
    # FlowTurbo runs its own networks, not the model's guided velocity: no row count rather than a wrong 0
    assert "model_rows_per_sample" not in saved


def test_refiner_with_another_base_fails_clearly(refiner_run, tmp_path, compose_cfg):
    from latent_flow.api import generate, load_model
    from latent_flow.flowturbo import RefinerBaseMismatchError
    from latent_flow.train import run_training

    root, base_ckpt, refiner_ckpt, _ = refiner_run
    other = _other_base(base_ckpt, tmp_path)
    model = load_model(other, device="cpu")
    with pytest.raises(RefinerBaseMismatchError, match="was trained for the base .*last.ckpt"):
        generate(model, num_samples=1, sampler="flowturbo", refiner_ckpt_path=str(refiner_ckpt), labels=[0])
    # resuming the refiner run with another base fails too
    cfg = compose_cfg(
        "train",
        [
            "+experiment=shapes_refiner",
            f"base_ckpt_path={other}",
            f"ckpt_path={refiner_ckpt}",
            f"paths.cache_dir={root / 'base' / 'cache'}",
        ]
        + TINY_REFINER,
    )
    with pytest.raises(RefinerBaseMismatchError, match="resume with the base_ckpt_path"):
        run_training(cfg)


def test_flowturbo_options_are_validated(refiner_run):
    from latent_flow.api import generate, load_model

    _, base_ckpt, _, _ = refiner_run
    model = load_model(base_ckpt, device="cpu")
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['steps'\\] for sampler 'flowturbo'"):
        generate(model, num_samples=1, sampler="flowturbo", steps=4, labels=[0])
    with pytest.raises(ValueError, match="set sampler.refiner_ckpt_path"):
        generate(model, num_samples=1, sampler="flowturbo", schedule="H1R2", labels=[0])
    with pytest.raises(ValueError, match="use_ema=false is not supported"):
        generate(model, num_samples=1, sampler="flowturbo", schedule="H2", use_ema=False, labels=[0])
    images, result = generate(model, num_samples=2, sampler="flowturbo", schedule="H1P3", labels=[0, 1])
    assert images.shape == (2, 3, 32, 32) and (result.base_nfe, result.refiner_nfe) == (5, 0)


def test_refiner_training_resumes(refiner_run, compose_cfg):
    from latent_flow.train import run_training

    root, base_ckpt, refiner_ckpt, _ = refiner_run
    overrides = [o for o in TINY_REFINER if not o.startswith("trainer.max_steps")]
    cfg = compose_cfg(
        "train",
        [
            "+experiment=shapes_refiner",
            f"base_ckpt_path={base_ckpt}",
            f"ckpt_path={refiner_ckpt}",
            f"paths.cache_dir={root / 'base' / 'cache'}",
            "trainer.max_steps=5",
        ]
        + overrides,
    )
    assert run_training(cfg)["global_step"] == 5


def test_build_model_solver_dispatches(refiner_run):
    from latent_flow.api import load_model
    from latent_flow.flowturbo import FlowTurboSolver
    from latent_flow.generation import build_model_solver
    from latent_flow.sampling import HeunSolver

    _, base_ckpt, refiner_ckpt, _ = refiner_run
    model = load_model(base_ckpt, device="cpu")
    assert isinstance(build_model_solver(model, "heun", steps=3), HeunSolver)
    solver = build_model_solver(model, "flowturbo", schedule="H1R2", refiner_ckpt_path=str(refiner_ckpt))
    assert isinstance(solver, FlowTurboSolver) and solver.expected_nfe == 2
    result = model.sample_latents(solver, indices=[0, 1], labels=torch.tensor([0, 1]), cfg_scale=1.5)
    assert (result.base_nfe, result.refiner_nfe) == (2, 4)


def test_refiner_experiments_compose(compose_cfg):
    for name, data in (("shapes_refiner", "shapes"), ("imagenet_dit_refiner", "imagenet256")):
        cfg = compose_cfg("train", [f"+experiment={name}", "base_ckpt_path=x.ckpt"])
        assert cfg.task_name == name and cfg.data.name == data
        assert cfg.refiner.time_offset.max == 0.12 and cfg.refiner.label_dropout == 0.1
        assert cfg.callbacks.get("sample_grid") is None and "model_checkpoint" in cfg.callbacks  # null: removed
    assert compose_cfg("train", ["+experiment=imagenet_dit_refiner"]).optim.lr == 5e-5


def test_refiner_experiment_without_base_fails_clearly(compose_cfg):
    from latent_flow.train import run_training

    cfg = compose_cfg("train", ["+experiment=shapes_refiner"])  # base_ckpt_path is mandatory (???)
    with pytest.raises(ValueError, match="refiner training needs the flow checkpoint it refines"):
        run_training(cfg)
