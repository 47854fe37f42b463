"""Gradient clipping with a fused AdamW (optim.fused=true) under bf16 autocast, fp16 and fp32."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from latent_flow.training.module import LatentFlowModule


def _attached(precision: str, fused: bool):
    module = LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition={"name": "label", "label_dropout": 0.0},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3, "fused": fused},
        ema=None,
        latent_shape=(4, 8, 8),
        num_classes=5,
    )
    trainer = pl.Trainer(accelerator="cpu", precision=precision, max_steps=10, logger=False, enable_checkpointing=False)
    module.trainer = trainer
    optimizer = module.configure_optimizers()["optimizer"]
    gen = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 10
    return module, optimizer


def _norm(module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
@pytest.mark.parametrize("fused", [True, False])
def test_clipping_by_norm_and_value(precision, fused):
    module, optimizer = _attached(precision, fused)
    assert bool(optimizer.defaults["fused"]) is fused
    assert _norm(module) > 100
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert _norm(module) == pytest.approx(1.0, rel=1e-4)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm="value")
    assert max(p.grad.abs().max().item() for p in module.parameters()) <= 0.01
    before = [p.detach().clone() for p in module.parameters()]
    optimizer.step()  # the fused kernel runs on the CPU
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_fp16_scaling_with_a_fused_optimizer_still_refuses_to_clip():
    # 16-mixed needs a GPU (Lightning turns it into bf16-mixed on the CPU): give the plugin fp16's loss scaler
    module, optimizer = _attached("bf16-mixed", fused=True)
    module.trainer.precision_plugin.scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="fused"):
        module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
