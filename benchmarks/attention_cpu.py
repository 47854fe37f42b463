"""Attention on the CPU in bf16: PyTorch's SDPA kernel in bf16 against the same kernel on fp32 copies.

What `latent_flow.backbones.attention` chooses: for bf16 / fp16 tensors on the CPU with at most
CPU_FP32_MAX_TOKENS tokens it upcasts to fp32. This prints forward + backward milliseconds of both,
and of the quick start's whole UNet-XS training step (batch 128, bf16 autocast) with each, kernels
alternated in rounds (best round kept) so background load hits both alike:

    .venv/bin/python benchmarks/attention_cpu.py
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

from latent_flow.backbones import attention as attention_lib


def _best_ms(fn, steps: int, rounds: int, warmup: int = 2) -> float:
    best = float("inf")
    for _ in range(rounds):
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best


@contextlib.contextmanager
def _fp32_up_to(max_tokens: int):
    """Run :func:`attention_lib.attention` with another CPU_FP32_MAX_TOKENS (0: always the bf16 kernel)."""
    limit = attention_lib.CPU_FP32_MAX_TOKENS
    attention_lib.CPU_FP32_MAX_TOKENS = max_tokens
    try:
        yield
    finally:
        attention_lib.CPU_FP32_MAX_TOKENS = limit


def _attention_pass(shape, max_tokens: int):
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def run():
        with _fp32_up_to(max_tokens):
            attention_lib.attention(q, k, v).float().sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward, bf16 inputs")
    shapes = [(128, 4, 16, 16), (128, 4, 64, 16), (32, 4, 256, 32), (8, 6, 256, 64), (4, 6, 1024, 64)]
    for shape in shapes:
        bf16 = _best_ms(_attention_pass(shape, 0), args.steps, args.rounds)
        fp32 = _best_ms(_attention_pass(shape, 1 << 30), args.steps, args.rounds)
        print(
            f"(batch, heads, tokens, head_dim) {str(shape):20s} SDPA bf16 {bf16:8.2f} ms   SDPA on fp32 copies "
            f"{fp32:8.2f} ms   {bf16 / fp32:5.2f}x",
            flush=True,
        )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quickstart_speed import flow_step

    step = flow_step(128, bf16=True)
    limit = attention_lib.CPU_FP32_MAX_TOKENS
    best = {"bf16 SDPA": float("inf"), "fp32 SDPA (the default)": float("inf")}
    for _ in range(args.rounds):
        for name, max_tokens in (("bf16 SDPA", 0), ("fp32 SDPA (the default)", limit)):
            with _fp32_up_to(max_tokens):
                best[name] = min(best[name], _best_ms(step, args.steps, 1))
    base = best["bf16 SDPA"]
    for name, ms in best.items():
        print(f"UNet-XS training step, batch 128, bf16 autocast, attention {name:24s} {ms:7.1f} ms  {base / ms:5.2f}x")


if __name__ == "__main__":
    main()
