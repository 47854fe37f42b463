"""Issue #26: semantic-map-to-emoji and emoji inpainting. The experiments compose and build; a tiny run of each
trains on real OpenMoji SVGs (32 px, pixel space: no autoencoder weights needed); the latent cache keeps maps,
masks and images aligned under flips; ``python -m latent_flow.sample inputs= masks=`` works on a transparent
PNG as a user brings it, and ``semantic=`` on a part-map PNG of the dataset."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY_TRAIN
from latent_flow.autoencoders import IdentityAutoencoder
from latent_flow.cli.run import CONFIG_DIR
from latent_flow.data.emoji import (
    EmojiDataset,
    composite_on_background,
    find_openmoji_svg_dir,
    prepare_emoji,
    render_svg,
)
from latent_flow.data.latent_cache import LatentCache
from latent_flow.data.masks import MaskGenerator

RES = 32
ROOT = Path(__file__).resolve().parents[2]
#: smileys (colour + line), a hand and an ear with skin (and skin shadow), red hair, a bald person: all part classes;
#: 1F615, 1F618, 1F61A and the ear are held out (split by design)
SVGS = [f"1F6{k:02X}" for k in range(0x00, 0x1B)] + ["1F44B-1F3FD", "1F442-1F3FD", "1F469-1F3FD-200D-1F9B0",
                                                    "1F9D1-1F3FF-200D-1F9B2"]  # fmt: skip
EXPERIMENTS = {
    # experiment: (condition, use_label, network input channels at TAEF2's 32 latent channels)
    "emoji64_semantic": ("semantic", False, 32 + 32),
    "emoji64_semantic_label": ("semantic", True, 32 + 32),
    "emoji64_inpaint": ("inpaint", False, 32 + 32 + 1),
}


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_emoji_spatial_experiments_compose(experiment, compose_cfg):
    from latent_flow.training.module import LatentFlowModule

    condition, use_label, in_channels = EXPERIMENTS[experiment]
    cfg = compose_cfg("train", [f"+experiment={experiment}", "+backbone.hidden_size=192"])  # run.sh's arm
    assert cfg.task_name == experiment and cfg.condition.name == condition and cfg.condition.use_label == use_label
    assert cfg.data.name == "emoji" and cfg.data.dataset.part_maps and cfg.data.dataset.split_by == "design"
    assert cfg.data.dataset.split == "train" and cfg.data.flip and cfg.condition.resolution == 64
    assert cfg.autoencoder.latent_channels == 32 and "taef2" in cfg.autoencoder.encoder_path
    assert cfg.backbone.name == "DiT-T/1" and cfg.optim.lr == 2.0e-3  # the emoji recipe (base/emoji64)
    if condition == "semantic":
        assert cfg.condition.num_semantic_classes == 6 == cfg.data.num_semantic_classes
        assert cfg.samples.cfg_scale == 2.0
    else:
        families = dict(cfg.condition.masks.families)
        assert families == {"strokes": 1, "boxes": 1, "half": 1, "centre": 1, "part": 1}
        assert cfg.condition.mask_variants == 4 and cfg.samples.cfg_scale == 1.0
    module = LatentFlowModule(
        backbone=cfg.backbone,
        condition=cfg.condition,
        path=cfg.path,
        optim=cfg.optim,
        ema=cfg.ema,
        latent_shape=(32, 8, 8),
        num_classes=9,
    )
    assert module.backbone.in_channels == in_channels and module.backbone.hidden_size == 192
    assert module.condition.uses_label == use_label
    if condition == "inpaint":
        assert module.condition.mask_generator().needs_maps


def test_bad_mask_family_names_fail_when_the_model_is_built(compose_cfg):
    from latent_flow.training.module import LatentFlowModule

    cfg = compose_cfg("train", ["+experiment=emoji64_inpaint", "+condition.masks.families.center=1"])
    with pytest.raises(ValueError, match=r"unknown mask family 'center' \(did you mean 'centre'\?\)"):
        LatentFlowModule(backbone=cfg.backbone, condition=cfg.condition, path=cfg.path, optim=cfg.optim, ema=None,
                         latent_shape=(32, 8, 8), num_classes=9)  # fmt: skip


def test_launcher_arms_and_experiment_files():
    script = (ROOT / "experiments" / "emoji_spatial" / "run.sh").read_text()
    arms = dict(re.findall(r"^\s+(\w+)\) experiment=(\w+) ;;", script, flags=re.M))
    assert arms == {
        "semantic": "emoji64_semantic",
        "semantic_label": "emoji64_semantic_label",
        "inpaint": "emoji64_inpaint",
    }
    for needed in ("trainer.max_time=00:02:00:00", "train_time_interval.minutes=15", "OMP_NUM_THREADS=1",
                   "hydra.run.dir=outputs/emoji_spatial/$arm", "+backbone.hidden_size=192", "bf16-mixed"):  # fmt: skip
        assert needed in script, needed
    for name in EXPERIMENTS:
        text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
        assert f"python -m latent_flow.train +experiment={name}" in text


# ------------------------------------------------------------------------------------------ real SVGs, tiny runs
@pytest.fixture(scope="module")
def emoji_root(tmp_path_factory) -> tuple[Path, Path]:
    """A few real OpenMoji SVGs prepared at 32 px with part maps: (dataset root, SVG folder)."""
    installed, _ = find_openmoji_svg_dir()
    svg_dir = tmp_path_factory.mktemp("svgs")
    for name in SVGS:
        shutil.copy(installed / f"{name}.svg", svg_dir / f"{name}.svg")
    root = tmp_path_factory.mktemp("emoji")
    prepare_emoji(root, ["openmoji"], RES, source_paths={"openmoji": svg_dir}, progress=False, part_maps=True)
    return root, svg_dir


def test_cached_part_masks_stay_aligned_with_images_under_flips(emoji_root, tmp_path):
    """Masks drawn from each emoji's part map are cached with the masked images; the flipped view flips the
    image, the mask and the masked image together."""
    root, _ = emoji_root
    ds = EmojiDataset(root, resolution=RES, split="all", part_maps=True, prepare=False)
    masks = {"families": {"part": 1}, "part_dilation": 0}
    cache = LatentCache(tmp_path, ds, IdentityAutoencoder(space_to_depth=1), flip=True,
                        extras={"masks": masks, "mask_variants": 2})  # fmt: skip
    cache.build(progress=False)
    view = cache.dataset_view(random_flip=True, random_variant=False)
    gen = MaskGenerator(RES, **masks)
    for i in range(len(ds)):
        part_map = ds.load_part_map(i)
        for flip in (0, 1):
            item = view[(i, flip)]
            image = torch.from_numpy(view.raw_latent(i, flip).copy())  # identity autoencoder: the image itself
            mask = item["mask"][0].bool()
            expected = torch.from_numpy(gen(i, i % 2, part_map))
            assert torch.equal(mask, expected.flip(-1) if flip else expected)
            # the hole is exactly one part class of the (flipped) map: the mask follows the map
            sem = torch.from_numpy(part_map.astype(np.int64))
            sem = sem.flip(-1) if flip else sem
            assert len(sem[~mask].unique()) == 1 and int(sem[~mask][0]) != 0
            masked = item["masked_latent"] * view._std + view._mean  # raw = the masked image
            assert torch.allclose(masked, image * mask, atol=1e-6)


def _smoke_overrides(root: Path, svg_dir: Path) -> list[str]:
    replaced = ("data.dataset.num_samples", "autoencoder.", "backbone=", "optim.warmup_steps", "samples.per_class")
    return [
        *(o for o in TINY_TRAIN if not o.startswith(replaced)),
        f"data.dataset.root={root}",
        f"+data.dataset.source_paths.openmoji={svg_dir}",
        f"data.dataset.resolution={RES}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "autoencoder=pixel_s2d",  # no weights; the experiments' TAEF2 is checked by the compose test
        "backbone=unet_t",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "optim.warmup_steps=1",
        "samples.per_class=2",
        "samples.max_rows=2",
    ]


@pytest.fixture(scope="module")
def trained(emoji_root, tmp_path_factory) -> dict[str, Path]:
    """Tiny runs of emoji64_semantic and emoji64_inpaint (2 steps each): their run directories."""
    from conftest import compose
    from latent_flow.train import run_training

    root, svg_dir = emoji_root
    runs = {}
    for experiment in ("emoji64_semantic", "emoji64_inpaint"):
        tmp = tmp_path_factory.mktemp(experiment)
        overrides = [f"+experiment={experiment}", *_smoke_overrides(root, svg_dir)]
        if experiment == "emoji64_inpaint":
            overrides.append("condition.mask_variants=2")
        cfg = compose("train", overrides, tmp)
        summary = run_training(cfg)
        assert summary["status"] == "finished" and summary["global_step"] == 2
        meta = json.loads((Path(summary["latent_cache"]) / "meta.json").read_text())
        assert meta["num_views"] == 2  # flips
        if experiment == "emoji64_semantic":
            assert meta["extras"] == {"semantic": True}
        else:
            assert meta["extras"]["mask_variants"] == 2 and meta["extras"]["masks"]["families"]["part"] == 1
        runs[experiment] = Path(cfg.paths.output_dir)
    return runs


def test_tiny_runs_write_grids_and_reloadable_checkpoints(trained):
    from latent_flow.api import load_model

    for experiment, run in trained.items():
        assert (run / "samples" / "step_0000002.png").is_file()
        model = load_model(run / "checkpoints" / "last.ckpt", device="cpu")
        assert model.condition.resolution == RES
        if experiment == "emoji64_semantic":
            assert model.condition.num_semantic_classes == 6 and model.condition.spatial_channels == 32
        else:
            assert model.condition.mask_generator().families["part"] == 1


def _sample(compose_cfg, ckpt: Path, out: Path, *overrides):
    from latent_flow.sample import run_sampling

    cfg = compose_cfg("sample", [f"ckpt_path={ckpt}", "sampler=euler", "sampler.steps=2", "samples_per_input=2",
                                 "grid_upscale=1", f"out_dir={out}", *overrides])  # fmt: skip
    return run_sampling(cfg)


def test_sample_cli_inpaints_a_transparent_png_with_a_mask_png(trained, emoji_root, compose_cfg, tmp_path):
    """A user's emoji: an RGBA PNG (transparent background) and a mask PNG (white = known)."""
    _, svg_dir = emoji_root
    rgba = render_svg(svg_dir / "1F44B-1F3FD.svg", RES)  # the waving hand as openmoji.org serves it (RGBA)
    assert rgba.mode == "RGBA" and np.asarray(rgba)[0, 0, 3] == 0
    rgba.save(tmp_path / "hand.png")
    known = MaskGenerator(RES, families=["centre"])(0)
    Image.fromarray(known.astype(np.uint8) * 255, mode="L").save(tmp_path / "centre.png")
    ckpt = trained["emoji64_inpaint"] / "checkpoints" / "last.ckpt"
    summary = _sample(compose_cfg, ckpt, tmp_path / "out", f"inputs={tmp_path / 'hand.png'}",
                      f"masks={tmp_path / 'centre.png'}")  # fmt: skip
    assert summary["known_region_bit_exact"] is True and summary["num_samples"] == 2
    assert summary["mean_hole_ratio"] == 0.25
    on_white = np.asarray(composite_on_background(rgba, (255, 255, 255)))
    for k in range(2):
        out = np.asarray(Image.open(tmp_path / "out" / "images" / f"hand_{k}.png"))
        assert out.shape == (RES, RES, 3) and np.array_equal(out[known], on_white[known])  # composited on white
    assert (tmp_path / "out" / "grids" / "hand.png").is_file()
    # without masks=: the model's training generator, its part family left out (a PNG has no part map)
    summary = _sample(compose_cfg, ckpt, tmp_path / "out2", f"inputs={tmp_path / 'hand.png'}")
    assert summary["known_region_bit_exact"] is True


