"""SampleMetricsCallback scores what ``latent_flow.evaluate`` scores: uint8-quantised images (FD-shapes path)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

import latent_flow.evaluation.oracle as oracle_mod
from latent_flow.training.callbacks import SampleMetricsCallback
from latent_flow.utils.images import to_uint8


def _evaluate_pixels(images: torch.Tensor) -> torch.Tensor:
    """What ``evaluate`` scores: the PNG's uint8 pixels read back as ``u8 / 127.5 - 1``."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_fd_shapes_callback_scores_uint8_quantised_images(monkeypatch, tmp_path):
    torch.manual_seed(0)
    oracle = oracle_mod.ShapesOracle(resolution=32).eval()
    monkeypatch.setattr(oracle_mod, "load_or_train_oracle", lambda cache_dir, resolution, **kw: oracle)
    seen: dict[str, torch.Tensor] = {}
    fd, acc = oracle_mod.fd_shapes, oracle_mod.oracle_metrics_on_samples

    def fd_spy(o, images, ref):
        seen["fd"] = images.clone()
        return fd(o, images, ref)

    def acc_spy(o, images, **kw):
        seen["acc"] = images.clone()
        return acc(o, images, **kw)

    monkeypatch.setattr(oracle_mod, "fd_shapes", fd_spy)
    monkeypatch.setattr(oracle_mod, "oracle_metrics_on_samples", acc_spy)
    n = 6
    decoded = torch.rand(n, 3, 32, 32) * 2.2 - 1.1  # decodes are continuous (and may leave [-1, 1])
    cb = SampleMetricsCallback(
        every_n_steps=1,
        num_samples=n,
        batch_size=n,
        sampler={"name": "euler", "steps": 1},
        cache_dir=str(tmp_path),
        metrics_path=str(tmp_path / "metrics.json"),
    )
    monkeypatch.setattr(cb, "_sample", lambda pl_module, indices, labels: (decoded[indices].clone(), 1))
    module = SimpleNamespace(
        hparams={"data": {"name": "shapes", "resolution": 32}},
        device=torch.device("cpu"),
        num_classes=5,
        condition=SimpleNamespace(uses_label=True, spatial_channels=0),
        log=lambda key, value, **kw: logged.__setitem__(key, value),
    )
    logged: dict[str, float] = {}
    trainer = SimpleNamespace(
        global_step=3,
        is_global_zero=True,
        global_rank=0,
        world_size=1,
        loggers=[],
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )
    metrics = cb._evaluate(trainer, module)
    expected = _evaluate_pixels(decoded)
    assert not torch.equal(expected, decoded)
    assert torch.equal(seen["fd"], expected) and torch.equal(seen["acc"], expected)
    # the pixels are on the uint8 grid, so the PNGs of `evaluate` give the same score
    assert np.array_equal(to_uint8(seen["fd"]), to_uint8(decoded))
    reference = oracle_mod.oracle_features(oracle, oracle_mod.real_images(n, 32, cb.reference_seed))
    assert metrics["eval/fd_shapes"] == fd(oracle, expected, reference)
    assert logged == metrics  # logged with pl_module.log (the monitors see it)
