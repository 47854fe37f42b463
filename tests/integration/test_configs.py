"""Every config composes and instantiates; bad overrides fail with Hydra's clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from latent_flow.cli.run import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (Path(CONFIG_DIR) / "backbone").glob("*.yaml"))
SMALL_BACKBONES = ["dit_xs2", "dit_t1", "dit_t2", "unet_t", "unet_s"]
# experiments with their own compose-and-instantiate tests: spatial conditions need masks / maps in the
# batch (tests/integration/test_spatial_configs.py), refiners need a base checkpoint
# (tests/integration/test_flowturbo_cli.py)
# composed and trained by their own tests (test_spatial_configs / test_spatial_train; emoji: test_emoji_spatial)
SPATIAL_EXPERIMENTS = {
    "shapes_inpaint",
    "shapes_semantic",
    "celebahq_inpaint",
    "celebamask_semantic",
    "emoji64_inpaint",
    "emoji64_semantic",
    "emoji64_semantic_label",
}
REFINER_EXPERIMENTS = {e for e in EXPERIMENTS if e.endswith("_refiner")}
# latent attribute classifiers compose for latent_flow.train_classifier, not train (test_emoji_compositional)
CLASSIFIER_EXPERIMENTS = {e for e in EXPERIMENTS if e.endswith("_classifier")}
GENERIC_EXPERIMENTS = sorted(set(EXPERIMENTS) - SPATIAL_EXPERIMENTS - REFINER_EXPERIMENTS - CLASSIFIER_EXPERIMENTS)


def _module_from_cfg(cfg, num_samples: int = 8):
    """Instantiate dataset, autoencoder (fresh weights) and the LightningModule of a composed config."""
    from hydra.utils import instantiate

    from latent_flow.autoencoders import build_autoencoder
    from latent_flow.training.module import LatentFlowModule

    cfg.data.dataset.num_samples = num_samples
    dataset = instantiate(cfg.data.dataset)
    ae_cfg = OmegaConf.to_container(cfg.autoencoder, resolve=True)
    spec = {"name": ae_cfg["name"], **ae_cfg.get("config", {})}
    if ae_cfg["name"] == "identity":
        spec["space_to_depth"] = ae_cfg["space_to_depth"]
    if ae_cfg["name"] == "taesd":  # pretrained weights (tested in test_pretrained_autoencoders): shape only
        res = cfg.data.resolution
        latent_shape = (int(ae_cfg["latent_channels"]), res // 8, res // 8)
    else:
        latent_shape = build_autoencoder(spec).latent_shape(cfg.data.resolution)
    module = LatentFlowModule(
        backbone=cfg.backbone,
        condition=cfg.condition,
        path=cfg.path,
        optim=cfg.optim,
        ema=cfg.ema,
        latent_shape=latent_shape,
        num_classes=dataset.num_classes,
        autoencoder=None,
    )
    return dataset, module, latent_shape


def test_experiments_exist():
    assert {"shapes_dit", "shapes_unet", "shapes_uncond", "shapes_pixel", "shapes_vp"} <= set(EXPERIMENTS)


PAPER_EXPERIMENTS = {
    # name: (reference FID in the experiment file's header, backbone preset, conditional)
    "celeba256_dit": ("5.26", "DiT-L/2", False),
    "ffhq_dit": ("4.55", "DiT-L/2", False),
    "bedroom_dit": ("4.92", "DiT-L/2", False),
    "church_dit": ("5.54", "DiT-L/2", False),
    "imagenet_dit": ("4.46", "DiT-B/2", True),
    "celeba256_adm": ("5.67", "UNet-L", False),
    "ffhq_adm": ("6.12", "UNet-L", False),
    "bedroom_adm": ("7.05", "UNet-L", False),
    "church_adm": ("7.70", "UNet-L", False),
    "imagenet_adm": ("8.58", "UNet-L", True),
    "celeba512_adm": ("6.35", "UNet-L", False),
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_is_covered_by_the_right_test(experiment, compose_cfg):
    """A new spatial or refiner experiment must not slip through the generic test's exclusions."""
    full = compose_cfg("train", [f"+experiment={experiment}"])
    assert (full.condition.name in ("inpaint", "semantic", "inpaint_label", "semantic_label")) == (
        experiment in SPATIAL_EXPERIMENTS
    )
    assert ("refiner" in full) == (experiment in REFINER_EXPERIMENTS)
    if full.condition.name == "none":  # the training grids cannot guide an unconditional model
        assert full.samples.cfg_scale == 1.0


