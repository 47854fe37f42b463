"""Issue #27 items 3 and 4 (LACE on real emoji) end to end on tiny settings: a few real OpenMoji SVGs at 32 px
with attributes, an unconditional flow (+experiment=emoji64_uncond) trained for 2 steps in pixel space (no
autoencoder weights), latent attribute classifiers (+experiment=emoji64_classifier) whose held-out combinations are
absent from every training batch, experiments/emoji_compositional/evaluate.py writing its rows, grids and edits,
and ``python -m latent_flow.edit`` on a held-out emoji."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TRAIN, compose
from latent_flow.compositional.classifier import LatentAttributeClassifier
from latent_flow.compositional.training import holdout_mask
from latent_flow.data.emoji import EmojiDataset, find_openmoji_svg_dir, prepare_emoji

RES = 32
VAL_FRACTION = 0.3  # held out (split by design): construction worker, person raising hand, butterfly, face, apple
ROOT = Path(__file__).resolve().parents[2]
SVGS = [
    # training side: man / woman with skin tones and hair (woman, dark, red hair: the held-out skin=dark & hair=red),
    # animals (a whale and a dolphin: blue), a flag, a waving hand, a car
    "1F468", "1F468-1F3FB", "1F468-1F3FF", "1F469", "1F469-1F3FF", "1F469-200D-1F9B0", "1F469-1F3FF-200D-1F9B0",
    "1F468-200D-1F9B3", "1F415", "1F40B", "1F42C", "1F1EB-1F1F7", "1F44B-1F3FF", "1F697",
    # held-out side
    "1F477", "1F477-1F3FB", "1F477-1F3FF", "1F64B", "1F64B-1F3FF-200D-2642-FE0F", "1F98B", "1F600", "1F34E",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions on a shared CPU: one intra-op thread is faster than two (conftest sets two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def emoji(tmp_path_factory) -> tuple[Path, Path]:
    installed, _ = find_openmoji_svg_dir()
    svg_dir = tmp_path_factory.mktemp("svgs")
    for name in SVGS:
        shutil.copy(installed / f"{name}.svg", svg_dir / f"{name}.svg")
    root = tmp_path_factory.mktemp("emoji")
    prepare_emoji(root, ["openmoji"], RES, source_paths={"openmoji": svg_dir}, progress=False)
    return root, svg_dir


def _data(root: Path, svg_dir: Path) -> list[str]:
    return [
        f"data.dataset.root={root}",
        f"+data.dataset.source_paths.openmoji={svg_dir}",
        f"data.dataset.resolution={RES}",
        f"data.dataset.val_fraction={VAL_FRACTION}",
        "data.num_workers=0",
    ]


@pytest.fixture(scope="module")
def flow(emoji, tmp_path_factory) -> Path:
    """+experiment=emoji64_uncond, 2 steps, pixel space: its last.ckpt."""
    from latent_flow.train import run_training

    root, svg_dir = emoji
    replaced = ("data.dataset.num_samples", "autoencoder.", "backbone=", "optim.warmup_steps", "samples.per_class")
    overrides = [
        "+experiment=emoji64_uncond",
        *(o for o in TINY_TRAIN if not o.startswith(replaced)),
        *_data(root, svg_dir),
        "data.batch_size=4",
        "data.val_fraction=0.2",
        "autoencoder=pixel_s2d",
        "backbone=unet_t",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "optim.warmup_steps=1",
        "samples.per_class=2",
    ]
    cfg = compose("train", overrides, tmp_path_factory.mktemp("flow"))
    assert cfg.condition.name == "none" and cfg.samples.cfg_scale == 1.0
    summary = run_training(cfg)
    assert summary["status"] == "finished"
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def classifier(emoji, flow, tmp_path_factory):
    """+experiment=emoji64_classifier on the tiny flow; records the targets of every training batch."""
    from latent_flow.cli.train_classifier import run_classifier_training

    root, svg_dir = emoji
    seen: list[np.ndarray] = []
    original = LatentAttributeClassifier.loss

    def recording_loss(self, outputs, targets, names):
        if self.training:
            seen.append(targets.cpu().numpy().copy())
        return original(self, outputs, targets, names)

    mp = pytest.MonkeyPatch()
    mp.setattr(LatentAttributeClassifier, "loss", recording_loss)
    try:
        cfg = compose(
            "train_classifier",
            [
                "+experiment=emoji64_classifier",
                f"flow_ckpt_path={flow}",
                *_data(root, svg_dir),
                "classifier.width=8",
                "classifier.time_dim=16",
                "train.steps=6",
                "train.batch_size=16",
                "train.warmup_steps=1",
                "train.log_every=3",
                "train.val_fraction=0.1",
                "progress=false",
                "num_threads=1",
            ],
            tmp_path_factory.mktemp("classifier"),
        )
        summary = run_classifier_training(cfg)
    finally:
        mp.undo()
    return Path(summary["checkpoint"]), summary, np.concatenate(seen), cfg


def test_held_out_combinations_never_reach_a_training_batch(emoji, classifier):
    root, _ = emoji
    path, summary, batches, cfg = classifier
    ds = EmojiDataset(root, resolution=RES, split="train", val_fraction=VAL_FRACTION, attributes=True, prepare=False)
    names, values = ds.attribute_names, ds.attribute_values
    rules = [dict(r) for r in cfg.holdout]
    assert rules == [{"group": "animals", "color": "blue"}, {"skin": "dark", "hair": "red"},
                     {"skin": "dark", "gender": "female"}]  # fmt: skip
    assert holdout_mask(ds.attributes, names, values, rules).sum() >= 2  # the woman, dark skin (+ red hair)
    assert summary["num_items"]["heldout"] == int(holdout_mask(ds.attributes, names, values, rules).sum())
    assert len(batches) == 6 * min(16, summary["num_items"]["train"])  # every batch of the 6 steps recorded
    assert not holdout_mask(batches, names, values, rules).any()
    assert summary["holdout"] == rules and "skin=dark & hair=red" in summary["metrics"]["heldout"]
    # unknown attribute names and values are refused with the valid ones named
    with pytest.raises(ValueError, match="unknown attribute 'hat' in holdout; valid attributes: group, skin"):
        holdout_mask(ds.attributes, names, values, [{"hat": "red"}])
    with pytest.raises(ValueError, match="unknown value 'purple' for attribute 'hair' in holdout; valid values: none"):
        holdout_mask(ds.attributes, names, values, [{"skin": "dark", "hair": "purple"}])


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "emoji_lace", ROOT / "experiments" / "emoji_compositional" / "evaluate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_script_writes_rows_grids_and_edits(emoji, flow, classifier, tmp_path):
    root, _ = emoji
    path, *_ = classifier
    script = _load_script()
    args = [
        "--flow", str(flow), "--classifier", str(path), "--data-root", str(root), "--resolution", str(RES),
        "--val-fraction", str(VAL_FRACTION), "--cache-dir", str(tmp_path / "cache"), "--judge-steps", "3",
        "--num", "3", "--scales", "2", "--steps", "2", "--batch-size", "2", "--no-fid", "--no-inception",
        "--requests", "skin=dark", "skin=dark & hair=red", "skin=light | skin=dark", "!(group=people)",
        "--edits", "skin=dark", "hair=red", "--edit-num", "2", "--out-dir", str(tmp_path / "out"),
        "--results", str(tmp_path / "results.json"), "--figures-dir", str(tmp_path),
    ]  # fmt: skip
    data = script.main(args)
    rows = data["rows"]
    assert set(rows) == {f"{m} | {e}" for m in ("unguided", "lace 2")
                         for e in ("skin=dark", "skin=dark & hair=red", "skin=light | skin=dark", "!(group=people)")}  # fmt: skip
    held = rows["lace 2 | skin=dark & hair=red"]
    assert held["heldout_rule"] == "skin=dark & hair=red" and rows["lace 2 | skin=dark"]["heldout_rule"] is None
    assert set(held["per_term"]) == {"skin=dark", "hair=red"} and 0.0 <= held["accuracy"] <= 1.0
    assert held["nfe"] == 4 and held["grad_evals"] > 0 and rows["unguided | skin=dark"]["grad_evals"] == 0
    assert all(sum(v) == 3 for v in held["judged_values"].values())  # every sample read by every judge
    assert set(data["judges"]) == {"group", "skin", "hair", "gender", "color"}
    assert data["judges"]["skin"]["held_out"]["num_images"] == data["data"]["held_out_images"]
    assert (tmp_path / "grid_lace.png").is_file() and (tmp_path / "grid_edit.png").is_file()
    (edit,) = data["edits"].values()
    assert edit["num_sources"] == 2 and edit["grid_columns"] == ["source", "reconstruction", "skin=dark", "hair=red"]
    assert set(edit["per_edit"]["hair=red"]["others_kept"]) == {"group", "skin", "gender", "color"}
    assert Image.open(tmp_path / "grid_edit.png").size == (2 * (4 * (RES + 2) + 2), 2 * (2 * (RES + 2) + 2))
    # resumable: a second call samples nothing again; the table prints every row

    def no_sampling(*a, **k):
        raise AssertionError("a measured row was sampled again")

    script.sample_row = no_sampling
    script.edit_latents = no_sampling
    again = script.main(args)
    assert again["rows"] == rows and json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    table = script.tables(again)
    assert "**skin=dark & hair=red**" in table and "| hair |" in table and "(reconstruction)" in table


def test_edit_cli_on_a_held_out_emoji(emoji, flow, classifier, tmp_path):
    from latent_flow.cli.edit import run_edit

    root, _ = emoji
    path, *_ = classifier
    held = EmojiDataset(root, resolution=RES, split="val", val_fraction=VAL_FRACTION, prepare=False)
    source = tmp_path / "source.png"
    held.load_image(0).save(source)
    cfg = compose("edit", [f"ckpt_path={flow}", f"classifier_ckpt_path={path}", f"input={source}",
                           "edits=['skin=dark','hair=red']", "sampler.steps=2", "guidance_scale=2"], tmp_path)  # fmt: skip
    summary = run_edit(cfg)
    out = Path(cfg.out_dir)
    assert [s["edit"] for s in summary["steps"]] == ["skin=dark", "hair=red"]
    assert set(summary["readings"]["edit_02"]) == {"group", "skin", "hair", "gender", "color"}
    assert (out / "strip.png").is_file() and (out / "edit_02.png").is_file()


@pytest.mark.parametrize("experiment", ["shapes_classifier", "emoji64_classifier"])
def test_classifier_experiments_compose_for_train_classifier(experiment, compose_cfg):
    """Classifier experiments belong to latent_flow.train_classifier (test_configs leaves them out of train)."""
    cfg = compose_cfg("train_classifier", [f"+experiment={experiment}", "flow_ckpt_path=flow.ckpt"])
    assert cfg.task_name == experiment and len(cfg.holdout) >= 2 and cfg.train.steps == 4000
    if experiment == "emoji64_classifier":
        assert cfg.data.name == "emoji" and cfg.data.dataset.attributes and not cfg.data.flip
        assert cfg.data.dataset.split == "train" and cfg.data.dataset.split_by == "design"
        assert cfg.classifier.width == 64 and [sorted(r) for r in cfg.holdout] == [
            ["color", "group"], ["hair", "skin"], ["gender", "skin"]]  # fmt: skip
