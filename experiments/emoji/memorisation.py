"""Is a low emoji FID copying? Nearest-neighbour distances of samples to the training set, against held-out emoji.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/emoji/memorisation.py \
        --samples outputs/emoji25/<run>/<eval>/samples.npz --out outputs/memorisation/<run> \
        [--root .cache/emoji] [--split-by design] [--cache outputs/memorisation_cache] [--limit N]

Controls without a model: ``--samples held-out`` (a random half of the held-out emoji stands in for the
samples, the other half is the held-out reference: must not be flagged) and ``--samples train``
(training images as samples: exact copies, must be flagged).

``samples.npz`` is what ``python -m latent_flow.evaluate`` writes (``arr_0``: uint8 NHWC). In two spaces,
pixels (flattened, values in [0, 1]) and the standard FID Inception's pool3 features, the script finds
each sample's nearest training image, each held-out image's nearest training image and each training
image's nearest *other* training image (leave-one-out, context only), and applies
``latent_flow.evaluation.memorisation.memorisation_report``: the threshold is the 5% quantile of the
held-out distances, and the model is flagged when more than 2 x 5% of its samples are closer to a training
image than that. The Inception features of the training and held-out splits are cached in ``--cache`` as
``.npz`` keyed by the dataset fingerprint and the network's weights (the first run embeds ~3,500 training
images: minutes on one CPU thread); a model's check then costs its samples only (their features are cached
by content too).

Writes into ``--out``: ``memorisation.json`` (both spaces' reports, the set sizes, the 16 closest pairs with
the training emoji's name), ``closest_pairs_pixels.png``, ``closest_pairs_inception.png`` (each closest
sample left of its nearest training image, closest first), ``nn_distances.png`` (histograms of the
distances, the threshold as a vertical line) and ``nn_distances.npz`` (the distances and the samples'
nearest training indices, per space).

Caveat: with ``--split-by design`` no variant of a held-out emoji is in training, so held-out images are
further from the training set than new images of the training distribution (e.g. a new skin tone of a
training design) would be; the train -> train leave-one-out distances show where such variants sit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

from latent_flow.data.emoji import EmojiDataset
from latent_flow.evaluation.inception import InceptionFeatures
from latent_flow.evaluation.memorisation import closest_pairs_grid, memorisation_report, nearest_neighbours
from latent_flow.evaluation.metrics import compute_features
from latent_flow.evaluation.reference import extractor_fingerprint
from latent_flow.utils.images import save_png

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SPACES = ("pixels", "inception")
CONTROLS = ("held-out", "train")
NUM_PAIRS = 16


def dataset_u8(dataset, indices=None) -> np.ndarray:
    """Items' images ``(3, H, W)`` in [-1, 1] -> uint8 NHWC, ``((x + 1) * 127.5).round()``."""
    indices = range(len(dataset)) if indices is None else indices
    images = torch.stack([dataset[int(i)]["image"] for i in indices])
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def content_key(images_u8: np.ndarray) -> str:
    """sha1 (16 hex digits) of an image array's shape and bytes."""
    digest = hashlib.sha1(str(images_u8.shape).encode())
    digest.update(np.ascontiguousarray(images_u8).tobytes())
    return digest.hexdigest()[:16]


def cached_features(extractor, images_u8: np.ndarray, cache_dir: Path | None, key: str, *, device="cpu") -> np.ndarray:
    """Features of ``images_u8`` from ``<cache_dir>/inception_<key>_<weights>.npz``, computed and written
    when missing (or when the file holds another image set: its content key is checked)."""
    weights = extractor_fingerprint(extractor) or type(extractor).__name__
    images_key = content_key(images_u8)
    path = None if cache_dir is None else Path(cache_dir) / f"inception_{key}_{weights}.npz"
    if path is not None and path.is_file():
        cached = np.load(path)
        if str(cached["images_key"]) == images_key:
            return cached["features"].astype(np.float64)
        print(f"{path}: another image set (content {cached['images_key']} != {images_key}), recomputing")
    start = time.perf_counter()
    features, _ = compute_features(extractor, images_u8, device=device)
    features = features.numpy()
    print(f"features of {len(images_u8)} images ({key}): {time.perf_counter() - start:.0f} s", flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, features=features.astype(np.float32), images_key=np.array(images_key))
        tmp.replace(path)
    return features.astype(np.float32).astype(np.float64)  # what a later run reads back


