"""Measure the emoji spatial-condition models on held-out OpenMoji (writes results.json and grids here).

    .venv/bin/python experiments/emoji_spatial/measure.py [semantic=CKPT] [inpaint=CKPT] [baseline=CKPT] \
        [n=all] [steps=10] [cfg=1.0,2.0] [families=strokes,boxes,half,centre,part] \
        [reference=outputs/reference/emoji64_val_design] [fid=true] [out_dir=outputs/emoji_spatial/measure] \
        [data_root=.cache/emoji] [resolution=64] [cache_dir=.cache] [segmenter_steps=600] [results=results.json]
        [figures_dir=experiments/emoji_spatial]

Held-out set: ``EmojiDataset(split=val, part_maps=True)`` (split by design: no held-out emoji has a variant
in training; the 446 OpenMoji minus those without SVG layers), never trained on. Sampler: Heun ``steps``
(2 x steps NFE), EMA weights, the noise of sample ``i`` seeded by ``i`` (``latent_flow.generation.sample_batches``,
the loop ``sample`` and ``evaluate`` run).

* The part segmenter (``latent_flow.evaluation.segmenter``: a small U-Net trained on the real **training**
  images and their part maps, cached in ``.cache/segmenters/``) reads a map back from each image. Its mIoU on
  the real held-out images is the ceiling; on the autoencoder's reconstructions of them, the ceiling of a
  perfect latent model (the decoder's blur included).
* semantic: one sample per held-out map, per guidance scale: mIoU of the read-back maps against the input
  maps (``latent_flow.evaluation.segmentation``: over all pixels, averaged over the classes present); FID /
  KID of the samples against the held-out images (``python -m latent_flow.evaluate images_dir=...`` with
  ``evaluation.reference_stats=<reference>``). ``baseline=`` a label model (e.g. the emoji recipe's DiT):
  its samples of each held-out emoji's group scored against the same maps (chance level of an image that
  ignores the map). Grid ``semantic_grid.png``: per row the held-out map (legend colours) | 4 samples |
  the real emoji.
* inpaint: per mask family (``latent_flow.data.masks``; masks of variant 7, not a cached training variant;
  ``part`` from each emoji's own part map), one completion per held-out image: the known region equal to the
  input's, bit for bit, after decoding and paste-back (uint8); mean hole ratio; mean absolute error in the
  holes; FID / KID of the completions against the held-out images, next to the masked inputs' (holes
  mid-grey: what inpainting starts from). Grid ``inpaint_grid.png``: per row masked input | 4 completions |
  original, two rows per family.

``fid=false`` skips FID / KID (no Inception pass); ``grid_only=true`` draws the semantic grid alone (at the last
``cfg`` scale; its rows spread over the held-out set). ``n=`` limits the held-out images and ``segmenter_steps=``
the segmenter's training (smoke runs; another recipe is another cached segmenter). ``results=`` (relative to
this folder, or absolute) and ``figures_dir=`` say where the numbers and the grids go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latent_flow.api import load_model
from latent_flow.data.emoji import EmojiDataset
from latent_flow.evaluation.segmenter import (
    SegmenterConfig,
    dataset_arrays,
    load_or_train_segmenter,
    segmentation_scores,
)
from latent_flow.generation import sample_batches
from latent_flow.utils.images import from_uint8, make_grid_image, save_png, to_uint8

HERE = Path(__file__).parent


def _grid_rows(n: int) -> list[int]:
    """``GRID_ROWS`` held-out rows spread evenly over the set: its order groups similar emoji (the first rows
    are all flags and signs, whose maps have no parts)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(GRID_ROWS, n)).round()})


MASK_VARIANT = 7  # not one of the (up to 4) variants cached for training
GRID_ROWS = 8
GRID_SAMPLES = 4


def _colour_maps(maps: np.ndarray, legend: dict[str, tuple[int, int, int]]) -> np.ndarray:
    palette = np.asarray(list(legend.values()), dtype=np.uint8)
    return palette[maps]


