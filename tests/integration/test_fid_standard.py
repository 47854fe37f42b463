"""FID between two image folders: ``python -m latent_flow.reference_stats`` + ``evaluate images_dir=``
against torch-fidelity's ``calculate_metrics`` on the same folders with the same network (its own
InceptionV3 module with weights converted from the bundled file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch_fidelity = pytest.importorskip("torch_fidelity")

from conftest import real_images  # noqa: E402
from latent_flow.evaluation.inception import torch_fidelity_state_dict  # noqa: E402
from latent_flow.utils.images import save_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N = 30


def write_folder(folder: Path, seed: int, shift: float) -> None:
    images = real_images(N, 32, seed=seed)
    images = (images * (1 - shift) + shift * torch.tensor([0.2, 0.5, 0.9])[:, None, None]).clamp(0, 1)
    u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(u8):
        save_png(img, folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_folders")
    write_folder(root / "a", seed=0, shift=0.0)
    write_folder(root / "b", seed=5, shift=0.15)
    return root


def test_fid_kid_pr_of_two_folders_equal_torch_fidelity(folders, compose_cfg, tmp_path):
    from latent_flow.evaluate import run_evaluation

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ref_dir = tmp_path / "ref_a"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "latent_flow.reference_stats",
            "data=image_folder",
            f"data.dataset.root={folders / 'a'}",
            "data.dataset.resolution=32",
            "data.num_workers=0",
            "split=all",
            f"out_dir={ref_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((ref_dir / "reference.json").read_text())
    assert info["num_images"] == N and info["feature_extractor"]["_target_"].endswith("inception.InceptionFeatures")

    cfg = compose_cfg(
        "evaluate",
        [
            f"images_dir={folders / 'b'}",
            f"evaluation.reference_stats={ref_dir}",
            "metrics=[fid,kid,precision_recall,is]",
            f"out_dir={tmp_path / 'eval'}",
        ],
    )
    ours = run_evaluation(cfg)["metrics"]
    assert ours["num_samples"] == N and ours["num_reference"] == N
    assert ours["is_mean"] is None and "classifier head" in ours["is_unavailable"]

    weights = tmp_path / "converted.pth"
    torch.save(torch_fidelity_state_dict(), weights)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(folders / "b"),
        input2=str(folders / "a"),
        fid=True,
        kid=True,
        cuda=False,
        cache=False,
        verbose=False,
        feature_extractor_weights_path=str(weights),
        kid_subset_size=N,
        kid_subsets=1,
        batch_size=20,
    )
    assert ours["fid"] > 1.0  # two different sets
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    # KID over the whole set (every subset of size N is the set itself): the same unbiased MMD^2
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-3)
    # (torch-fidelity's precision / recall live in VGG-16 space, prc=True; ours in the Inception space of
    # the ADM evaluator: checked against the brute-force definition in tests/unit/test_metrics.py)
    assert 0 <= ours["precision"] <= 1 and 0 <= ours["recall"] <= 1
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert np.isclose(written["metrics"]["fid"], ours["fid"])
