"""CLI of the likelihood, the guidance interval and the SDE sampler on a tiny trained checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import compose
    from latent_flow.train import run_training

    root = tmp_path_factory.mktemp("beyondrun")
    run_training(compose("train", TINY_TRAIN, root))
    return root


def test_likelihood_cli_writes_bits_per_dim_of_the_validation_split(tiny_run, compose_cfg):
    from latent_flow.cli.likelihood import held_out_split, run_likelihood
    from latent_flow.data.datamodule import split_indices

    ckpt = tiny_run / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(
        "likelihood",
        [
            f"ckpt_path={ckpt}",
            "num_samples=3",
            "batch_size=2",
            "rtol=1e-3",
            "atol=1e-3",
            "num_probes=2",
            f"paths.cache_dir={tiny_run / 'cache'}",
        ],
    )
    summary = run_likelihood(cfg)
    saved = json.loads((Path(cfg.out_dir) / "likelihood.json").read_text())
    assert saved["bits_per_dim"] == summary["bits_per_dim"] and math.isfinite(saved["bits_per_dim"])
    assert saved["space"] == "latent"
    assert saved["statement"] == "bits/dim in the autoencoder's latent space, normalised latents"
    assert saved["num_samples"] == 3 and saved["num_dims"] == 2 * 16 * 16 and len(saved["nfe_per_batch"]) == 2
    assert saved["condition"] == "the true label, no guidance" and saved["hutchinson_std_error_of_mean"] > 0
    assert saved["held_out"]["split"] == "validation" and saved["held_out"]["num_held_out"] == 5  # 2% of 256
    # the held-out items are the training run's validation split (TINY_TRAIN: 256 items, seed 42)
    _, idx, _ = held_out_split(ckpt)
    assert idx == split_indices(256, 0.02, 42)[1].tolist()


def test_sample_cli_sde_with_guidance_interval_records_it_and_any_batch_split_is_the_same(
    tiny_run, compose_cfg, tmp_path
):
    from PIL import Image

    from latent_flow.sample import run_sampling

    ckpt = tiny_run / "run" / "checkpoints" / "last.ckpt"
    common = [
        f"ckpt_path={ckpt}",
        "num_samples=4",
        "sampler=euler_maruyama",
        "sampler.steps=3",
        "sampler.diffusion=1.0",
        "cfg_scale=2.0",
        "cfg_interval=[0.3,1.0]",
    ]
    runs = []
    for batch in (4, 3):
        cfg = compose_cfg("sample", common + [f"batch_size={batch}"], run_dir=tmp_path / f"b{batch}")
        summary = run_sampling(cfg)
        assert summary["cfg_interval"] == [0.3, 1.0] and summary["sampler"]["name"] == "euler_maruyama"
        assert summary["nfe_per_sample"] == 3
        # the rows the network saw: t = 0 outside the interval (1 row), t = 1/3 and 2/3 inside (2 rows each)
        assert summary["model_rows_per_sample"] == 1 + 2 + 2
        saved = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
        assert saved["cfg_interval"] == [0.3, 1.0]
        runs.append(np.stack([np.asarray(Image.open(Path(cfg.out_dir) / "images" / f"{i:06d}.png")) for i in range(4)]))
    diff = np.abs(runs[0].astype(int) - runs[1].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # per-index step noise: the same samples


def test_invalid_cfg_interval_fails_before_sampling(tiny_run, compose_cfg):
    from latent_flow.sample import run_sampling

    ckpt = tiny_run / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg("sample", [f"ckpt_path={ckpt}", "num_samples=2", "cfg_scale=2.0", "cfg_interval=[0.8,0.2]"])
    with pytest.raises(ValueError, match="invalid guidance interval"):
        run_sampling(cfg)


def test_autoguidance_cli_by_an_earlier_checkpoint_records_the_guide_and_its_nfe(tiny_run, compose_cfg, tmp_path):
    from latent_flow.cli.evaluate import run_evaluation
    from latent_flow.sample import run_sampling

    ckpts = tiny_run / "run" / "checkpoints"
    guide = ckpts / "step_0000003.ckpt"  # the same run at half its steps: a weaker model of the same latents
    common = [f"ckpt_path={ckpts / 'last.ckpt'}", "num_samples=4", "batch_size=4", "sampler=heun", "sampler.steps=3"]
    cfg = compose_cfg(
        "sample",
        common + ["guidance=autoguidance", f"guide_ckpt_path={guide}", "cfg_scale=2.0"],
        run_dir=tmp_path / "auto",
    )
    summary = run_sampling(cfg)
    assert summary["guide_ckpt_path"] == str(guide) and summary["cfg_scale"] == 2.0
    assert summary["nfe_per_sample"] == 6 and summary["guide_nfe_per_sample"] == 6  # Heun 3: 6 steps, each guided
    assert summary["model_rows_per_sample"] == 6 + 6  # the main model's rows and the guide's
    # scale 1: the main model alone (the guide never runs), the same images as plain sampling
    same = compose_cfg("sample", common + [f"guide_ckpt_path={guide}", "cfg_scale=1.0"], run_dir=tmp_path / "one")
    plain = compose_cfg("sample", common + ["cfg_scale=1.0"], run_dir=tmp_path / "plain")
    alone = run_sampling(same)
    assert alone["guide_nfe_per_sample"] == 0 and alone["model_rows_per_sample"] == 6
    run_sampling(plain)
    for i in range(4):
        a = (Path(same.out_dir) / "images" / f"{i:06d}.png").read_bytes()
        assert a == (Path(plain.out_dir) / "images" / f"{i:06d}.png").read_bytes()
    # evaluate: the guide's weights are part of the recipe, and its NFE is reported
    ev = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={ckpts / 'last.ckpt'}",
            "num_samples=4",
            "batch_size=4",
            "sampler=heun",
            "sampler.steps=3",
            "cfg_scale=2.0",
            f"guide_ckpt_path={guide}",
            "metrics=[]",
            f"out_dir={tmp_path / 'ev'}",
        ],
    )
    out = run_evaluation(ev)
    assert out["guide_sha256"] and out["guide_nfe_per_sample"] == 6 and out["model_rows_per_sample"] == 12
    recipe = json.loads((tmp_path / "ev" / "recipe.json").read_text())
    assert recipe["guide_sha256"] == out["guide_sha256"]


def test_autoguidance_refuses_a_guide_of_another_latent_space(tiny_run, compose_cfg, tmp_path):
    from conftest import compose
    from latent_flow.sample import run_sampling
    from latent_flow.train import run_training

    other = tmp_path / "other"
    # the same autoencoder and latents (a shared cache), but trained without labels
    overrides = TINY_TRAIN + ["condition=none", "samples.cfg_scale=1.0", f"paths.cache_dir={tiny_run / 'cache'}"]
    run_training(compose("train", overrides, other))
    cfg = compose_cfg(
        "sample",
        [
            f"ckpt_path={tiny_run / 'run' / 'checkpoints' / 'last.ckpt'}",
            "num_samples=2",
            f"guide_ckpt_path={other / 'run' / 'checkpoints' / 'last.ckpt'}",
            "cfg_scale=2.0",
        ],
    )
    with pytest.raises(ValueError, match="cannot guide this model: its condition"):
        run_sampling(cfg)


def test_autoguidance_without_a_guide_checkpoint_names_the_option(tiny_run, compose_cfg):
    from latent_flow.sample import run_sampling

    cfg = compose_cfg(
        "sample", [f"ckpt_path={tiny_run / 'run' / 'checkpoints' / 'last.ckpt'}", "guidance=autoguidance"]
    )
    with pytest.raises(ValueError, match="guidance=autoguidance needs guide_ckpt_path="):
        run_sampling(cfg)
