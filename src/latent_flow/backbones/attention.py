"""Scaled dot-product attention for the backbones, with the fast kernel chosen per device and dtype.

``F.scaled_dot_product_attention`` everywhere, with two exceptions:

- bf16 / fp16 tensors on the CPU with at most :data:`CPU_FP32_MAX_TOKENS` tokens are upcast and
  attended in fp32. PyTorch's CPU flash kernel is slower in bf16 than in fp32 at these sizes: forward +
  backward, 2.2-2.3x at 16 tokens and 3.7-3.8x at 64, about the same at 256, 0.73x at 1,024 (2-core
  AVX-512 CPU, torch 2.14, 2026-12-06, ``benchmarks/attention_cpu.py``); the quick start's bf16 UNet-XS
  step (attention at 16 tokens) runs 1.04-1.05x faster. The fp32 result is also the more accurate one;
  the output is cast back to the input dtype, so callers see no difference but speed.
- inputs that carry a forward-mode tangent (inside ``torch.func.jvp`` or a
  ``torch.autograd.forward_ad`` dual level, e.g. the flow-map objective's Jacobian-vector product,
  :mod:`latent_flow.flow.meanflow`) go through :func:`math_attention`, the explicit
  ``softmax(q k^T / sqrt(d)) v``: PyTorch's fused kernels have no forward-mode derivative (torch
  2.14.1 on the CPU raises ``NotImplementedError`` for ``_scaled_dot_product_flash_attention_for_cpu``
  in float64, float32 and bf16; the CUDA flash / memory-efficient kernels lack it too). The math path
  is built from differentiable primitives, so both the tangent and the backward pass through it exist.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CPU_FP32_MAX_TOKENS", "attention", "attends_in_fp32", "has_forward_tangent", "math_attention"]

#: Longest sequence for which reduced-precision CPU attention is computed in fp32 (beyond it the
#: bf16 kernel is as fast or faster).
CPU_FP32_MAX_TOKENS = 256


def attends_in_fp32(q: Tensor) -> bool:
    """Whether :func:`attention` upcasts ``q`` ``(..., tokens, head_dim)`` (and ``k``, ``v``) to fp32."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-2] <= CPU_FP32_MAX_TOKENS


def has_forward_tangent(*tensors: Tensor) -> bool:
    """Whether any tensor carries a forward-mode tangent (``torch.func.jvp`` or a forward-AD dual level),
    or is wrapped by another ``torch.func`` transform (``vmap``): the fused kernels would refuse it.
    ``False`` while ``torch.compile`` traces (a compiled graph carries no forward-mode tangents)."""
    if torch.compiler.is_compiling():
        return False
    for x in tensors:
        if torch._C._functorch.is_functorch_wrapped_tensor(x) or fwAD.unpack_dual(x).tangent is not None:
            return True
    return False


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(head_dim)) v`` from differentiable primitives (forward- and reverse-mode AD)."""
    scale = q.shape[-1] ** -0.5
    weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    return weights @ v


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(head_dim)) v`` over ``(..., tokens, head_dim)`` tensors (no mask, no dropout)."""
    kernel = math_attention if has_forward_tangent(q, k, v) else F.scaled_dot_product_attention
    if not attends_in_fp32(q):
        return kernel(q, k, v)
    with torch.autocast("cpu", enabled=False):
        return kernel(q.float(), k.float(), v.float()).to(q.dtype)
