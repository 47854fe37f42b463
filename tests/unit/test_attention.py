"""The backbones' attention: which kernel runs, and that it computes the definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latent_flow.backbones.attention import CPU_FP32_MAX_TOKENS, attends_in_fp32, attention
from latent_flow.backbones.unet import unet_preset


def _reference(q, k, v):
    # the definition, in float64
    q, k, v = (x.double() for x in (q, k, v))
    return ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1) @ v


def _qkv(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def test_fp32_cpu_is_sdpa_exactly():
    q, k, v = _qkv((2, 4, 16, 8), torch.float32)
    assert not attends_in_fp32(q)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_cpu_attends_in_fp32(dtype):
    q, k, v = _qkv((3, 4, 16, 16), dtype)
    assert attends_in_fp32(q)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in bf16-mixed training; must not re-lower it
        out = attention(q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    ref = _reference(q, k, v)
    # only the final rounding to the input dtype: (nearly) every element is the rounded definition
    assert (out == ref.to(dtype)).float().mean() > 0.99
    assert (out.double() - ref).abs().max() <= (F.scaled_dot_product_attention(q, k, v).double() - ref).abs().max()
    # gradients agree with the float64 definition's to the inputs' rounding
    out.float().pow(2).sum().backward()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    _reference(q64, k64, v64).pow(2).sum().backward()
    for x, x64 in zip((q, k, v), (q64, k64, v64)):
        assert (x.grad.double() - x64.grad).abs().max() < 4 * torch.finfo(dtype).eps * x64.grad.abs().max() + 1e-3


def test_long_sequences_stay_in_the_input_dtype():
    q = torch.zeros(1, 1, CPU_FP32_MAX_TOKENS + 1, 8, dtype=torch.bfloat16)
    assert not attends_in_fp32(q)
    assert attends_in_fp32(q[:, :, :CPU_FP32_MAX_TOKENS])
    assert attention(q, q, q).dtype == torch.bfloat16


def test_unet_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    net = unet_preset("UNet-XS", input_size=16, in_channels=2, num_classes=5).eval()
    for p in net.parameters():  # the zero-initialised projections would hide the attention
        p.data.normal_(0, 0.05)
    x, t, y = torch.randn(4, 2, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 5])
    with torch.no_grad():
        ref = net(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t, y)
    assert ((out.float() - ref).norm() / ref.norm()) < 0.05
