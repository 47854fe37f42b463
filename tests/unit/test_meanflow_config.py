"""The flow-map configs compose: ``objective=meanflow`` from scratch and converted (``init_from=``), and
``sampler=flowmap`` for ``sample`` / ``evaluate``; the composed training config builds a flow-map module."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from latent_flow.cli.run import bare_module
from latent_flow.sampling import FlowMapSolver, build_solver
from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.config import to_plain


def _module(cfg) -> LatentFlowModule:
    cfg.data.dataset.num_samples = 8
    dataset = instantiate(cfg.data.dataset)
    return bare_module(cfg, (2, 16, 16), dataset.num_classes)  # kl_shapes_f2 on 32 px shapes


def test_the_default_objective_is_flow_matching(compose_cfg):
    cfg = compose_cfg("train", [])
    assert cfg.objective.name == "flow" and cfg.init_from is None
    assert not _module(cfg).is_flow_map


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=shapes_unet", "objective=meanflow"],
        ["+experiment=shapes_unet", "objective=meanflow", "init_from=/runs/flow/checkpoints/last.ckpt"],
    ],
    ids=["from_scratch", "converted"],
)
def test_meanflow_composes_and_builds_a_flow_map(overrides, compose_cfg):
    cfg = compose_cfg("train", overrides + ["objective.cfg_scale=2.0"])
    objective = to_plain(cfg.objective)
    assert objective == {
        "name": "meanflow",
        "distinct_fraction": 0.25,
        "time_sampler": None,
        "weight_power": 1.0,
        "weight_eps": 1e-3,
        "cfg_scale": 2.0,
        "cfg_kappa": 0.0,
        "velocity": "path",
        "target": "jvp",
        "teacher_steps": 10,
        "grid_fraction": 0.0,
        "grid_steps": [1, 2, 4],
        "grid_shift": 1.0,
        "dmd_weight": 0.0,
        "dmd_times": [0.02, 0.98],
        "dmd_steps": [1],
        "dmd_fake_lr_scale": 1.0,
        "gan_weight": 0.0,
        "gan_discriminator_weight": 1.0,
        "gan_times": [0.5, 0.98],
        "shortcut_velocity_below": 1 / 128,
        "shortcut_ode_from": None,
        "ode_start": "path",
    }
    assert cfg.init_from == (overrides[-1].split("=", 1)[1] if "init_from" in overrides[-1] else None)
    module = _module(cfg)
    assert module.is_flow_map and module.objective.cfg_scale == 2.0
    # the pairs' times come from the experiment's path (logit-normal toward noise)
    assert module.objective.pairs.time_sampler is module.time_sampler
    assert module.time_sampler.mean == OmegaConf.select(cfg, "path.time_sampler.mean")
    x = torch.randn(2, 2, 16, 16)
    module.eval()
    out = module.flow_map(x, torch.zeros(2), torch.ones(2), {"label": torch.tensor([0, 1])})
    assert out.shape == x.shape


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_the_flowmap_sampler_composes(command, compose_cfg):
    cfg = compose_cfg(command, ["ckpt_path=x", "sampler=flowmap", "sampler.steps=2"])
    sampler = to_plain(cfg.sampler)
    assert sampler == {"name": "flowmap", "steps": 2, "time_grid": "uniform", "shift": 1.0}
    solver = build_solver(**sampler)
    assert isinstance(solver, FlowMapSolver) and solver.expected_nfe == 2


def test_distillation_without_a_teacher_is_refused_before_any_stage(compose_cfg, tmp_path):
    """``objective.velocity=teacher`` needs the flow to distil (``init_from=``); refused before anything runs."""
    from latent_flow.cli.train import run_training

    cfg = compose_cfg("train", ["objective=meanflow", "objective.velocity=teacher", f"paths.cache_dir={tmp_path}/c"])
    with pytest.raises(ValueError, match=r"objective.velocity=teacher .*init_from=<flow .ckpt>"):
        run_training(cfg)
    assert not any((tmp_path / "c").glob("*"))  # no autoencoder / cache stage ran


@pytest.mark.parametrize("scale", [None, 1.0])
def test_a_from_scratch_flow_map_with_the_default_time_scale_is_warned_about(scale, compose_cfg, monkeypatch, caplog):
    import latent_flow.cli.train as train_cli

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(train_cli, "Attempt", stop)  # the first thing after the checks: nothing runs
    extra = [] if scale is None else [f"+backbone.time_scale={scale}"]
    cfg = compose_cfg("train", ["objective=meanflow", *extra])
    with caplog.at_level("WARNING", logger="latent_flow.cli.train"), pytest.raises(Stop):
        train_cli.run_training(cfg)
    warned = [r.getMessage() for r in caplog.records if "backbone.time_scale" in r.getMessage()]
    if scale is None:
        assert (
            len(warned) == 1 and "backbone.time_scale=1000.0" in warned[0] and "+backbone.time_scale=1.0" in warned[0]
        )
    else:
        assert not warned
    # converting a flow checkpoint keeps the checkpoint's scale: no warning
    caplog.clear()
    cfg = compose_cfg("train", ["objective=meanflow", "init_from=/runs/flow.ckpt"])
    with caplog.at_level("WARNING", logger="latent_flow.cli.train"), pytest.raises(Stop):
        train_cli.run_training(cfg)
    assert not [r for r in caplog.records if "backbone.time_scale" in r.getMessage()]
