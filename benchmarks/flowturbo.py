"""FlowTurbo vs Heun vs dopri5 on one checkpoint: base NFE, refiner NFE, ms/image, FD-shapes, latency reduction.

    .venv/bin/python benchmarks/flowturbo.py --ckpt outputs/train/RUN/checkpoints/last.ckpt \\
        --refiner outputs/shapes_refiner/RUN/checkpoints/last.ckpt

Every method samples the same indices from the same per-index noise and labels (classes in turn),
with classifier-free guidance (one batched base call per NFE). Timing = sampling + decoding wall
time of all samples, measured ``--repeats`` times with the methods *interleaved* (each repeat runs
every method once, in turn), and each method's fastest repeat is kept, so that load changes on a
shared machine hit all methods alike. dopri5 (atol = rtol = 1e-5) runs once.

Quality: FD-shapes (shapes oracle features, against real renders of another seed) and the oracle's
label accuracy. Matched quality: for each FlowTurbo schedule the reference is the fastest Heun
setting whose FD-shapes is at most FlowTurbo's plus ``--fd-tolerance`` (the spread of FD-shapes
between repeated real sets of this size); the latency reduction is ``1 - ms(FlowTurbo) / ms(Heun)``.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

DEFAULT_HEUN = "3,4,5,6,8,10,15,25"
DEFAULT_TURBO = "H1P3R2,H1P5R3,H2P4R2,H2P6R4,H3P7R4,H8P9R5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="base flow checkpoint (latent_flow.train)")
    parser.add_argument("--refiner", required=True, help="refiner checkpoint (+experiment=<name>_refiner)")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--heun", default=DEFAULT_HEUN, help="Heun step counts")
    parser.add_argument("--turbo", default=DEFAULT_TURBO, help="FlowTurbo schedules")
    parser.add_argument("--no-dopri5", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fd-tolerance", type=float, default=0.0, help="FD-shapes slack when matching quality")
    parser.add_argument("--compile", action="store_true", help="also time FlowTurbo with compile=true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--cache-dir", default=os.environ.get("LATENT_FLOW_CACHE", ".cache"))
    parser.add_argument("--threads", type=int, default=1)
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
    from latent_flow.flowturbo import build_flowturbo_solver
    from latent_flow.sampling.solvers import build_solver

    model = load_model(args.ckpt)
    resolution = model.autoencoder.downsample_factor * model.latent_shape[-1]
    oracle = load_or_train_oracle(args.cache_dir, resolution)
    reference = oracle_features(oracle, real_images(args.num_samples, resolution, seed=1))
    floor = fd_shapes_floor(oracle, n=args.num_samples, resolution=resolution)
    labels = (torch.arange(args.num_samples) % model.num_classes) if model.condition.uses_label else None

    methods: list[tuple[str, str, object]] = []  # (kind, setting, solver)
    for n in args.heun.split(","):
        methods.append(("heun", n, build_solver("heun", steps=int(n))))
    for sched in args.turbo.split(","):
        methods.append(
            ("flowturbo", sched, build_flowturbo_solver(model, schedule=sched, refiner_ckpt_path=args.refiner))
        )
        if args.compile:
            solver = build_flowturbo_solver(
                model,
                schedule=sched,
                refiner_ckpt_path=args.refiner,
                compile=True,
                compile_backend=args.compile_backend,
            )
            methods.append(("flowturbo+compile", sched, solver))

    def run(solver) -> tuple[float, torch.Tensor, int, int]:
        images, base_nfe, refiner_nfe, seconds = [], 0, 0, 0.0
        for lo in range(0, args.num_samples, args.batch_size):
            idx = list(range(lo, min(args.num_samples, lo + args.batch_size)))
            start = time.perf_counter()
            result = model.sample_latents(
                solver, indices=idx, labels=None if labels is None else labels[idx], cfg_scale=args.cfg_scale
            )
            images.append(model.decode(result.x))
            seconds += time.perf_counter() - start
            base_nfe = max(base_nfe, result.nfe)
            refiner_nfe = max(refiner_nfe, getattr(result, "refiner_nfe", 0))
        return 1000 * seconds / args.num_samples, torch.cat(images), base_nfe, refiner_nfe

    # warm-up (first calls, compilation) outside the timed repeats
    for kind, _setting, solver in methods:
        if kind == "flowturbo+compile":
            run(solver)
    best: dict[int, float] = {}
    quality: dict[int, tuple[float, float | None, int, int]] = {}
    load = []
    for rep in range(args.repeats):
        order = range(len(methods)) if rep % 2 == 0 else reversed(range(len(methods)))
        for i in order:
            kind, setting, solver = methods[i]
            ms, images, base_nfe, refiner_nfe = run(solver)
            best[i] = min(best.get(i, float("inf")), ms)
            if i not in quality:
                fd = fd_shapes(oracle, images, reference)
                acc = (
                    oracle_metrics_on_samples(oracle, images, labels=labels)["label_accuracy"]
                    if labels is not None
                    else None
                )
                quality[i] = (fd, acc, base_nfe, refiner_nfe)
            print(
                f"  [repeat {rep + 1}] {kind:17s} {setting:>7}: base NFE {base_nfe:3d}  refiner NFE {refiner_nfe:3d}  "
                f"{ms:7.2f} ms/img  FD-shapes {quality[i][0]:6.1f}",
                flush=True,
            )
        load.append(os.getloadavg()[0])
    rows = [(methods[i][0], methods[i][1], *quality[i], best[i]) for i in range(len(methods))]
    if not args.no_dopri5:
        ms, images, base_nfe, _ = run(build_solver("dopri5", atol=1e-5, rtol=1e-5))
        fd = fd_shapes(oracle, images, reference)
        acc = oracle_metrics_on_samples(oracle, images, labels=labels)["label_accuracy"] if labels is not None else None
        rows.append(("dopri5", "1e-5", fd, acc, base_nfe, 0, ms))
        print(f"  dopri5: base NFE {base_nfe}  {ms:.2f} ms/img  FD-shapes {fd:.1f}", flush=True)

    heun = sorted((r for r in rows if r[0] == "heun"), key=lambda r: r[6])
    print(
        f"\ncheckpoint: {args.ckpt}\nrefiner: {args.refiner}\n{args.num_samples} samples, CFG {args.cfg_scale}, "
        f"{args.threads} CPU thread(s), best of {args.repeats} interleaved repeats (dopri5: 1 run); "
        f"1-min load average after each repeat: {', '.join(f'{v:.1f}' for v in load)}; "
        f"FD-shapes floor (two real sets of {args.num_samples}): {floor:.1f}\n"
    )
    print(
        "| sampler | setting | base NFE | refiner NFE | ms / image | FD-shapes | label accuracy | matched Heun | latency vs matched Heun |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, setting, fd, acc, base_nfe, refiner_nfe, ms in rows:
        acc_s = "-" if acc is None else f"{100 * acc:.1f}%"
        match_s = red_s = "-"
        if kind.startswith("flowturbo"):
            ok = [h for h in heun if h[2] <= fd + args.fd_tolerance]
            if ok:
                ref = ok[0]
                match_s = f"heun {ref[1]} ({ref[6]:.2f} ms, FD {ref[2]:.1f})"
                red_s = f"**-{100 * (1 - ms / ref[6]):.0f}%**" if ms < ref[6] else f"+{100 * (ms / ref[6] - 1):.0f}%"
            else:
                match_s = "better than every Heun setting measured"
        print(
            f"| {kind} | {setting} | {base_nfe} | {refiner_nfe} | {ms:.2f} | {fd:.1f} | {acc_s} | {match_s} | {red_s} |"
        )


if __name__ == "__main__":
    main()