@pytest.mark.parametrize("experiment", GENERIC_EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, compose_cfg):
    full = compose_cfg("train", [f"+experiment={experiment}"])
    assert full.task_name == experiment
    overrides = [f"+experiment={experiment}"]
    if experiment in PAPER_EXPERIMENTS:
        fid, preset, conditional = PAPER_EXPERIMENTS[experiment]
        assert full.backbone.name == preset
        assert full.autoencoder.name == "diffusers_kl" and full.sampler.name == "dopri5"
        assert full.ema.decay == 0.9999 and full.path.scheduler.sigma_min == 1e-5
        assert full.condition.name == ("label" if conditional else "none")
        if conditional:
            assert full.condition.label_dropout == 0.1 and full.samples.cfg_scale > 1
        text = (Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml").read_text()
        assert f"Reference FID (LFM README, its own protocol): {fid}" in text
        # instantiate with tiny stand-ins: an untrained factor-8 KL autoencoder on rendered data of the
        # experiment's resolution and a tiny backbone of the same family
        tiny = "unet_t" if preset.startswith("UNet") else "dit_xs2"
        overrides += [
            "data=shapes",
            f"data.dataset.resolution={full.data.dataset.resolution}",
            "autoencoder=kl_shapes",
            "autoencoder.config.channel_mult=[1,2,2,2]",
            f"backbone={tiny}",
        ]
        if "root:" in text:  # the experiment itself sets a data root
            overrides.append("~data.dataset.root")
    elif experiment.startswith("emoji64_"):  # the study's arms: real configs, data rendered as 64 px shapes
        assert full.data.name == "emoji" and full.data.flip and full.trainer.max_time == "00:00:30:00"
        assert full.backbone.name in ("DiT-T/1", "DiT-T/2")
        assert full.condition.name == ("none" if experiment == "emoji64_uncond" else "label")
        overrides += ["data=shapes", "data.dataset.resolution=64"]
    else:
        overrides.append("backbone=dit_xs2")
    cfg = compose_cfg("train", overrides)
    _, module, latent_shape = _module_from_cfg(cfg)
    if experiment in PAPER_EXPERIMENTS:
        assert latent_shape == (4, full.data.dataset.resolution // 8, full.data.dataset.resolution // 8)
    if experiment.startswith("emoji64_"):  # every arm: 64 tokens of DiT-T
        patch = int(full.backbone.name[-1])
        assert latent_shape[1] // patch * latent_shape[2] // patch == 64
    batch = 2
    x = torch.randn(batch, *latent_shape)
    cond = module.condition.from_batch({"label": torch.zeros(batch, dtype=torch.long)})
    module.eval()
    out = module.velocity(x, torch.rand(batch), cond)
    assert out.shape == x.shape


@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
def test_small_backbones_train_a_step(backbone, compose_cfg):
    cfg = compose_cfg("train", [f"backbone={backbone}"])
    _, module, latent_shape = _module_from_cfg(cfg)
    batch = {"latent": torch.randn(4, *latent_shape), "label": torch.tensor([0, 1, 2, 3])}
    loss = module._loss(batch, use_ema=False)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in module.backbone.parameters() if p.grad is not None]
    assert grads  # gradients reach the backbone


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_config_names_a_preset(name, compose_cfg):
    from latent_flow.backbones import BACKBONE_PRESETS

    cfg = compose_cfg("train", [f"backbone={name}"])
    assert cfg.backbone.name in BACKBONE_PRESETS


@pytest.mark.parametrize(
    "config_name, overrides",
    [
        ("train", ["debug=default"]),
        ("train", ["debug=fdr"]),
        ("train", ["logger=wandb"]),
        ("train", ["callbacks=eval_shapes"]),
        ("train", ["logger=many"]),
        ("train", ["trainer=ddp"]),
        ("train", ["trainer=gpu"]),
        ("train", ["path=vp"]),
        ("train", ["path=condot_logitnormal"]),
        ("train", ["sampler=dopri5"]),
        ("train", ["data=image_folder", "data.dataset.root=/tmp"]),
        ("train", ["hparams_search=optuna"]),
        ("train_autoencoder", []),
        ("encode", []),
        ("sample", ["ckpt_path=x.ckpt"]),
        ("evaluate", ["ckpt_path=x.ckpt", "sampler=dopri5"]),
    ],
)
def test_other_configs_compose(config_name, overrides, compose_cfg):
    cfg = compose_cfg(config_name, overrides)
    OmegaConf.to_container(cfg, resolve=False)


def test_logit_normal_path_resolves(compose_cfg):
    cfg = compose_cfg("train", ["path=condot_logitnormal"])
    assert cfg.path.time_sampler.name == "logit_normal" and cfg.path.scheduler.name == "condot"


def test_unknown_key_is_rejected_with_its_name(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="optim.learning_rate"):
        compose_cfg("train", ["optim.learning_rate=0.1"])


def test_unknown_group_option_lists_the_valid_ones(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="backbone/dit_huge") as info:
        compose_cfg("train", ["backbone=dit_huge"])
    assert "dit_t2" in str(info.value)


def test_wrong_preset_name_fails_clearly(compose_cfg):
    cfg = compose_cfg("train", ["backbone.name=DiT-Q/3"])
    with pytest.raises(ValueError, match="DiT-Q/3"):
        _module_from_cfg(cfg)


# ------------------------------------------------------------------ configs composed, not copied
# (not PAPER_EXPERIMENTS: that name is the table above, which the generic test reads at run time)
ON_PAPER_BASE = sorted(
    e for e in EXPERIMENTS if "base/paper" in (Path(CONFIG_DIR) / "experiment" / f"{e}.yaml").read_text()
)


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides)