def space_check(
    samples, train, held_out, *, quantile: float, max_rate_ratio: float, scale: float = 1.0, batch_size: int = 256
) -> dict:
    """NN distances samples -> train, held-out -> train, train -> train (leave-one-out), divided by
    ``scale``, and the report. ``samples`` / ``train`` / ``held_out``: ``(N, D)`` tensors of one space."""
    s_d, s_i = nearest_neighbours(samples, train, batch_size=batch_size)
    h_d, _ = nearest_neighbours(held_out, train, batch_size=batch_size)
    t_d, _ = nearest_neighbours(train, train, batch_size=batch_size, exclude_self=True)
    s_d, h_d, t_d = (d[:, 0].numpy() / scale for d in (s_d, h_d, t_d))
    report = memorisation_report(s_d, h_d, quantile=quantile, max_rate_ratio=max_rate_ratio, train_to_train=t_d)
    return {
        "report": report,
        "sample_to_train": s_d,
        "sample_index": s_i[:, 0].numpy(),
        "held_out_to_train": h_d,
        "train_to_train": t_d,
    }


def plot_distances(checks: dict, path: Path) -> None:
    """One panel per space: histograms of the NN distances to the training set, the threshold as a line."""
    fig, axes = plt.subplots(1, len(checks), figsize=(5.5 * len(checks), 4), squeeze=False)
    for ax, (space, check) in zip(axes[0], checks.items()):
        report = check["report"]
        values = np.concatenate([check["sample_to_train"], check["held_out_to_train"], check["train_to_train"]])
        bins = np.linspace(0, float(values.max()) * 1.02 + 1e-12, 60)
        ax.hist(
            check["train_to_train"],
            bins=bins,
            density=True,
            color="0.8",
            label=f"train -> other train (LOO, n={report['num_train']})",
        )
        ax.hist(
            check["held_out_to_train"],
            bins=bins,
            density=True,
            histtype="step",
            lw=2,
            label=f"held-out -> train (n={report['num_held_out']})",
        )
        ax.hist(
            check["sample_to_train"],
            bins=bins,
            density=True,
            histtype="step",
            lw=2,
            label=f"samples -> train (n={report['num_samples']})",
        )
        ax.axvline(
            report["threshold"],
            color="k",
            ls="--",
            lw=1,
            label=f"held-out {100 * report['quantile']:g}% quantile: {100 * report['copy_rate']:.1f}% of samples below",
        )
        ax.set_title(
            f"{space}: rate ratio {report['rate_ratio']:.2f} -> {'COPIES' if report['copies'] else 'no copying'}"
        )
        ax.set_xlabel(
            "Euclidean distance to the nearest training image"
            + (" (pixels in [0, 1])" if space == "pixels" else " (pool3)")
        )
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_check(
    samples_u8: np.ndarray,
    train_u8: np.ndarray,
    held_u8: np.ndarray,
    features: dict[str, np.ndarray],
    out_dir: str | Path,
    *,
    quantile: float = 0.05,
    max_rate_ratio: float = 2.0,
    train_names: list[str] | None = None,
    info: dict | None = None,
) -> dict:
    """Both spaces' checks, the grids, the histograms and ``memorisation.json`` in ``out_dir``.

    ``features``: ``{"samples", "train", "held_out"}`` Inception features (rows as the images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (samples_u8.shape[1:] == train_u8.shape[1:] == held_u8.shape[1:]):
        raise ValueError(
            f"image sizes differ: samples {samples_u8.shape[1:]}, train {train_u8.shape[1:]}, "
            f"held-out {held_u8.shape[1:]}"
        )
    for name, images in (("samples", samples_u8), ("train", train_u8), ("held_out", held_u8)):
        if len(features[name]) != len(images):
            raise ValueError(f"{len(features[name])} {name} features for {len(images)} images")
    pixels = {
        name: torch.from_numpy(np.ascontiguousarray(a)).flatten(1)
        for name, a in (("samples", samples_u8), ("train", train_u8), ("held_out", held_u8))
    }
    checks = {}
    start = time.perf_counter()
    # uint8 distances are exact integers in float64; / 255 gives distances of images in [0, 1]
    checks["pixels"] = space_check(
        pixels["samples"],
        pixels["train"],
        pixels["held_out"],
        quantile=quantile,
        max_rate_ratio=max_rate_ratio,
        scale=255.0,
    )
    print(f"pixel-space neighbours: {time.perf_counter() - start:.0f} s", flush=True)
    feats = {name: torch.from_numpy(np.asarray(f, dtype=np.float64)) for name, f in features.items()}
    checks["inception"] = space_check(
        feats["samples"], feats["train"], feats["held_out"], quantile=quantile, max_rate_ratio=max_rate_ratio
    )
    result = {
        **(info or {}),
        "num_samples": len(samples_u8),
        "num_train": len(train_u8),
        "num_held_out": len(held_u8),
        "units": {
            "pixels": "Euclidean distance of flattened images with values in [0, 1] (RMS per value = "
            f"distance / {np.sqrt(np.prod(samples_u8.shape[1:])):.1f})",
            "inception": "Euclidean distance of FID Inception pool3 features (2048-d)",
        },
        "copies": any(c["report"]["copies"] for c in checks.values()),
    }
    for space, check in checks.items():
        order = np.argsort(check["sample_to_train"], kind="stable")[:NUM_PAIRS]
        result[space] = {
            **check["report"],
            "closest_pairs": [
                {
                    "sample": int(i),
                    "train": int(check["sample_index"][i]),
                    "distance": float(check["sample_to_train"][i]),
                    **({"train_name": train_names[int(check["sample_index"][i])]} if train_names else {}),
                }
                for i in order
            ],
        }
        grid = closest_pairs_grid(
            samples_u8, train_u8, check["sample_to_train"], check["sample_index"], num_pairs=NUM_PAIRS, upscale=2
        )
        save_png(grid, out_dir / f"closest_pairs_{space}.png")
    plot_distances(checks, out_dir / "nn_distances.png")
    arrays = {f"{space}_{key}": check[key] for space, check in checks.items() for key in check if key != "report"}
    np.savez(out_dir / "nn_distances.npz", **arrays)
    (out_dir / "memorisation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_line(report: dict) -> str:
    """One line of a space's report."""
    median = "n/a" if report["median_ratio"] is None else f"{report['median_ratio']:.3f}"
    return (
        f"threshold {report['threshold']:.4g}, copy rate {100 * report['copy_rate']:.1f}% (held-out "
        f"{100 * report['expected_rate']:g}%, train LOO {100 * report['train_to_train_rate']:.1f}%), ratio "
        f"{report['rate_ratio']:.2f} +- {report['rate_ratio_se']:.2f}, median ratio {median} -> "
        f"{'COPIES' if report['copies'] else 'no copying'}"
    )


