"""Gradient clipping with a fused AdamW (optim.fused=true) under bf16 autocast, fp16 and fp32: flow and refiner training."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from latent_flow.flowturbo import RefinerModule
from latent_flow.training.module import LatentFlowModule


def _flow_module(fused: bool, backbone: str = "UNet-T"):
    return LatentFlowModule(
        backbone={"name": backbone},
        condition={"name": "label", "label_dropout": 0.0},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3, "fused": fused},
        ema=None,
        latent_shape=(4, 8, 8),
        num_classes=5,
    )


def _refiner_module(fused: bool):
    base = _flow_module(False, backbone="DiT-XS/2")
    return RefinerModule(base_ckpt_path="unused.ckpt", optim={"lr": 1e-3, "fused": fused}, base_model=base)


def _attached(precision: str, fused: bool, build=_flow_module):
    module = build(fused)
    trainer = pl.Trainer(accelerator="cpu", precision=precision, max_steps=10, logger=False, enable_checkpointing=False)
    module.trainer = trainer
    optimizer = module.configure_optimizers()["optimizer"]
    gen = torch.Generator().manual_seed(0)
    for p in _trained(optimizer):
        p.grad = torch.randn(p.shape, generator=gen) * 10
    return module, optimizer


def _trained(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _norm(optimizer) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in _trained(optimizer)])).item()


@pytest.mark.parametrize("build", [_flow_module, _refiner_module], ids=["flow", "refiner"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
@pytest.mark.parametrize("fused", [True, False])
def test_clipping_by_norm_and_value(precision, fused, build):
    module, optimizer = _attached(precision, fused, build)
    assert bool(optimizer.defaults["fused"]) is fused
    assert _norm(optimizer) > 100
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert _norm(optimizer) == pytest.approx(1.0, rel=1e-4)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm="value")
    assert max(p.grad.abs().max().item() for p in _trained(optimizer)) <= 0.01
    before = [p.detach().clone() for p in _trained(optimizer)]
    optimizer.step()  # the fused kernel runs on the CPU
    assert any(not torch.equal(b, p) for b, p in zip(before, _trained(optimizer)))


def test_fp16_scaling_with_a_fused_optimizer_still_refuses_to_clip():
    # 16-mixed needs a GPU (Lightning turns it into bf16-mixed on the CPU): give the plugin fp16's loss scaler
    module, optimizer = _attached("bf16-mixed", fused=True)
    module.trainer.precision_plugin.scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="fused"):
        module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
