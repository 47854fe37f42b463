"""Compositional control end to end on a tiny unconditional run: train_classifier, sample compose=..., edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def tiny_uncond(tmp_path_factory):
    from conftest import compose
    from latent_flow.train import run_training

    root = tmp_path_factory.mktemp("lace_flow")
    run_training(compose("train", TINY_TRAIN + ["condition=none", "samples.cfg_scale=1.0"], root))
    return root


@pytest.fixture(scope="module")
def tiny_classifier(tiny_uncond, tmp_path_factory):
    from conftest import compose
    from latent_flow.train_classifier import run_classifier_training

    root = tmp_path_factory.mktemp("lace_clf")
    cfg = compose(
        "train_classifier",
        [
            f"flow_ckpt_path={tiny_uncond / 'run' / 'checkpoints' / 'last.ckpt'}",
            "data.dataset.num_samples=256",
            "train.steps=4",
            "train.batch_size=32",
            "eval.max_items=64",
            "eval.t_bins=[0,0.5,1]",
            "holdout=[{shape: triangle, color: red}]",
            "progress=false",
            f"paths.cache_dir={tiny_uncond / 'cache'}",
        ],
        root,
    )
    summary = run_classifier_training(cfg)
    return Path(cfg.out_dir), summary


def test_train_classifier_writes_checkpoint_and_accuracy_json(tiny_classifier):
    from latent_flow.compositional import load_classifier
    from latent_flow.data import ShapesDataset

    out, summary = tiny_classifier
    clf, meta = load_classifier(out / "classifier.pt")
    assert clf.attribute_names == ["shape", "color", "size", "hpos", "count"]
    assert meta["scheduler"]["name"] == "condot" and meta["latent_shape"] == list(clf.latent_shape)
    metrics = json.loads((out / "classifier_metrics.json").read_text())
    data = ShapesDataset(num_samples=256, resolution=32, seed=0)
    red_triangles = sum(
        1
        for i in range(len(data))
        if data.layout(i).attributes["shape"] == 2 and data.layout(i).attributes["color"] == 0
    )
    assert metrics["num_items"]["heldout"] == red_triangles > 0
    assert metrics["num_items"]["train"] + metrics["num_items"]["seen_val"] == 256 - red_triangles
    assert list(metrics["metrics"]["heldout"]) == ["shape=triangle & color=red"]
    for ranges in (
        metrics["metrics"]["seen"]["per_t_range"],
        metrics["metrics"]["heldout"]["shape=triangle & color=red"]["per_t_range"],
    ):
        assert list(ranges) == ["[0,0.5)", "[0.5,1)", "t=1"]
        for entry in ranges.values():
            assert 0.0 <= entry["shape"] <= 1.0 and "joint(shape+color)" in entry
    assert summary["checkpoint"].endswith("classifier.pt")


def test_sample_cli_with_compose_writes_files(tiny_uncond, tiny_classifier, compose_cfg):
    from latent_flow.sample import run_sampling

    out, _ = tiny_classifier
    ckpt = tiny_uncond / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(
        "sample",
        [
            f"ckpt_path={ckpt}",
            f"classifier_ckpt_path={out / 'classifier.pt'}",
            "compose='shape=triangle & color=red & !(size=small)'",
            "guidance_scale=2.0",
            "num_samples=3",
            "sampler=euler",
            "sampler.steps=3",
            "device=cpu",
        ],
    )
    summary = run_sampling(cfg)
    run = Path(cfg.out_dir)
    assert sorted(p.name for p in (run / "images").glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    written = json.loads((run / "summary.json").read_text())
    assert written["compose"] == "shape=triangle & color=red & !(size=small)"
    assert written["nfe_per_sample"] == 3 and written["classifier_grad_evals_per_sample"] == 3
    assert summary["guidance_scale"] == 2.0


def test_sample_cli_compose_errors(tiny_uncond, tiny_classifier, compose_cfg):
    from latent_flow.compositional import ExpressionError
    from latent_flow.sample import run_sampling

    out, _ = tiny_classifier
    ckpt = tiny_uncond / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg("sample", [f"ckpt_path={ckpt}", "compose='color=red'", "num_samples=1", "device=cpu"])
    with pytest.raises(ValueError, match="needs classifier_ckpt_path"):
        run_sampling(cfg)
    cfg = compose_cfg(
        "sample",
        [
            f"ckpt_path={ckpt}",
            f"classifier_ckpt_path={out / 'classifier.pt'}",
            "compose='colour=red'",
            "num_samples=1",
            "device=cpu",
        ],
    )
    with pytest.raises(ExpressionError, match="valid attributes: shape, color, size, hpos, count"):
        run_sampling(cfg)


def test_edit_cli_round_trip_and_edit(tiny_uncond, tiny_classifier, compose_cfg, tmp_path):
    from PIL import Image

    from latent_flow.data import ShapesDataset
    from latent_flow.edit import run_edit

    out, _ = tiny_classifier
    image, _, _ = ShapesDataset(num_samples=4, resolution=32, seed=7).render(0)
    Image.fromarray(image).save(tmp_path / "input.png")
    cfg = compose_cfg(
        "edit",
        [
            f"ckpt_path={tiny_uncond / 'run' / 'checkpoints' / 'last.ckpt'}",
            f"classifier_ckpt_path={out / 'classifier.pt'}",
            f"input={tmp_path / 'input.png'}",
            "edits=['color=blue']",
            "sampler=heun",
            "sampler.steps=4",
            "device=cpu",
        ],
        run_dir=tmp_path / "edit",
    )
    summary = run_edit(cfg)
    run = Path(cfg.out_dir)
    for name in ("input.png", "reconstruction.png", "edit_01.png", "strip.png", "summary.json"):
        assert (run / name).is_file(), name
    # inversion (t: 1 -> 0) then regeneration (0 -> 1) without edits gives the latent back
    assert summary["round_trip_latent_rmse"] < 0.02
    step = summary["steps"][0]
    assert (
        step["edit"] == "color=blue"
        and "color" not in step["anchors"]
        and set(step["anchors"]) == {"shape", "size", "hpos", "count"}
    )
    assert step["nfe"] == 8 and step["nfe_inversion"] == 8 and step["classifier_grad_evals"] > 0
    assert set(summary["readings"]) == {"input", "reconstruction", "edit_01"}