def _names(dataset: EmojiDataset) -> list[str]:
    return [f"{r.get('name', '?')} ({r.get('codepoints', '?')})" for r in dataset.records]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--samples", required=True, help="samples.npz (arr_0: uint8 NHWC), or a control: held-out | train"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--root", default=".cache/emoji", help="data.dataset.root of data=emoji")
    parser.add_argument("--split-by", default="design", help="data.dataset.split_by")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="data.dataset.val_fraction")
    parser.add_argument("--cache", default="outputs/memorisation_cache", help="feature cache folder ('' for none)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    parser.add_argument("--quantile", type=float, default=0.05)
    parser.add_argument("--max-rate-ratio", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0, help="draws of the controls and of --limit")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    kwargs = {"split_by": args.split_by, "val_fraction": args.val_fraction, "prepare": False}
    train_ds = EmojiDataset(args.root, split="train", **kwargs)
    held_ds = EmojiDataset(args.root, split="val", **kwargs)
    train_u8, held_u8 = dataset_u8(train_ds), dataset_u8(held_ds)
    cache = Path(args.cache) if args.cache else None
    extractor = InceptionFeatures().to(args.device)
    train_f = cached_features(extractor, train_u8, cache, f"train_{train_ds.fingerprint()[:16]}", device=args.device)
    held_f = cached_features(extractor, held_u8, cache, f"val_{held_ds.fingerprint()[:16]}", device=args.device)
    rng = np.random.default_rng(args.seed)
    info = {
        "samples": args.samples,
        "root": args.root,
        "split_by": args.split_by,
        "val_fraction": args.val_fraction,
        "train_fingerprint": train_ds.fingerprint(),
        "held_out_fingerprint": held_ds.fingerprint(),
    }
    if args.samples == "held-out":  # half the held-out emoji as samples, the other half as the reference
        perm = rng.permutation(len(held_u8))
        pick, ref = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        pick = pick[: args.limit]
        samples_u8, sample_f, held_u8, held_f = held_u8[pick], held_f[pick], held_u8[ref], held_f[ref]
        info["control"] = "held-out: a random half of the held-out split as samples, the other half as reference"
    elif args.samples == "train":  # exact copies of training images
        pick = rng.permutation(len(train_u8))[: args.limit or len(held_u8)]
        samples_u8, sample_f = train_u8[pick], train_f[pick]
        info["control"] = "train: random training images as samples (exact copies)"
    else:
        with np.load(args.samples) as data:
            samples_u8 = data["arr_0"]
        if args.limit is not None:
            samples_u8 = samples_u8[: args.limit]
        info["samples_key"] = content_key(samples_u8)
        sample_f = cached_features(extractor, samples_u8, cache, f"samples_{info['samples_key']}", device=args.device)
    info["feature_extractor_weights"] = extractor_fingerprint(extractor)
    result = run_check(
        samples_u8,
        train_u8,
        held_u8,
        {"samples": sample_f, "train": train_f, "held_out": held_f},
        args.out,
        quantile=args.quantile,
        max_rate_ratio=args.max_rate_ratio,
        train_names=_names(train_ds),
        info=info,
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    (Path(args.out) / "memorisation.json").write_text(json.dumps(result, indent=2) + "\n")
    for space in SPACES:
        print(f"{space:9s}: {summary_line(result[space])}")
    print(f"wrote {args.out}/memorisation.json ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
