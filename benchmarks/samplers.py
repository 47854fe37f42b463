"""Sampler report: sampler x steps -> NFE, ms/image and FD-shapes for one checkpoint.

    .venv/bin/python benchmarks/samplers.py --ckpt outputs/train/RUN/checkpoints/last.ckpt

For checkpoints trained on `shapes` (FD-shapes with the cached shapes oracle, against real renders
of another seed; the floor is FD-shapes between two real sets of the same size). Every sampler
starts from the same per-index noise and labels (classes in turn); dopri5 runs at
atol = rtol = 1e-5, the LFM reference's default. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

DEFAULT_GRID = "euler:5,euler:10,euler:20,midpoint:5,midpoint:10,heun:5,heun:10,heun:25,dopri5:0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--grid", default=DEFAULT_GRID, help="name:steps,... (dopri5:0 = adaptive, atol=rtol=1e-5)")
    parser.add_argument("--cache-dir", default=os.environ.get("LATENT_FLOW_CACHE", ".cache"))
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from latent_flow.api import load_model
    from latent_flow.evaluation.oracle import (
        fd_shapes,
        fd_shapes_floor,
        load_or_train_oracle,
        oracle_features,
        oracle_metrics_on_samples,
        real_images,
    )
    from latent_flow.sampling.solvers import build_solver

    model = load_model(args.ckpt)
    resolution = model.autoencoder.downsample_factor * model.latent_shape[-1]
    oracle = load_or_train_oracle(args.cache_dir, resolution)
    reference = oracle_features(oracle, real_images(args.num_samples, resolution, seed=1))
    floor = fd_shapes_floor(oracle, n=args.num_samples, resolution=resolution)
    labels = (torch.arange(args.num_samples) % model.num_classes) if model.condition.uses_label else None

    rows = []
    for spec in args.grid.split(","):
        name, steps = spec.split(":")
        options = {"atol": 1e-5, "rtol": 1e-5} if name == "dopri5" else {"steps": int(steps)}
        solver = build_solver(name, **options)
        images, nfe, seconds = [], [], 0.0
        for lo in range(0, args.num_samples, args.batch_size):
            idx = list(range(lo, min(args.num_samples, lo + args.batch_size)))
            start = time.perf_counter()
            result = model.sample_latents(
                solver, indices=idx, labels=None if labels is None else labels[idx], cfg_scale=args.cfg_scale
            )
            images.append(model.decode(result.x))
            seconds += time.perf_counter() - start
            nfe.append(result.nfe)
        images = torch.cat(images)
        fd = fd_shapes(oracle, images, reference)
        acc = oracle_metrics_on_samples(oracle, images, labels=labels)["label_accuracy"] if labels is not None else None
        rows.append(
            (name, "adaptive" if name == "dopri5" else steps, max(nfe), 1000 * seconds / args.num_samples, fd, acc)
        )
        print(
            f"  {name:8s} {rows[-1][1]!s:>8}: NFE {max(nfe):4d}  {rows[-1][3]:7.2f} ms/img  FD-shapes {fd:7.1f}",
            flush=True,
        )

    print(
        f"\ncheckpoint: {args.ckpt}\n{args.num_samples} samples, CFG {args.cfg_scale}, "
        f"{args.threads} CPU threads; FD-shapes floor (two real sets of {args.num_samples}): {floor:.1f}\n"
    )
    print("| sampler | steps | NFE | ms / image | FD-shapes | label accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, steps, nfe, ms, fd, acc in rows:
        acc_s = "-" if acc is None else f"{100 * acc:.1f}%"
        print(f"| {name} | {steps} | {nfe} | {ms:.2f} | {fd:.1f} | {acc_s} |")


if __name__ == "__main__":
    main()
