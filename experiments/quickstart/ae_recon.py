"""How well does a quick-start autoencoder reconstruct `shapes` after a given number of steps?

Trains a :class:`~latent_flow.autoencoders.kl.KLAutoencoder` with
:meth:`~latent_flow.training.autoencoder.AutoencoderModule.compute_losses` (L1 + MSE + 1e-6 KL on a
posterior sample, channels_last) and AdamW in a plain loop on the 20,000 renders of the quick start's dataset (seed 0), and at
the given steps scores the posterior-mean reconstructions of 1,000 held-out renders (seed 12345),
quantised to uint8 as `evaluate` scores samples, with the shapes oracle: FD-shapes against 1,000
real renders of seed 1, label accuracy of the reconstructions, PSNR. Prints one JSON line per
evaluation (``train_s`` = seconds spent in training steps so far).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/quickstart/ae_recon.py --name f4 --mult 1,2,2 --lat 4
    OMP_NUM_THREADS=1 .venv/bin/python experiments/quickstart/ae_recon.py --name f2l1 --mult 1,2 --lat 1 --lr 2e-3
    .venv/bin/python experiments/quickstart/ae_recon.py --name cached --ckpt .cache/autoencoders/kl-KEY.pt  # score only

The oracle is trained into ``LATENT_FLOW_CACHE`` (default ``.cache``) when missing (~3 min).
The reconstructions' FD-shapes bounds what a flow model on those latents can reach only loosely
(decoded samples are not reconstructions), but at equal training time it ranks autoencoders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from latent_flow.autoencoders.kl import load_kl_autoencoder
from latent_flow.data.shapes import ShapesDataset
from latent_flow.evaluation.oracle import (
    _render,
    _to_float,
    fd_shapes,
    load_or_train_oracle,
    oracle_metrics_on_samples,
    real_images,
)
from latent_flow.training.autoencoder import AutoencoderModule, psnr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sched", choices=("const", "cos"), default="const", help="constant or cosine to 0")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--base", type=int, default=16, help="base_channels")
    p.add_argument("--mult", default="1,2,2", help="channel_mult (factor 2 ** (len - 1))")
    p.add_argument("--nres", type=int, default=1, help="num_res_blocks")
    p.add_argument("--lat", type=int, default=4, help="latent_channels")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--evals", default="", help="extra steps to evaluate at, comma separated (the last always)")
    p.add_argument("--cache-dir", default=os.environ.get("LATENT_FLOW_CACHE", ".cache"))
    p.add_argument("--ckpt", default=None, help="score this trained autoencoder file (no training; --steps 0)")
    a = p.parse_args()

    torch.manual_seed(0)
    if a.ckpt is not None:  # an autoencoder file written by train_autoencoder (e.g. in .cache/autoencoders/)
        ae = load_kl_autoencoder(a.ckpt)
        a.steps, a.lat = 0, ae.latent_channels
        mult = tuple(ae.channel_mult)
        module = None  # nothing is trained
    else:
        mult = tuple(int(m) for m in a.mult.split(","))
        module = AutoencoderModule(
            latent_channels=a.lat, base_channels=a.base, channel_mult=mult, num_res_blocks=a.nres
        )
        ae = module.autoencoder
    n_params = sum(x.numel() for x in ae.parameters())
    data = None if a.ckpt else _to_float(_render(ShapesDataset(num_samples=20000, resolution=32, seed=0))["images_u8"])
    held = _render(ShapesDataset(num_samples=1000, resolution=32, seed=12345))
    held_x, held_y = _to_float(held["images_u8"]), held["attributes"][:, 0]
    reference = real_images(1000, 32, seed=1)
    oracle = load_or_train_oracle(a.cache_dir, 32)
    opt = torch.optim.AdamW(ae.parameters(), lr=a.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        if a.sched == "cos":
            q = (step - a.warmup) / max(1, a.steps - a.warmup)
            return a.lr * 0.5 * (1 + math.cos(math.pi * q))
        return a.lr

    @torch.no_grad()
    def evaluate(step: int, train_s: float) -> None:
        ae.eval()
        rec = torch.cat([ae.decode_raw(ae.encode_distribution(held_x[i : i + 250])[0]) for i in range(0, 1000, 250)])
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # uint8, as evaluate scores samples
        row = {
            "name": a.name,
            "step": step,
            "fd_shapes": round(fd_shapes(oracle, rec, reference), 1),
            "label_accuracy": oracle_metrics_on_samples(oracle, rec, labels=held_y)["label_accuracy"],
            "psnr": round(float(psnr(rec, held_x).mean()), 2),
            "train_s": round(train_s, 1),
            "params": n_params,
            "latent": [a.lat, 32 // 2 ** (len(mult) - 1), 32 // 2 ** (len(mult) - 1)],
        }
        print(json.dumps(row), flush=True)
        ae.train()

    evals = {int(e) for e in a.evals.split(",") if e} | {a.steps}
    gen = torch.Generator().manual_seed(1)
    train_s = 0.0
    if a.steps == 0:
        evaluate(0, train_s)
    for step in range(a.steps):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = data[torch.randint(0, data.shape[0], (a.bs,), generator=gen)]
        loss = module.compute_losses(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_s += time.perf_counter() - start
        if step + 1 in evals:
            evaluate(step + 1, train_s)


if __name__ == "__main__":
    main()
