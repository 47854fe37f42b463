"""Scaled dot-product attention for the backbones, with the fast kernel chosen per device and dtype.

``F.scaled_dot_product_attention`` everywhere, with one exception: bf16 / fp16 tensors on the CPU
with at most :data:`CPU_FP32_MAX_TOKENS` tokens are upcast and attended in fp32. PyTorch's CPU
flash kernel is slower in bf16 than in fp32 at these sizes: forward + backward, 2.2-2.3x at 16
tokens and 3.7-3.8x at 64, about the same at 256, 0.73x at 1,024 (2-core AVX-512 CPU, torch 2.14,
2026-12-06, ``benchmarks/attention_cpu.py``); the quick start's bf16 UNet-XS step (attention at 16
tokens) runs 1.04-1.05x faster. The fp32 result is also the more accurate one; the output is
cast back to the input dtype, so callers see no difference but speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CPU_FP32_MAX_TOKENS", "attention", "attends_in_fp32"]

#: Longest sequence for which reduced-precision CPU attention is computed in fp32 (beyond it the
#: bf16 kernel is as fast or faster).
CPU_FP32_MAX_TOKENS = 256


def attends_in_fp32(q: Tensor) -> bool:
    """Whether :func:`attention` upcasts ``q`` ``(..., tokens, head_dim)`` (and ``k``, ``v``) to fp32."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-2] <= CPU_FP32_MAX_TOKENS


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(head_dim)) v`` over ``(..., tokens, head_dim)`` tensors (no mask, no dropout)."""
    if not attends_in_fp32(q):
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
