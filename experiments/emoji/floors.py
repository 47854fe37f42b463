"""Floors and ceilings of the emoji study, with the standard FID against the held-out statistics.

    LATENT_FLOW_TAEF2_DIR=../shared/weights/taef2 .venv/bin/python experiments/emoji/floors.py \
        --reference outputs/reference/emoji64_val [--kl .cache/autoencoders/kl-<key>.pt] [--out ...]

* data floor: FID of N random training images (N = the held-out count) against the held-out set,
  i.e. what a perfect model of the training split scores at this sample count;
* reconstruction FID of each autoencoder: decode(encode(held-out)) against the held-out set; no
  flow on those latents can do better than its decoder allows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from latent_flow.autoencoders import build_autoencoder, load_autoencoder
from latent_flow.data.emoji import EmojiDataset
from latent_flow.evaluation.frechet import frechet_distance, gaussian_stats
from latent_flow.evaluation.inception import InceptionFeatures
from latent_flow.evaluation.metrics import compute_features
from latent_flow.evaluation.reference import load_reference_stats


def _images(ds: EmojiDataset, indices) -> torch.Tensor:
    return torch.stack([ds[int(i)]["image"] for i in indices])  # [-1, 1]


def _fid(extractor, images_pm1: torch.Tensor, ref) -> float:
    u8 = ((images_pm1.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    feats, _ = compute_features(extractor, u8)
    return frechet_distance(ref["mu"], ref["sigma"], *gaussian_stats(feats))


@torch.no_grad()
def _reconstruct(ae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    out = [ae.decode_raw(ae.encode_raw(images[lo : lo + batch])) for lo in range(0, len(images), batch)]
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="outputs/reference/emoji64_val")
    parser.add_argument("--root", default=".cache/emoji", help="data.dataset.root of data=emoji")
    parser.add_argument("--kl", default=None, help="the own KL autoencoder's file (.cache/autoencoders/kl-*.pt)")
    parser.add_argument("--out", default="experiments/emoji/floors.json")
    args = parser.parse_args()
    ref = load_reference_stats(args.reference)
    held_out = EmojiDataset(args.root, split="val")
    train = EmojiDataset(args.root, split="train")
    n = len(held_out)
    extractor = InceptionFeatures()
    results = {"num_held_out": n, "reference": args.reference}
    start = time.perf_counter()
    pick = np.random.default_rng(0).permutation(len(train))[:n]
    results[f"data floor: fid@{n} train vs {n} held-out"] = _fid(extractor, _images(train, pick), ref)
    print(results, f"{time.perf_counter() - start:.0f} s", flush=True)
    val_images = _images(held_out, range(n))
    taef2_dir = Path(os.environ.get("LATENT_FLOW_TAEF2_DIR", "data/weights/taef2"))
    taef2 = build_autoencoder(
        {
            "name": "taesd",
            "encoder_path": str(taef2_dir / "taef2_encoder.pth"),
            "decoder_path": str(taef2_dir / "taef2_decoder.pth"),
            "latent_channels": 32,
            "variant": "gn",
        }
    ).eval()
    results[f"TAEF2 reconstruction: fid@{n} vs {n} held-out"] = _fid(extractor, _reconstruct(taef2, val_images), ref)
    print(results, flush=True)
    if args.kl:
        kl = load_autoencoder("kl", ckpt_path=args.kl).eval()
        results[f"own KL AE reconstruction: fid@{n} vs {n} held-out"] = _fid(
            extractor, _reconstruct(kl, val_images), ref
        )
        print(results, flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