def _sample(model, inputs: dict[str, np.ndarray], indices: list[int], rows: list[int], args: dict, **kwargs):
    """Samples ``indices`` (noise seeds) conditioned on held-out rows ``rows``; uint8 (N, H, W, 3) and NFE."""
    row_of = dict(zip(indices, rows, strict=True))

    def spatial(batch: list[int]) -> dict[str, np.ndarray]:
        own = np.asarray([row_of[i] for i in batch])
        return {k: v[own] for k, v in inputs.items()}

    images, nfe = [], set()
    for batch in sample_batches(
        model,
        indices,
        sampler={"name": "heun", "steps": int(args.get("steps", 10))},
        batch_size=int(args.get("batch_size", 64)),
        spatial=spatial if model.condition.spatial_channels else None,
        **kwargs,
    ):
        images.append(batch.images)
        nfe.add(batch.nfe)
    return np.concatenate(images), sorted(nfe)


def _fid(images_u8: np.ndarray, folder: Path, args: dict) -> dict | None:
    """FID / KID of ``images_u8`` against the held-out reference, by ``python -m latent_flow.evaluate images_dir=``."""
    if str(args.get("fid", "true")).lower() == "false":
        return None
    for i, img in enumerate(images_u8):
        save_png(img, folder / "images" / f"{i:06d}.png")
    reference = args.get("reference", "outputs/reference/emoji64_val_design")
    command = [
        sys.executable, "-m", "latent_flow.evaluate", f"images_dir={folder / 'images'}", f"out_dir={folder}",
        f"evaluation.reference_stats={reference}", "metrics=[fid,kid]", f"hydra.run.dir={folder / 'hydra'}",
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    return {k: metrics.get(k) for k in ("fid", "kid_mean", "kid_std", "num_samples", "num_reference", "reference")}


def main(args: dict[str, str]) -> None:
    torch.manual_seed(0)
    root = args.get("data_root", ".cache/emoji")
    out_dir = Path(args.get("out_dir", "outputs/emoji_spatial/measure"))
    resolution = int(args.get("resolution", 64))
    figures = Path(args.get("figures_dir", HERE))
    held = EmojiDataset(root, resolution=resolution, split="val", part_maps=True, prepare=False)
    train = EmojiDataset(root, resolution=resolution, split="train", part_maps=True, prepare=False)
    images_u8, maps = dataset_arrays(held)
    labels = np.asarray(held.targets, dtype=np.int64)
    n = len(images_u8) if args.get("n", "all") == "all" else min(int(args["n"]), len(images_u8))
    images_u8, maps, labels = images_u8[:n], maps[:n], labels[:n]
    held_rows = list(range(n))
    start = time.time()
    seg_config = SegmenterConfig(steps=int(args.get("segmenter_steps", SegmenterConfig.steps)))
    segmenter = load_or_train_segmenter(
        args.get("cache_dir", ".cache"), train, held, seg_config, name="emoji", log_every=100
    )
    results: dict = {
        "held_out": {"dataset": repr(held), "num_images": n, "excluded": {k: len(v) for k, v in held.excluded.items()}},
        "sampler": f"heun {args.get('steps', 10)} steps ({2 * int(args.get('steps', 10))} NFE), EMA",
        "segmenter": {
            "key": segmenter.metrics["key"],
            "train_images": segmenter.metrics["train"]["num_images"],
            "train_seconds": segmenter.metrics["train_seconds"],
            "train_cpu_seconds": segmenter.metrics.get("train_cpu_seconds"),
            "real_held_out": segmentation_scores(segmenter, images_u8, maps),  # the ceiling
        },
    }
    print(f"segmenter on real held-out images: mIoU {results['segmenter']['real_held_out']['miou']:.4f}", flush=True)
    legend = held.part_legend

    if "semantic" in args:
        model = load_model(args["semantic"], device="cpu")
        with torch.no_grad():
            recon = np.concatenate(
                [to_uint8(model.decode(model.autoencoder.encode(from_uint8(images_u8[lo : lo + 64]))))
                 for lo in range(0, n, 64)]
            )  # fmt: skip
        res = {"ckpt": args["semantic"], "reconstruction_ceiling": segmentation_scores(segmenter, recon, maps)}
        inputs = {"maps": maps, "labels": labels}
        scales = [float(s) for s in args.get("cfg", "1.0,2.0").split(",")]
        grid_only = args.get("grid_only", "false") == "true"
        for scale in [] if grid_only else scales:
            t0 = time.time()
            samples, nfe = _sample(model, inputs, list(range(n)), held_rows, args, cfg_scale=scale)
            entry = {**segmentation_scores(segmenter, samples, maps), "nfe": nfe}
            entry["fid_kid"] = _fid(samples, out_dir / f"semantic_cfg{scale}", args)
            entry["seconds"] = round(time.time() - t0, 1)
            res[f"cfg_{scale}"] = entry
            print(f"semantic cfg {scale}: mIoU {entry['miou']:.4f}, FID/KID {entry['fid_kid']}", flush=True)
        # the grid at the last scale: GRID_SAMPLES per map, noise indices after those of the metric samples
        picked = _grid_rows(n)
        rows = [r for r in picked for _ in range(GRID_SAMPLES)]
        grid_samples, _ = _sample(model, inputs, list(range(n, n + len(rows))), rows, args, cfg_scale=scales[-1])
        grid = []
        for k, r in enumerate(picked):
            own = grid_samples[k * GRID_SAMPLES : (k + 1) * GRID_SAMPLES]
            grid.append(np.stack([_colour_maps(maps[r], legend), *own, images_u8[r]]))
        save_png(
            make_grid_image(from_uint8(np.concatenate(grid)), GRID_SAMPLES + 2, upscale=2),
            figures / "semantic_grid.png",
        )
        if not grid_only:
            results["semantic"] = res
    if "baseline" in args:  # a label model: the held-out emoji's group, no map
        model = load_model(args["baseline"], device="cpu")
        scale = float(args.get("baseline_cfg", 2.0))
        samples, nfe = _sample(model, {}, list(range(n)), held_rows, args, cfg_scale=scale,
                               labels=torch.from_numpy(labels))  # fmt: skip
        results["label_baseline"] = {
            "ckpt": args["baseline"],
            "cfg": scale,
            **segmentation_scores(segmenter, samples, maps),
        }
        print(f"label baseline: mIoU {results['label_baseline']['miou']:.4f}", flush=True)

    if "inpaint" in args:
        model = load_model(args["inpaint"], device="cpu")
        generator = model.condition.mask_generator()
        res = {"ckpt": args["inpaint"], "mask_variant": MASK_VARIANT, "mask_settings": generator.config()}
        grid = []
        for family in args.get("families", "strokes,boxes,half,centre,part").split(","):
            t0 = time.time()
            gen = generator.only(family)
            masks = np.stack([gen(i, MASK_VARIANT, maps[i]) for i in range(n)])
            inputs = {"images": images_u8, "masks": masks}
            samples, nfe = _sample(model, inputs, list(range(n)), held_rows, args)
            known = masks[..., None].repeat(3, axis=-1)
            hole = ~known
            masked = np.where(known, images_u8, np.uint8(128))
            entry = {
                "known_region_bit_exact": bool(np.array_equal(samples[known], images_u8[known])),
                "known_values_checked": int(known.sum()),
                "mean_hole_ratio": float(1 - masks.mean()),
                "hole_mean_abs_error_uint8": float(np.abs(samples.astype(int) - images_u8.astype(int))[hole].mean()),
                "nfe": nfe,
                "fid_kid": _fid(samples, out_dir / f"inpaint_{family}", args),
                "fid_kid_masked_input": _fid(masked, out_dir / f"inpaint_{family}_masked", args),
                "seconds": round(time.time() - t0, 1),
            }
            res[family] = entry
            print(f"inpaint {family}: bit-exact {entry['known_region_bit_exact']}, hole {entry['mean_hole_ratio']:.3f}, "
                  f"FID/KID {entry['fid_kid']}", flush=True)  # fmt: skip
            rows = [r for r in range(min(2, n)) for _ in range(GRID_SAMPLES)]
            extra, _ = _sample(model, inputs, list(range(n, n + len(rows))), rows, args)
            for r in range(min(2, n)):
                grid.append(np.stack([masked[r], *extra[r * GRID_SAMPLES : (r + 1) * GRID_SAMPLES], images_u8[r]]))
        save_png(
            make_grid_image(from_uint8(np.concatenate(grid)), GRID_SAMPLES + 2, upscale=2), figures / "inpaint_grid.png"
        )
        results["inpaint"] = res

    results["seconds"] = round(time.time() - start, 1)
    path = HERE / args.get("results", "results.json")
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(results)
    path.write_text(json.dumps(previous, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main(dict(a.split("=", 1) for a in sys.argv[1:]))
