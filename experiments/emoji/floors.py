"""Floors of the emoji study on the honest split, with the standard FID and KID against the held-out set.

    LATENT_FLOW_TAEF2_DIR=../shared/weights/taef2 OMP_NUM_THREADS=1 .venv/bin/python experiments/emoji/floors.py \
        --reference outputs/reference/emoji64_val_design [--kl .cache/autoencoders/kl-<key>.pt] \
        [--draws 5] [--results experiments/emoji/results.json] [--resolution 128 --key floors_128] [--parts kl]

* data floor: FID / KID of N random training images (N = the held-out count) against the held-out set,
  i.e. what a perfect model of the training split scores at this sample count; ``--draws`` random
  subsets give its mean and spread (the spread is that of any FID@N here);
* reconstruction floor of each autoencoder: decode(encode(held-out)) against the held-out set; no
  flow on those latents can do better than its decoder allows (measured on the held-out images
  themselves, hence below the data floor).

Writes the ``--key`` entry (``floors``) of ``--results``: the measured ``--parts`` replace theirs, other parts
and other entries are kept (e.g. ``--parts kl`` adds the KL floor without redrawing the data floor).
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
from latent_flow.evaluation.metrics import compute_features, kid
from latent_flow.evaluation.reference import load_reference_stats


def _images(ds: EmojiDataset, indices) -> torch.Tensor:
    return torch.stack([ds[int(i)]["image"] for i in indices])  # [-1, 1]


def _scores(extractor, images_pm1: torch.Tensor, ref) -> dict:
    u8 = ((images_pm1.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    feats, _ = compute_features(extractor, u8)
    kid_mean, kid_std = kid(ref["features"], feats)
    fid = frechet_distance(ref["mu"], ref["sigma"], *gaussian_stats(feats))
    return {"fid": round(float(fid), 2), "kid": round(kid_mean, 5), "kid_std": round(kid_std, 5)}


@torch.no_grad()
def _reconstruct(ae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    out = [ae.decode_raw(ae.encode_raw(images[lo : lo + batch])) for lo in range(0, len(images), batch)]
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="outputs/reference/emoji64_val_design")
    parser.add_argument("--root", default=".cache/emoji", help="data.dataset.root of data=emoji")
    parser.add_argument("--split-by", default="design", help="data.dataset.split_by")
    parser.add_argument("--kl", default=None, help="the own KL autoencoder's file (.cache/autoencoders/kl-*.pt)")
    parser.add_argument("--draws", type=int, default=5, help="random training subsets for the data floor")
    parser.add_argument("--results", default="experiments/emoji/results.json")
    parser.add_argument("--resolution", type=int, default=64, help="data.dataset.resolution (OpenMoji renders any)")
    parser.add_argument("--key", default="floors", help="the entry of --results to write")
    parser.add_argument("--parts", default="data,taef2,kl", help="which floors to measure (comma-separated)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"data", "taef2", "kl"}:
        raise SystemExit(f"--parts: unknown {sorted(parts - {'data', 'taef2', 'kl'})}; expected data, taef2, kl")
    ref = load_reference_stats(args.reference)
    if ref.get("resolution") not in (None, args.resolution):
        raise SystemExit(f"{args.reference}: made at {ref['resolution']} px, not --resolution {args.resolution}")
    held_out = EmojiDataset(args.root, split="val", split_by=args.split_by, resolution=args.resolution)
    train = EmojiDataset(args.root, split="train", split_by=args.split_by, resolution=args.resolution)
    n = len(held_out)
    if ref["features"] is None or len(ref["features"]) != n:
        raise SystemExit(f"{args.reference}: expected the features of all {n} held-out images (split=all)")
    extractor = InceptionFeatures()
    start = time.perf_counter()
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    floors = results.get(args.key, {})
    floors.update(
        {
            "split_by": args.split_by,
            "resolution": args.resolution,
            "num_reference": n,
            "num_train": len(train),
            "num_samples": n,
            "reference": args.reference,
        }
    )
    if "data" in parts:
        floors["data"] = _data_floor(extractor, train, n, ref, args.draws)
    val_images = _images(held_out, range(n))
    if "taef2" in parts:
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
        side = args.resolution // 8
        floors["taef2"] = {
            **_scores(extractor, _reconstruct(taef2, val_images), ref),
            "what": f"TAEF2 reconstruction of the held-out set ({side}x{side}x32 latents)",
        }
        print(floors["taef2"], flush=True)
    if "kl" in parts:
        if not args.kl:
            raise SystemExit("--parts kl needs --kl (the own KL autoencoder's file)")
        kl = load_autoencoder("kl", ckpt_path=args.kl).eval()
        floors["kl"] = {
            **_scores(extractor, _reconstruct(kl, val_images), ref),
            "what": f"own KL AE reconstruction ({args.kl})",
        }
        print(floors["kl"], flush=True)
    seconds = round(time.perf_counter() - start, 1)
    if parts == {"data", "taef2", "kl"} or "seconds" not in floors:
        floors["seconds"] = seconds
    else:  # a partial rerun: its time goes with the parts it measured
        for part in parts:
            floors[part]["seconds"] = seconds
    results[args.key] = floors
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(floors, indent=2))


def _data_floor(extractor, train: EmojiDataset, n: int, ref, num_draws: int) -> dict:
    start = time.perf_counter()
    draws = []
    for seed in range(num_draws):
        pick = np.random.default_rng(seed).permutation(len(train))[:n]
        draws.append(_scores(extractor, _images(train, pick), ref))
        print(f"data floor draw {seed}: {draws[-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
    fids = np.array([d["fid"] for d in draws])
    kids = np.array([d["kid"] for d in draws])
    return {
        "fid": round(float(fids.mean()), 2),
        "fid_std": round(float(fids.std(ddof=1)), 2) if len(fids) > 1 else None,
        "kid": round(float(kids.mean()), 5),
        "draws": draws,
        "what": f"{n} random training images (seeds 0..{num_draws - 1}) vs the {n} held-out images",
    }


if __name__ == "__main__":
    main()
