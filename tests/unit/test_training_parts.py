"""EMA, learning-rate schedule and condition encoders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latent_flow.conditioning import LabelCondition, NoCondition, build_condition
from latent_flow.training.ema import EMA
from latent_flow.training.lr_schedule import warmup_cosine_factor


def test_ema_fixed_decay_matches_closed_form():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(5):
        ema.update(model)
    # w_ema = 1 - 0.9^5 after five updates towards 1 from 0
    assert torch.allclose(ema.module.weight, torch.full((2, 3), 1 - 0.9**5))
    assert int(ema.num_updates) == 5


def test_ema_warmup_ramps_decay():
    ema = EMA(nn.Linear(2, 2), decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates.fill_(90)
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates.fill_(10**7)
    assert ema.current_decay() == pytest.approx(0.9999)


def test_ema_copy_stays_in_eval_and_frozen():
    ema = EMA(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)), decay=0.99)
    ema.train()
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), decay=1.0)


def test_lr_warmup_then_cosine():
    f = lambda s: warmup_cosine_factor(s, warmup_steps=10, total_steps=110, cosine=True, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert warmup_cosine_factor(500, warmup_steps=10, total_steps=None, cosine=False) == 1.0
    with pytest.raises(ValueError, match="max_steps"):
        warmup_cosine_factor(20, warmup_steps=10, total_steps=None, cosine=True)


def test_label_condition_null_and_inputs():
    cond_enc = build_condition("label", num_classes=5)
    assert isinstance(cond_enc, LabelCondition) and cond_enc.spatial_channels == 0
    cond = cond_enc.from_batch({"label": torch.tensor([0, 3])})
    assert torch.equal(cond_enc.null(cond)["label"], torch.tensor([5, 5]))
    x = torch.randn(2, 4, 8, 8)
    x_in, label = cond_enc.network_inputs(x, cond)
    assert x_in is x and torch.equal(label, torch.tensor([0, 3]))
    assert isinstance(build_condition("none"), NoCondition)
    with pytest.raises(ValueError, match="num_classes=0"):
        build_condition("label", num_classes=0)
    with pytest.raises(ValueError, match="unknown condition 'mask'"):
        build_condition("mask")


def test_guided_training_callbacks_refuse_an_unconditional_model_before_training():
    from types import SimpleNamespace

    from latent_flow.training.callbacks import check_guidance

    uncond = SimpleNamespace(condition=NoCondition())
    with pytest.raises(ValueError, match=r"sample grids: cfg_scale=2.0 .*condition=none.*samples.cfg_scale=1.0"):
        check_guidance(uncond, 2.0, "sample grids")
    check_guidance(uncond, 1.0, "sample grids")  # no guidance: fine
    check_guidance(SimpleNamespace(condition=LabelCondition(num_classes=5)), 2.0, "sample grids")
