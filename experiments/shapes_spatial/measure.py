"""Measure the shapes spatial-condition models with the shapes oracle (writes results.json and PNGs here).

    .venv/bin/python experiments/shapes_spatial/measure.py semantic=RUN/checkpoints/last.ckpt \
        uncond=RUN/checkpoints/last.ckpt inpaint=RUN/checkpoints/last.ckpt [n=500] [steps=10] [cfg=1.0,1.5]

* semantic: samples for the maps of ``n`` held-out renders (ShapesDataset seed 777, never trained
  on: training uses seed 0), segmented by the oracle's segmentation head; mIoU against the
  requested maps, per guidance scale. The unconditional baseline's samples (same noise indices)
  are scored against the same maps; the oracle on the real renders gives the ceiling.
* inpaint: the held-out renders with masks of the model's training generator (variant 7, not a
  cached variant), ``samples_per_input`` samples each; bit-exactness of the known region on the
  uint8 outputs; oracle mIoU of the inpainted images against the renders' maps, next to the masked
  inputs (holes mid-grey) and the real renders. Writes ``inpaint_grid.png`` (per row: input,
  masked input, samples) and ``semantic_grid.png`` (per row: map, semantic samples, uncond sample).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latent_flow.api import load_model
from latent_flow.data import ShapesDataset
from latent_flow.evaluation.oracle import (
    load_or_train_oracle,
    oracle_metrics_on_samples,
)
from latent_flow.generation import paste_known, spatial_condition
from latent_flow.sampling.solvers import build_solver
from latent_flow.utils.images import colorize_semantic, make_grid_image, save_png, to_uint8

HERE = Path(__file__).parent
HELD_OUT_SEED = 777


def _float(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _held_out(n: int):
    data = ShapesDataset(num_samples=n, resolution=32, seed=HELD_OUT_SEED)
    images, maps = zip(*[(r[0], r[2]) for r in (data.render(i) for i in range(n))])
    return np.stack(images), np.stack(maps)


def _batched(fn, n: int, batch: int):
    out, nfe = [], 0
    for lo in range(0, n, batch):
        images, nfe = fn(lo, min(n, lo + batch))
        out.append(images)
    return np.concatenate(out), nfe


def main(args: dict[str, str]) -> None:
    n = int(args.get("n", 500))
    steps = int(args.get("steps", 10))
    scales = [float(s) for s in args.get("cfg", "1.0,1.5").split(",")]
    per_input = int(args.get("samples_per_input", 4))
    solver = build_solver("heun", steps=steps)
    oracle = load_or_train_oracle(".cache", 32)
    images_u8, maps = _held_out(n)
    sem_t = torch.from_numpy(maps)
    results: dict = {"num_maps": n, "held_out_seed": HELD_OUT_SEED, "sampler": f"heun {steps} steps ({2 * steps} NFE)"}
    real = oracle_metrics_on_samples(oracle, _float(images_u8), semantic=sem_t)
    results["oracle_on_real_renders"] = {"miou": real["miou"], "miou_per_class": real["miou_per_class"]}
    print("oracle on the real renders: mIoU", round(real["miou"], 4), flush=True)
    torch.manual_seed(0)

    grid_rows = min(6, n)
    if "semantic" in args:
        model = load_model(args["semantic"], device="cpu")
        results["semantic"] = {"ckpt": args["semantic"]}
        for scale in scales:
            start = time.time()

            def run(lo, hi, scale=scale):
                cond = spatial_condition(model, semantic=maps[lo:hi])
                res = model.sample_latents(solver, indices=range(lo, hi), cfg_scale=scale, spatial_cond=cond)
                return to_uint8(model.decode(res.x)), res.nfe

            samples, nfe = _batched(run, n, 250)
            res = oracle_metrics_on_samples(oracle, _float(samples), semantic=sem_t)
            results["semantic"][f"cfg_{scale}"] = {
                "miou": res["miou"],
                "miou_per_class": res["miou_per_class"],
                "nfe": nfe,
                "seconds": round(time.time() - start, 1),
            }
            print(f"semantic cfg {scale}: mIoU {res['miou']:.4f} ({time.time() - start:.0f}s)", flush=True)
            if scale == scales[-1]:
                sem_samples = samples
    if "uncond" in args:
        model = load_model(args["uncond"], device="cpu")
        start = time.time()

        def run(lo, hi):
            res_ = model.sample_latents(solver, indices=range(lo, hi))
            return to_uint8(model.decode(res_.x)), res_.nfe

        uncond, nfe = _batched(run, n, 250)
        res = oracle_metrics_on_samples(oracle, _float(uncond), semantic=sem_t)
        results["uncond"] = {
            "ckpt": args["uncond"],
            "miou": res["miou"],
            "miou_per_class": res["miou_per_class"],
            "nfe": nfe,
            "seconds": round(time.time() - start, 1),
        }
        print(f"uncond: mIoU {res['miou']:.4f}", flush=True)
    if "semantic" in args:
        rows = []
        for i in range(grid_rows):
            row = [colorize_semantic(maps[i], 6), images_u8[i], sem_samples[i]]
            if "uncond" in args:
                row.append(uncond[i])
            rows.append(np.stack(row))
        save_png(make_grid_image(_float(np.concatenate(rows)), len(rows[0]), upscale=4), HERE / "semantic_grid.png")

    if "inpaint" in args:
        model = load_model(args["inpaint"], device="cpu")
        gen = model.condition.mask_generator()
        masks = np.stack([gen(i, 7) for i in range(n)])
        owner = np.repeat(np.arange(n), per_input)
        start = time.time()

        def run(lo, hi):
            idx = owner[lo:hi]
            cond = spatial_condition(model, images_u8=images_u8[idx], masks=masks[idx])
            res = model.sample_latents(solver, indices=range(lo, hi), spatial_cond=cond)
            return paste_known(to_uint8(model.decode(res.x)), images_u8[idx], masks[idx]), res.nfe

        samples, nfe = _batched(run, n * per_input, 250)
        exact = bool(np.all(samples[masks[owner]] == images_u8[owner][masks[owner]]))
        res = oracle_metrics_on_samples(oracle, _float(samples), semantic=torch.from_numpy(maps[owner]))
        masked_inputs = np.where(masks[..., None], images_u8, np.uint8(128))
        res_masked = oracle_metrics_on_samples(oracle, _float(masked_inputs), semantic=sem_t)
        hole = ~masks[owner]
        diff = np.abs(samples.astype(int) - images_u8[owner].astype(int))
        results["inpaint"] = {
            "ckpt": args["inpaint"],
            "samples_per_input": per_input,
            "mask_variant": 7,
            "mean_hole_ratio": float(1 - masks.mean()),
            "known_region_bit_exact": exact,
            "known_pixels_checked": int(masks[owner].sum()),
            "miou_inpainted": res["miou"],
            "miou_masked_input": res_masked["miou"],
            "hole_mean_abs_error_uint8": float(diff[hole].mean()),
            "nfe": nfe,
            "seconds": round(time.time() - start, 1),
        }
        print(f"inpaint: bit-exact {exact}, mIoU {res['miou']:.4f} (masked input {res_masked['miou']:.4f})", flush=True)
        rows = []
        for i in range(grid_rows):
            own = samples[i * per_input : (i + 1) * per_input]
            rows.append(np.stack([images_u8[i], masked_inputs[i], *own]))
        save_png(make_grid_image(_float(np.concatenate(rows)), len(rows[0]), upscale=4), HERE / "inpaint_grid.png")

    path = HERE / args.get("out", "results.json")
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(results)
    path.write_text(json.dumps(previous, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main(dict(a.split("=", 1) for a in sys.argv[1:]))
