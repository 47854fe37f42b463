"""evaluate and the FID callback refuse a reference of other data / resolution, and every check runs before
the first sample (the model is built in process; sampling is replaced by a spy that stops the run)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import latent_flow.cli.evaluate as evaluate_cli
from latent_flow.data import ShapesDataset
from latent_flow.evaluation.reference import ReferenceStatsError, build_feature_extractor, compute_reference

PIXELS = {
    "_target_": "torch.nn.Sequential",
    "_args_": [{"_target_": "torch.nn.AdaptiveAvgPool2d", "output_size": 4}, {"_target_": "torch.nn.Flatten"}],
}


class Sampled(Exception):
    """Raised by the sampling spy: the evaluation got as far as drawing samples."""


def _model(name: str = "shapes", resolution: int = 32):
    from latent_flow.training.module import LatentFlowModule

    return LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=(4, 8, 8),
        num_classes=5,
        data={"name": name, "resolution": resolution},
    ).eval()


def _reference(out_dir, *, data: str = "shapes", resolution: int = 32, n: int = 8):
    dataset = ShapesDataset(num_samples=n, resolution=resolution, seed=3)
    compute_reference(
        dataset,
        np.arange(n),
        build_feature_extractor(PIXELS),
        out_dir,
        extractor_spec=PIXELS,
        info={"data": data, "resolution": resolution, "split": "all"},
        save_images=True,
        progress=False,
    )
    return out_dir


@pytest.fixture
def evaluate(compose_cfg, tmp_path, monkeypatch):
    """``evaluate(overrides, model=...)`` runs ``run_evaluation`` on an in-process model up to its sampling."""
    calls = []

    def spy(cfg, model, image_dir, rank, world_size):
        calls.append(cfg.num_samples)
        raise Sampled

    monkeypatch.setattr(evaluate_cli, "_generate", spy)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"stands for a checkpoint (hashed into the recipe, never read)")

    def run(overrides, model=None):
        monkeypatch.setattr(evaluate_cli, "load_model", lambda path, device: model or _model())
        cfg = compose_cfg(
            "evaluate",
            [
                f"ckpt_path={ckpt}",
                "num_samples=4",
                "feature_extractor=pixels",
                f"out_dir={tmp_path / 'ev'}",
                *overrides,
            ],
        )
        return evaluate_cli.run_evaluation(cfg)

    run.calls = calls
    return run


def test_reference_statistics_of_another_resolution_are_refused_before_sampling(evaluate, tmp_path):
    ref = _reference(tmp_path / "ref16", resolution=16)
    with pytest.raises(
        ReferenceStatsError, match=r"resolution: 16 in the reference, 32 here.*allow_reference_mismatch"
    ):
        evaluate(["metrics=[fid]", f"evaluation.reference_stats={ref}"])
    assert evaluate.calls == [] and not (tmp_path / "ev" / "images").exists()
    # told explicitly: it goes on to sampling
    with pytest.raises(Sampled):
        evaluate(["metrics=[fid]", f"evaluation.reference_stats={ref}", "evaluation.allow_reference_mismatch=true"])
    assert evaluate.calls == [4]


def test_reference_statistics_of_other_data_are_refused_before_sampling(evaluate, tmp_path):
    ref = _reference(tmp_path / "emoji", data="emoji")
    with pytest.raises(ReferenceStatsError, match="data: 'emoji' in the reference, 'shapes' here"):
        evaluate(["metrics=[fid,kid]", f"evaluation.reference_stats={ref}"])
    assert evaluate.calls == []
    # the model's own data and resolution: sampling starts
    with pytest.raises(Sampled):
        evaluate(["metrics=[fid,kid]", f"evaluation.reference_stats={_reference(tmp_path / 'shapes32')}"])


def test_reference_images_of_another_resolution_are_refused_before_sampling(evaluate, tmp_path):
    ref = _reference(tmp_path / "ref16", resolution=16)
    with pytest.raises(ReferenceStatsError, match="resolution: 16 in the reference, 32 here"):
        evaluate(["metrics=[fid]", f"evaluation.reference_npz={ref / 'reference.npz'}"])
    assert evaluate.calls == []


def test_every_other_refusal_comes_before_sampling_too(evaluate, tmp_path):
    ref = _reference(tmp_path / "ref")
    cases = [
        (["metrics=[fdi]"], ValueError, r"unknown metrics \['fdi'\]"),
        (["metrics=[fid]"], ValueError, "need a reference"),
        (["metrics=[miou]"], ValueError, "miou needs an inpainting / semantic model"),
        # another extractor than the reference's (once refused only after all samples were drawn)
        (
            [
                "metrics=[fid]",
                f"evaluation.reference_stats={ref}",
                "~evaluation.feature_extractor._args_",
                "evaluation.feature_extractor._target_=torch.nn.Flatten",
            ],
            ReferenceStatsError,
            "computed with feature extractor torch.nn.Sequential, but this evaluation uses torch.nn.Flatten",
        ),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            evaluate(overrides)
    assert evaluate.calls == []


def test_the_fid_callback_refuses_statistics_of_another_resolution_at_fit_start(tmp_path):
    from latent_flow.training.callbacks import SampleMetricsCallback

    ref = _reference(tmp_path / "ref16", resolution=16)
    common = dict(
        every_n_steps=1,
        sampler={"name": "euler", "steps": 1},
        cache_dir=str(tmp_path),
        metrics_path=str(tmp_path / "m.json"),
        metrics=["fid"],
        feature_extractor=PIXELS,
        reference_stats=str(ref),
    )
    trainer = SimpleNamespace(is_global_zero=True, global_rank=0, world_size=1)
    with pytest.raises(ReferenceStatsError, match="resolution: 16 in the reference, 32 here.*callbacks.sample_metrics"):
        SampleMetricsCallback(**common).on_fit_start(trainer, _model())
    allowed = SampleMetricsCallback(**common, allow_reference_mismatch=True)
    allowed.on_fit_start(trainer, _model())
    assert allowed._feature_reference.features.shape == (8, 48)
    SampleMetricsCallback(**common).on_fit_start(trainer, _model(resolution=16))  # the model's own resolution
