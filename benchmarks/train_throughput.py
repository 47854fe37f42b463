"""Training throughput: cached latents vs encoding every batch (what the LFM reference code does).

Both modes train the same backbone with the same batch size and optimizer; the only
difference is where x_data comes from:
  cached : normalised latents read from the latent cache (built once beforehand, timed separately)
  encode : images from the dataset, encoded by the frozen autoencoder at every step

    .venv/bin/python benchmarks/train_throughput.py                         # own KL autoencoder, 32 px
    .venv/bin/python benchmarks/train_throughput.py --autoencoder taef2     # real TAEF2 weights, 64 px
         (needs LATENT_FLOW_TAEF2_DIR=/path/to/taef2 or --taef2-dir)

Prints steps/s of each mode and their ratio, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader


def build_autoencoder(name: str, taef2_dir: str | None):
    from latent_flow.autoencoders import KLAutoencoder, load_autoencoder

    if name == "kl":
        torch.manual_seed(0)  # untrained weights cost the same as trained ones
        return KLAutoencoder(latent_channels=4, base_channels=16, channel_mult=(1, 2, 2)).freeze(), 32
    if name == "taef2":
        folder = taef2_dir or os.environ.get("LATENT_FLOW_TAEF2_DIR")
        if not folder:
            sys.exit("--autoencoder taef2 needs --taef2-dir or LATENT_FLOW_TAEF2_DIR (the folder of taef2_*.pth)")
        ae = load_autoencoder(
            {
                "name": "taesd",
                "encoder_path": os.path.join(folder, "taef2_encoder.pth"),
                "decoder_path": os.path.join(folder, "taef2_decoder.pth"),
                "latent_channels": 32,
                "variant": "gn",
            }
        )
        return ae, 64
    sys.exit(f"unknown --autoencoder {name!r}; valid: kl, taef2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", default="kl", choices=["kl", "taef2"])
    parser.add_argument("--taef2-dir", default=None)
    parser.add_argument("--backbone", default="UNet-T")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (after 3 warm-up steps)")
    parser.add_argument("--num-images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per mode (best kept)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from latent_flow.data import ShapesDataset
    from latent_flow.data.datamodule import LatentDataModule
    from latent_flow.training.module import LatentFlowModule

    ae, resolution = build_autoencoder(args.autoencoder, args.taef2_dir)
    dataset = ShapesDataset(num_samples=args.num_images, resolution=resolution, seed=0)
    with tempfile.TemporaryDirectory() as cache_dir:
        dm = LatentDataModule(dataset, ae, cache_dir=cache_dir, batch_size=args.batch_size, val_fraction=0.0)
        start = time.perf_counter()
        dm.cache.build(progress=False)
        encode_seconds = time.perf_counter() - start
        dm.setup("fit")
        stats = dm.latent_stats
        ae.set_latent_stats(torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
        latent_shape = dm.latent_shape

        def fresh_model():
            torch.manual_seed(0)
            model = LatentFlowModule(
                backbone={"name": args.backbone},
                condition={"name": "label", "label_dropout": 0.1},
                path={"scheduler": {"name": "condot"}, "time_sampler": {"name": "uniform"}},
                optim={"lr": 1e-4},
                ema={"decay": 0.9999},
                latent_shape=latent_shape,
                num_classes=dataset.num_classes,
            )
            return model, torch.optim.AdamW(model.backbone.parameters(), lr=1e-4)

        def step(model, opt, batch):
            loss = model._loss(batch, use_ema=False)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.ema.update(model.backbone)

        def timed(batches, make_batch) -> float:
            model, opt = fresh_model()
            it = itertools.cycle(batches)
            for _ in range(3):
                step(model, opt, make_batch(next(it)))
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt, make_batch(next(it)))
            return args.steps / (time.perf_counter() - start)

        latent_loader = dm.train_dataloader()
        image_loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
        # alternate the modes and keep each one's best round: load from other processes hits both alike
        cached_sps = encode_sps = 0.0
        for _ in range(args.rounds):
            cached_sps = max(cached_sps, timed(latent_loader, lambda b: b))
            encode_sps = max(
                encode_sps, timed(image_loader, lambda b: {"latent": ae.encode(b["image"]), "label": b["label"]})
            )

    n_params = sum(p.numel() for p in fresh_model()[0].backbone.parameters())
    print(f"autoencoder: {args.autoencoder} ({type(ae).__name__}), images {resolution}px -> latents {latent_shape}")
    print(
        f"backbone: {args.backbone} ({n_params / 1e6:.2f}M params), batch {args.batch_size}, "
        f"{args.steps} timed steps per mode, {args.threads} threads, device cpu"
    )
    print(
        f"latent cache build: {args.num_images} images in {encode_seconds:.1f}s "
        f"({args.num_images / encode_seconds:.0f} images/s, paid once)"
    )
    print(f"cached latents     : {cached_sps:6.2f} steps/s")
    print(f"encode every batch : {encode_sps:6.2f} steps/s")
    print(f"speed-up of the cache: {cached_sps / encode_sps:.2f}x")


if __name__ == "__main__":
    main()
