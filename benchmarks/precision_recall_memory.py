"""Peak memory and time of precision / recall (k-NN manifolds) at N real vs N generated features.

    .venv/bin/python benchmarks/precision_recall_memory.py --num 10000 [--dim 2048] [--batch-size 1000]

Each measurement runs in a fresh subprocess and reports the growth of its peak resident memory
(``ru_maxrss``) over the features themselves, next to what the N x N float64 distance matrices
of the unbatched method would need (two of them at once: radii, then the cross distances).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(num: int, dim: int, batch_size: int) -> None:
    import torch

    from latent_flow.evaluation.metrics import precision_recall

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(num, dim, generator=gen, dtype=torch.float64)
    fake = torch.randn(num, dim, generator=gen, dtype=torch.float64) + 0.01  # a slightly shifted copy
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    precision, recall = precision_recall(real, fake, batch_size=batch_size)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "num": num,
                "dim": dim,
                "batch_size": batch_size,
                "seconds": round(seconds, 1),
                "peak_growth_mib": round((peak - base) / 1024, 1),
                "features_mib": round(2 * real.numel() * 8 / 2**20, 1),
                "precision": precision,
                "recall": recall,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.num, args.dim, args.batch_size)
        return
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--num",
            str(args.num),
            "--dim",
            str(args.dim),
            "--batch-size",
            str(args.batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    full_mib = 2 * args.num * args.num * 8 / 2**20
    print(f"precision/recall, N = {args.num:,} vs {args.num:,}, {args.dim}-d features, batch {args.batch_size}")
    print(f"  time: {result['seconds']} s   precision {result['precision']:.4f}  recall {result['recall']:.4f}")
    print(
        f"  peak memory beyond the inputs: {result['peak_growth_mib']} MiB "
        f"(inputs {result['features_mib']} MiB); unbatched N x N float64: {full_mib:,.0f} MiB"
    )
    scale = 50_000 / args.num
    print(
        f"  linear in N: ~{result['peak_growth_mib'] * scale:,.0f} MiB beyond the inputs expected at 50k "
        f"(inputs {result['features_mib'] * scale:,.0f} MiB; N x N would be {2 * 50_000**2 * 8 / 2**30:,.0f} GiB)"
    )


if __name__ == "__main__":
    main()
