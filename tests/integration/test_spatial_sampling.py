"""Inpainting / semantic synthesis end to end: tiny trained models, the sample CLI, bad inputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from latent_flow.autoencoders import IdentityAutoencoder
from latent_flow.conditioning import cache_extras
from latent_flow.data import ShapesDataset
from latent_flow.data.datamodule import LatentDataModule
from latent_flow.training.module import LatentFlowModule

RES = 16


def _train_tiny(tmp: Path, condition: dict, steps: int = 8) -> Path:
    """A tiny UNet trained for a few steps on 16 px shapes in pixel space (2x2 space-to-depth); returns its ckpt."""
    torch.manual_seed(0)
    dataset = ShapesDataset(num_samples=64, resolution=RES, seed=0)
    ae = IdentityAutoencoder(space_to_depth=2)
    dm = LatentDataModule(
        dataset,
        ae,
        cache_dir=tmp / "cache",
        name="shapes",
        batch_size=16,
        val_fraction=0.1,
        cache_extras=cache_extras(condition),
    )
    dm.prepare_data()
    dm.setup("fit")
    model = LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition=condition,
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 2e-3},
        ema={"decay": 0.5, "warmup": False},
        latent_shape=dm.latent_shape,
        num_classes=dataset.num_classes,
        latent_stats=dm.latent_stats,
        autoencoder={"name": "identity", "space_to_depth": 2},
        data={"name": "shapes", "resolution": RES},
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    first = None
    for _, batch in zip(range(steps), itertools.cycle(dm.train_dataloader())):
        loss = model._loss(batch, use_ema=False)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.ema.update(model.backbone)
        if model.condition_ema is not None:
            model.condition_ema.update(model.condition)
    assert float(loss) < first  # it trains
    path = tmp / "tiny.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__,
            "epoch": 0,
            "global_step": steps,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def inpaint_ckpt(tmp_path_factory):
    cond = {"name": "inpaint", "resolution": RES, "masks": {"hole_min": 0.2, "hole_max": 0.5}, "mask_variants": 2}
    return _train_tiny(tmp_path_factory.mktemp("inpaint"), cond)


@pytest.fixture(scope="module")
def semantic_ckpt(tmp_path_factory):
    cond = {"name": "semantic", "resolution": RES, "num_semantic_classes": 6, "use_label": True, "label_dropout": 0.1}
    return _train_tiny(tmp_path_factory.mktemp("semantic"), cond)


def _inputs(folder: Path, n: int = 2) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset(num_samples=n, resolution=RES, seed=99)
    images, maps = [], []
    for i in range(n):
        img, _, sem = data.render(i)
        Image.fromarray(img).save(folder / f"in{i}.png")
        images.append(img)
        maps.append(sem)
    return folder, images, maps


def _sample(compose_cfg, ckpt, tmp_path, *overrides):
    from latent_flow.sample import run_sampling

    cfg = compose_cfg(
        "sample",
        [
            f"ckpt_path={ckpt}",
            "sampler=euler",
            "sampler.steps=3",
            "samples_per_input=3",
            "batch_size=4",
            "grid_upscale=1",
            f"out_dir={tmp_path / 'out'}",
            *overrides,
        ],
    )
    return run_sampling(cfg), tmp_path / "out"


def test_inpainting_cli_keeps_the_known_region_bit_exact(inpaint_ckpt, compose_cfg, tmp_path):
    folder, images, _ = _inputs(tmp_path / "inputs")
    masks = tmp_path / "masks"
    masks.mkdir()
    known = []
    for i in range(2):
        m = np.full((RES, RES), 255, np.uint8)
        m[3 + i : 11, 4 : 12 + i] = 0  # a hole
        Image.fromarray(m).save(masks / f"in{i}.png")
        known.append(m == 255)
    summary, out = _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={folder}", f"masks={masks}")
    assert summary["known_region_bit_exact"] is True and summary["num_samples"] == 6
    for i in range(2):
        outs = [np.asarray(Image.open(out / "images" / f"in{i}_{k}.png")) for k in range(3)]
        for o in outs:
            assert o.shape == (RES, RES, 3) and np.array_equal(o[known[i]], images[i][known[i]])
        assert any(not np.array_equal(o[~known[i]], images[i][~known[i]]) for o in outs)  # holes generated
        assert not np.array_equal(outs[0][~known[i]], outs[1][~known[i]])  # different noise per sample
        grid = Image.open(out / "grids" / f"in{i}.png")
        assert grid.size == (5 * (RES + 2) + 2, RES + 4)  # input | masked input | 3 samples
    assert Image.open(out / "grid.png").size == (5 * (RES + 2) + 2, 2 * (RES + 2) + 2)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["samples_per_input"] == 3 and saved["known_region_bit_exact"] is True
    # one mask file for every input, and generated masks (the model's training generator) without masks=
    summary, _ = _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={folder}", f"masks={masks / 'in0.png'}")
    assert summary["known_region_bit_exact"]
    summary, _ = _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={folder / 'in1.png'}")
    assert summary["num_samples"] == 3 and 0.2 <= summary["mean_hole_ratio"] <= 0.5


def test_inpainting_bad_inputs_fail_clearly(inpaint_ckpt, compose_cfg, tmp_path):
    folder, _, _ = _inputs(tmp_path / "inputs", 1)
    image = folder / "in0.png"

    def mask(name, array):
        path = tmp_path / name
        Image.fromarray(array.astype(np.uint8)).save(path)
        return path

    half = np.full((RES, RES), 255)
    half[:4] = 0
    with pytest.raises(ValueError, match=r"is 8x8 \(WxH\) but its image is 16x16"):
        _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={image}", f"masks={mask('small.png', half[:8, :8])}")
    with pytest.raises(ValueError, match="all hole"):
        _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={image}", f"masks={mask('black.png', 0 * half)}")
    with pytest.raises(ValueError, match="no hole"):
        _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={image}", f"masks={mask('white.png', 0 * half + 255)}")
    big = tmp_path / "big.png"
    Image.new("RGB", (32, 32)).save(big)
    with pytest.raises(ValueError, match="is 32x32, but the model generates 16x16"):
        _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={big}")
    with pytest.raises(ValueError, match="pass inputs="):
        _sample(compose_cfg, inpaint_ckpt, tmp_path)
    with pytest.raises(FileNotFoundError, match="no mask for input 'in0.png'"):
        empty = tmp_path / "empty"
        empty.mkdir()
        _sample(compose_cfg, inpaint_ckpt, tmp_path, f"inputs={folder}", f"masks={empty}")


def test_semantic_cli_writes_samples_per_map(semantic_ckpt, compose_cfg, tmp_path):
    maps_dir = tmp_path / "maps"
    _, _, maps = _inputs(tmp_path / "inputs", 2)
    maps_dir.mkdir()
    for i, sem in enumerate(maps):
        Image.fromarray(sem.astype(np.uint8), mode="L").save(maps_dir / f"map{i}.png")
    summary, out = _sample(compose_cfg, semantic_ckpt, tmp_path, f"semantic={maps_dir}", "label=[1,2]", "cfg_scale=2.0")
    assert summary["num_samples"] == 6 and summary["known_region_bit_exact"] is None
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"map{i}_{k}.png" for i in range(2) for k in range(3)]
    assert Image.open(out / "grids" / "map0.png").size == (4 * (RES + 2) + 2, RES + 4)  # map | 3 samples
    assert summary["nfe_per_sample"] == 3


def test_semantic_bad_maps_fail_clearly(semantic_ckpt, compose_cfg, tmp_path):
    bad = np.zeros((RES, RES), np.uint8)
    bad[2:5, 2:5] = 7
    Image.fromarray(bad, mode="L").save(tmp_path / "unknown.png")
    with pytest.raises(ValueError, match=r"class ids \[7\] outside \[0, 5\]"):
        _sample(compose_cfg, semantic_ckpt, tmp_path, f"semantic={tmp_path / 'unknown.png'}")
    Image.new("RGB", (RES, RES)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="expected a single-channel index PNG"):
        _sample(compose_cfg, semantic_ckpt, tmp_path, f"semantic={tmp_path / 'rgb.png'}")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="is 8x8, but the model generates 16x16"):
        _sample(compose_cfg, semantic_ckpt, tmp_path, f"semantic={tmp_path / 'small.png'}")
    with pytest.raises(ValueError, match="inputs=/masks= given, but this model is semantic"):
        _sample(compose_cfg, semantic_ckpt, tmp_path, f"inputs={tmp_path / 'small.png'}")


def test_spatial_model_without_conditions_fails_clearly(semantic_ckpt):
    from latent_flow.api import generate, load_model

    model = load_model(semantic_ckpt, device="cpu")
    with pytest.raises(ValueError, match="conditioned on 'semantic': pass spatial_cond"):
        generate(model, num_samples=2, sampler="euler", steps=2, labels=[0, 1])


def test_api_generate_takes_spatial_conditions(semantic_ckpt):
    from latent_flow.api import generate, load_model
    from latent_flow.generation import spatial_condition

    model = load_model(semantic_ckpt, device="cpu")
    maps = np.stack([ShapesDataset(num_samples=2, resolution=RES, seed=5).render(i)[2] for i in range(2)])
    cond = spatial_condition(model, semantic=maps)
    images, result = generate(model, num_samples=2, sampler="euler", steps=2, labels=[0, 1], spatial_cond=cond)
    assert images.shape == (2, 3, RES, RES) and result.nfe == 2
    # the map is an input: another map gives other samples from the same noise
    other, _ = generate(
        model,
        num_samples=2,
        sampler="euler",
        steps=2,
        labels=[0, 1],
        spatial_cond=spatial_condition(model, semantic=np.zeros_like(maps)),
    )
    assert not torch.allclose(images, other)


@pytest.fixture
def untrained_oracle_16(monkeypatch):
    """A randomly initialised 16 px oracle stands in for the cached, trained one."""
    import latent_flow.evaluation.oracle as oracle_mod

    torch.manual_seed(0)
    oracle = oracle_mod.ShapesOracle(resolution=RES).eval()
    monkeypatch.setattr(oracle_mod, "load_or_train_oracle", lambda cache_dir, resolution, **kw: oracle)
    return oracle


def test_evaluate_inpainting_model_on_held_out_renders(inpaint_ckpt, compose_cfg, tmp_path, untrained_oracle_16):
    from latent_flow.data.masks import MaskGenerator
    from latent_flow.evaluate import run_evaluation

    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={inpaint_ckpt}",
            "num_samples=6",
            "batch_size=4",
            "sampler=euler",
            "sampler.steps=2",
            f"out_dir={tmp_path / 'eval'}",
        ],
    )
    first = run_evaluation(cfg)["metrics"]
    assert first["known_region_bit_exact"] is True
    assert 0.2 <= first["hole_ratio"] <= 0.5  # the model's training masks: holes of 20-50%
    assert 0 <= first["miou"] <= 1 and len(first["miou_per_class"]) == 6 and first["fd_shapes"] > 0
    # sample i is render i of the condition seed with mask i (variant 7) of the training generator
    render = ShapesDataset(num_samples=6, resolution=RES, seed=777).render(3)[0]
    mask = MaskGenerator(RES, hole_min=0.2, hole_max=0.5)(3, 7)
    png = np.asarray(Image.open(tmp_path / "eval" / "images" / "000003.png").convert("RGB"))
    assert np.array_equal(png[mask], render[mask])
    # resume: a lost sample is redone identically and the metrics are unchanged
    lost = tmp_path / "eval" / "images" / "000004.png"
    data = lost.read_bytes()
    lost.unlink()
    second = run_evaluation(cfg)["metrics"]
    assert lost.read_bytes() == data and second["miou"] == pytest.approx(first["miou"])


def test_evaluate_semantic_model_reports_miou_against_the_requested_maps(
    semantic_ckpt, compose_cfg, tmp_path, untrained_oracle_16
):
    from latent_flow.evaluate import run_evaluation

    cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={semantic_ckpt}",
            "num_samples=5",
            "batch_size=5",
            "sampler=euler",
            "sampler.steps=2",
            "cfg_scale=1.5",
            f"out_dir={tmp_path / 'eval'}",
        ],
    )
    m = run_evaluation(cfg)["metrics"]
    assert {"fd_shapes", "label_accuracy", "miou", "miou_per_class"} <= set(m) and "known_region_bit_exact" not in m
    assert 0 <= m["miou"] <= 1
    # spatial + label: sample i's label is the label of the held-out render whose map conditions it
    renders = ShapesDataset(num_samples=5, resolution=RES, seed=777)
    want = [renders.render(i)[1]["shape"] for i in range(5)]
    assert np.load(tmp_path / "eval" / "samples.npz")["labels"].tolist() == want
    assert want != [i % 5 for i in range(5)]  # the old rule i % K would contradict these maps

    from latent_flow.cli.evaluate import _metrics

    class Plain:  # a model without spatial condition
        condition = type("C", (), {"spatial_channels": 0})()
        hparams = {"data": {"name": "shapes"}}

    with pytest.raises(ValueError, match="miou needs an inpainting / semantic model"):
        _metrics(
            compose_cfg("evaluate", [f"ckpt_path={semantic_ckpt}", "metrics=[miou]"]),
            Plain(),
            np.zeros((2, RES, RES, 3), np.uint8),
            None,
            None,
        )


def test_evaluate_spatial_model_of_other_data_says_how_to_score_it(semantic_ckpt, compose_cfg):
    from latent_flow.api import load_model
    from latent_flow.cli.evaluate import _spatial_inputs

    model = load_model(semantic_ckpt, device="cpu")
    model.hparams["data"] = {"name": "celebamask256", "resolution": 256}
    cfg = compose_cfg("evaluate", [f"ckpt_path={semantic_ckpt}"])
    with pytest.raises(ValueError, match="held-out `shapes` renders.*latent_flow.sample"):
        _spatial_inputs(cfg, model)