def _flat(node, prefix=""):
    """``{"a.b": leaf}`` of a plain nested dict."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_paper_experiments_share_one_base():
    assert ON_PAPER_BASE == sorted(PAPER_EXPERIMENTS), ON_PAPER_BASE


@pytest.mark.parametrize("name", ON_PAPER_BASE)
def test_a_paper_experiment_states_only_what_differs_from_its_base(name):
    """Every value an experiment file sets differs from what base/paper already composes to."""
    import yaml

    own = yaml.safe_load((Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text())
    own_defaults = own.pop("defaults")
    own.pop("task_name")
    base_cfg = compose_train(["+experiment=base/paper"])
    restated = [k for k, v in _flat(own).items() if OmegaConf.select(base_cfg, k) == v]
    assert not restated, f"{name}.yaml restates what base/paper gives: {restated}"
    base_groups = yaml.safe_load((Path(CONFIG_DIR) / "experiment" / "base" / "paper.yaml").read_text())["defaults"]
    assert not set(map(str, own_defaults)) & set(map(str, base_groups)), (
        f"{name}.yaml repeats a group choice of base/paper"
    )


def test_guidance_defaults_live_in_one_group_and_overrides_still_work():
    from hydra import compose, initialize_config_dir

    for key in ("cfg_scale:", "cfg_interval:"):
        for name in ("sample.yaml", "evaluate.yaml"):
            assert not any(line.startswith(key) for line in (Path(CONFIG_DIR) / name).read_text().splitlines())
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("sample", ["ckpt_path=x", "cfg_scale=2.0", "cfg_interval=[0.3,1.0]"])
        assert cfg.cfg_scale == 2.0 and list(cfg.cfg_interval) == [0.3, 1.0] and cfg.guide_ckpt_path is None
        plain = compose("evaluate", ["ckpt_path=x"])
        assert plain.cfg_scale == 1.0 and plain.cfg_interval is None
        auto = compose("evaluate", ["ckpt_path=x", "guidance=autoguidance"])
        assert OmegaConf.is_missing(auto, "guide_ckpt_path") and auto.cfg_scale == 2.0


def test_null_removes_a_callback_or_a_logger_entry(tmp_path):
    from latent_flow.cli.run import instantiate_callbacks, instantiate_loggers
    from latent_flow.training.callbacks import SampleGridCallback

    cfg = compose_train([f"paths.output_dir={tmp_path}"])
    kept = instantiate_callbacks(cfg.callbacks)
    assert any(isinstance(c, SampleGridCallback) for c in kept)
    cfg = compose_train([f"paths.output_dir={tmp_path}", "callbacks.sample_grid=null"])
    removed = instantiate_callbacks(cfg.callbacks)
    assert not any(isinstance(c, SampleGridCallback) for c in removed) and len(removed) == len(kept) - 1
    both = compose_train([f"paths.output_dir={tmp_path}", "logger=many"])
    assert len(instantiate_loggers(both.logger)) == 2
    one = compose_train([f"paths.output_dir={tmp_path}", "logger=many", "logger.wandb=null"])
    (logger,) = instantiate_loggers(one.logger)
    assert type(logger).__name__ == "RunCSVLogger"  # a CSVLogger that keeps a resumed run's rows
    with pytest.raises(ValueError, match="callbacks.broken has no _target_"):
        instantiate_callbacks(OmegaConf.create({"broken": {"every_n_steps": 3}}))


@pytest.mark.parametrize("refiner", sorted(REFINER_EXPERIMENTS))
def test_refiner_callbacks_are_the_defaults_without_the_sample_grid(refiner):
    cfg = compose_train([f"+experiment={refiner}", "base_ckpt_path=x"])
    plain = compose_train([])
    # a key set to null is the callback's default, as an absent one (emoji64_refiner nulls the base experiment's
    # train_time_interval)
    prune = lambda tree: {k: prune(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None}  # noqa: E731
    callbacks = OmegaConf.to_container(cfg.callbacks)
    assert callbacks.pop("sample_grid") is None
    callbacks = prune(callbacks)
    expected = prune(OmegaConf.to_container(plain.callbacks))
    expected.pop("sample_grid")
    assert callbacks == expected and set(callbacks) == {
        "model_checkpoint",
        "on_exception",
        "metrics_json",
        "progress_bar",
    }


# the quick start's recipe (conf/recipe/quickstart.yaml) is for the quick start and the experiments that are
# the quick start with one change; every other experiment states its own settings and must not inherit it
QUICKSTART_RECIPE_EXPERIMENTS = {"shapes_unet", "shapes_vp"}


@pytest.mark.parametrize(
    "experiment", sorted(set(EXPERIMENTS) - QUICKSTART_RECIPE_EXPERIMENTS - CLASSIFIER_EXPERIMENTS)
)
def test_the_quickstart_recipe_does_not_leak_into_other_experiments(experiment, compose_cfg):
    with_recipe = compose_cfg("train", [f"+experiment={experiment}"])
    without = compose_cfg("train", [f"+experiment={experiment}", "~recipe"])
    assert OmegaConf.to_container(with_recipe) == OmegaConf.to_container(without)


def test_the_quickstart_recipe_applies_to_the_default_run(compose_cfg):
    cfg = compose_cfg("train", [])
    assert (cfg.data.batch_size, cfg.trainer.max_steps, cfg.trainer.precision) == (128, 2200, "bf16-mixed")
    assert cfg.condition.label_dropout == 0.1 and cfg.optim.lr == 3e-3 and cfg.optim.fused is True
    # logit-normal times shifted toward noise, from the recipe's path choice; `~recipe` restores mean 0
    assert dict(cfg.path.time_sampler) == {"name": "logit_normal", "mean": -0.5, "std": 1.0}
    assert compose_cfg("train", ["~recipe"]).path.time_sampler.mean == 0.0
    assert compose_cfg("train", ["path=condot_logitnormal"]).path.time_sampler.mean == 0.0  # the command line wins
    assert (cfg.autoencoder.training.batch_size, cfg.autoencoder.training.max_steps) == (32, 1100)
    for experiment in sorted(QUICKSTART_RECIPE_EXPERIMENTS):
        assert compose_cfg("train", [f"+experiment={experiment}"]).data.batch_size == 128
    # the named quick start is the default run; shapes_vp keeps its own path (an experiment's path wins)
    named = compose_cfg("train", ["+experiment=shapes_unet"])
    assert OmegaConf.to_container(named.path) == OmegaConf.to_container(cfg.path)
    vp = compose_cfg("train", ["+experiment=shapes_vp"])
    assert vp.path.scheduler.name == "vp" and dict(vp.path.time_sampler) == {"name": "uniform"}