def test_sample_cli_draws_an_emoji_from_a_part_map_png(trained, emoji_root, compose_cfg, tmp_path):
    root, _ = emoji_root
    ds = EmojiDataset(root, resolution=RES, split="all", part_maps=True, prepare=False)
    part_png = ds._part_paths[0]  # the dataset's own palette PNG: pixel value = class id
    assert Image.open(part_png).mode == "P"
    ckpt = trained["emoji64_semantic"] / "checkpoints" / "last.ckpt"
    summary = _sample(compose_cfg, ckpt, tmp_path / "out", f"semantic={part_png}", "cfg_scale=2.0")
    assert summary["num_samples"] == 2 and summary["known_region_bit_exact"] is None
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        f"{part_png.stem}_{k}.png" for k in range(2)
    ]


def test_smoke_configs_match_the_experiment_apart_from_size(compose_cfg, emoji_root):
    """The tiny runs above change the size only: the condition settings are the experiments' own."""
    root, svg_dir = emoji_root
    for experiment in ("emoji64_semantic", "emoji64_inpaint"):
        full = compose_cfg("train", [f"+experiment={experiment}"])
        tiny = compose_cfg("train", [f"+experiment={experiment}", *_smoke_overrides(root, svg_dir)])
        a, b = (OmegaConf.to_container(c.condition) for c in (full, tiny))
        a.pop("resolution"), b.pop("resolution")
        assert a == b and tiny.data.dataset.part_maps


def test_measure_script_scores_both_models_on_held_out_emoji(trained, emoji_root, tmp_path):
    """experiments/emoji_spatial/measure.py end to end on the tiny models (no FID: no Inception pass)."""
    import importlib.util

    root, _ = emoji_root
    spec = importlib.util.spec_from_file_location("measure", ROOT / "experiments" / "emoji_spatial" / "measure.py")
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    measure.main(
        {
            "semantic": str(trained["emoji64_semantic"] / "checkpoints" / "last.ckpt"),
            "inpaint": str(trained["emoji64_inpaint"] / "checkpoints" / "last.ckpt"),
            "data_root": str(root),
            "resolution": str(RES),
            "cache_dir": str(tmp_path / "cache"),
            "segmenter_steps": "5",
            "steps": "2",
            "cfg": "1.0,2.0",
            "fid": "false",
            "batch_size": "3",
            "out_dir": str(tmp_path / "out"),
            "results": str(tmp_path / "results.json"),
            "figures_dir": str(tmp_path),
        }
    )
    results = json.loads((tmp_path / "results.json").read_text())
    n = results["held_out"]["num_images"]
    assert n == 4
    ceiling = results["segmenter"]["real_held_out"]
    assert ceiling["num_images"] == n and 0.0 <= ceiling["miou"] <= 1.0 and "line" in ceiling["miou_per_class"]
    for key in ("reconstruction_ceiling", "cfg_1.0", "cfg_2.0"):
        assert 0.0 <= results["semantic"][key]["miou"] <= 1.0
    assert results["semantic"]["cfg_2.0"]["nfe"] and results["semantic"]["cfg_1.0"]["seconds"] >= 0
    for family in ("strokes", "boxes", "half", "centre", "part"):
        entry = results["inpaint"][family]
        assert entry["known_region_bit_exact"] is True and 0.0 < entry["mean_hole_ratio"] < 1.0
        assert entry["fid_kid"] is None
    assert (
        results["inpaint"]["centre"]["mean_hole_ratio"] == 0.25 and results["inpaint"]["half"]["mean_hole_ratio"] == 0.5
    )
    # grids: semantic 4 rows (map | 4 samples | real), inpaint 2 rows per family (masked | 4 | original)
    size = lambda rows: (2 * (6 * (RES + 2) + 2), 2 * (rows * (RES + 2) + 2))  # noqa: E731 - 2 px padding, 2x
    assert Image.open(tmp_path / "semantic_grid.png").size == size(4)
    assert Image.open(tmp_path / "inpaint_grid.png").size == size(10)
