"""Sampling with spatial conditions: inpainting and semantic-map-to-image.

Command line (hooked into ``python -m latent_flow.sample``)::

    # inpainting: an image (or a folder of images) and a mask (one for all, or a folder of masks
    # named like the images); without masks=, masks come from the model's training mask generator
    python -m latent_flow.sample ckpt_path=RUN/checkpoints/last.ckpt inputs=photo.png masks=mask.png samples_per_input=4
    # semantic synthesis: an index PNG (pixel value = class id) or a folder of them
    python -m latent_flow.sample ckpt_path=RUN/checkpoints/last.ckpt semantic=maps/ samples_per_input=4

Mask convention (:mod:`latent_flow.data.masks`): **1 / white = known, 0 / black = hole**
(``invert_masks=true`` reads white = hole). Inputs must have the model's resolution; semantic
maps must only use the model's class ids; masks must have their image's size and contain both
known and hole pixels. Each violation raises a ``ValueError`` naming the file.

The known region is pasted back exactly, in uint8 pixel space after decoding:
``out = where(mask, input, sample)``, so known pixels of every written PNG equal the input's.

Writes into ``out_dir``: ``images/<stem>_<k>.png`` (``samples_per_input`` per input),
``grids/<stem>.png`` (one row: input | masked input or coloured map | samples), ``grid.png`` (all
rows) and ``summary.json`` (settings, NFE, timings, the bit-exactness check for inpainting).
Noise of sample ``k`` of input ``i`` is seeded by the index ``i * samples_per_input + k``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "colorize_semantic",
    "grid_conditions",
    "list_inputs",
    "load_image",
    "load_semantic_map",
    "paste_known",
    "run_conditional_sampling",
    "sample_spatial",
    "spatial_condition",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ---------------------------------------------------------------------------------- inputs
def list_inputs(path: str | Path, what: str) -> list[Path]:
    """A file, or the image files of a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise FileNotFoundError(f"{what} folder '{path}' has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"{what} '{path}' does not exist")


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file that must be ``resolution`` x ``resolution``."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    if arr.shape[:2] != (resolution, resolution):
        raise ValueError(
            f"input image '{path}' is {arr.shape[1]}x{arr.shape[0]}, but the model generates "
            f"{resolution}x{resolution} images; resize or crop it first"
        )
    return arr


def load_semantic_map(path: str | Path, resolution: int, num_classes: int) -> np.ndarray:
    """Class-id map (H, W) int64 from an index PNG (mode L, P, I or I;16: pixel value = class id)."""
    from PIL import Image

    from latent_flow.conditioning import check_semantic_ids

    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"semantic map '{path}' has mode {img.mode}: expected a single-channel index PNG "
                "(mode L or P) whose pixel values are class ids"
            )
        arr = np.asarray(img).astype(np.int64)
    if arr.shape != (resolution, resolution):
        raise ValueError(
            f"semantic map '{path}' is {arr.shape[1]}x{arr.shape[0]}, but the model generates "
            f"{resolution}x{resolution} images"
        )
    check_semantic_ids(torch.from_numpy(arr), num_classes, f"semantic map '{path}'")
    return arr


#: distinct colours of class ids 1, 2, ... (0 = background is black); more classes get random bright colours
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def colorize_semantic(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Class-id map (..., H, W) -> RGB uint8 with a fixed palette (0 = black background)."""
    palette = np.zeros((max(num_classes, 1) + 1, 3), dtype=np.uint8)
    extra = np.random.default_rng(7).integers(64, 256, size=(len(palette), 3))
    for k in range(1, len(palette)):
        palette[k] = _PALETTE[k - 1] if k - 1 < len(_PALETTE) else extra[k]
    return palette[np.clip(ids, 0, num_classes)]


def _to_float(images_u8: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def paste_known(samples_u8: np.ndarray, inputs_u8: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``where(mask, input, sample)`` in uint8 (N, H, W, 3); masks (N, H, W), 1 = known."""
    return np.where(masks.astype(bool)[..., None], inputs_u8, samples_u8)


# ---------------------------------------------------------------------------------- conditions
@torch.no_grad()
def spatial_condition(
    model, *, images_u8: np.ndarray | None = None, masks: np.ndarray | None = None, semantic: np.ndarray | None = None
) -> dict[str, Tensor]:
    """The ``spatial_cond`` of ``model.sample_latents`` for a batch of inputs.

    Inpainting: images (N, H, W, 3) uint8 and masks (N, H, W) (1 = known); the masked image
    (holes set to 0) is encoded by the model's autoencoder. Semantic: maps (N, H, W) of class ids.
    """
    from latent_flow.conditioning import (
        InpaintCondition,
        SemanticCondition,
        check_semantic_ids,
    )
    from latent_flow.data.masks import check_mask

    condition = model.condition
    if isinstance(condition, InpaintCondition):
        if images_u8 is None or masks is None:
            raise ValueError("an inpainting model needs images and masks")
        for k, m in enumerate(masks):
            check_mask(m, f"mask {k}")
        images = _to_float(images_u8).to(model.device)
        known = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None].to(model.device)
        masked_latent = model.autoencoder.encode(images * known)
        return condition.encode(masked_latent, known)
    if isinstance(condition, SemanticCondition):
        if semantic is None:
            raise ValueError("a semantic model needs semantic maps")
        ids = torch.as_tensor(np.asarray(semantic), dtype=torch.long)
        check_semantic_ids(ids, condition.num_semantic_classes)
        return {"semantic": ids.to(model.device)}
    raise ValueError(f"the model's condition {type(condition).__name__} is not spatial (inpaint or semantic)")


@torch.no_grad()
def sample_spatial(
    model,
    solver,
    spatial_cond: dict[str, Tensor],
    *,
    indices,
    labels: Tensor | None = None,
    cfg_scale: float = 1.0,
    seed: int = 0,
    use_ema: bool = True,
    cfg_interval=None,
) -> tuple[Tensor, int]:
    """Decoded images (N, 3, H, W) in [-1, 1] for spatial conditions (batch N) and the NFE.

    ``cfg_interval=[t_lo, t_hi]``: guidance only there (t = 0 noise), the conditional velocity elsewhere."""
    result = model.sample_latents(
        solver, indices=indices, labels=labels, cfg_scale=cfg_scale, seed=seed, use_ema=use_ema, spatial_cond=spatial_cond,
        cfg_interval=cfg_interval,
    )
    return model.decode(result.x), result.nfe


def grid_conditions(datamodule, count: int) -> dict[str, Tensor]:
    """The first ``count`` validation items (collated) of a LatentDataModule, for training grids."""
    if datamodule is None or getattr(datamodule, "val_set", None) is None:
        raise ValueError("sample grids of a spatially conditioned model need the datamodule's validation set")
    val = datamodule.val_set
    items = [val[i] for i in range(min(count, len(val)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def training_grid(pl_module, datamodule, solver, *, per_row: int, rows: int, seed: int, cfg_scale: float):
    """Grid tensor for a spatial model during training: per validation item, its condition then ``per_row`` samples.

    Inpainting rows start with the masked real image, semantic rows with the coloured map.
    Returns (images (rows * (per_row + 1), 3, H, W) in [-1, 1], ncol, nfe).
    """
    from latent_flow.conditioning import InpaintCondition

    batch = grid_conditions(datamodule, rows)
    n = len(batch["index"])
    batch = {k: v.to(pl_module.device) for k, v in batch.items()}
    cond = pl_module.condition.from_batch(batch)
    labels = cond.pop("label", None)
    rep = {k: v.repeat_interleave(per_row, dim=0) for k, v in cond.items()}
    labels = None if labels is None else labels.repeat_interleave(per_row)
    images, nfe = sample_spatial(
        pl_module, solver, rep, indices=range(n * per_row), labels=labels, cfg_scale=cfg_scale, seed=seed
    )
    res = images.shape[-1]
    if isinstance(pl_module.condition, InpaintCondition):
        mask = batch["mask"].float()
        real = pl_module.decode(batch["latent"])  # the (reconstructed) real image
        first = real * mask  # holes mid-grey
        mask_rep, real_rep = mask.repeat_interleave(per_row, 0), real.repeat_interleave(per_row, 0)
        images = images * (1 - mask_rep) + real_rep * mask_rep  # known region pasted back for display
    else:
        colour = colorize_semantic(batch["semantic"].cpu().numpy(), pl_module.condition.num_semantic_classes)
        first = _to_float(colour).to(images.device)
    if first.shape[-1] != res:  # pragma: no cover - decoded images always have the map's resolution
        raise ValueError("condition and sample resolutions differ")
    rows_out = []
    for i in range(n):
        rows_out += [first[i : i + 1], images[i * per_row : (i + 1) * per_row]]
    return torch.cat(rows_out), per_row + 1, nfe


# ---------------------------------------------------------------------------------- CLI
def _pair_masks(inputs: list[Path], masks_arg, resolution: int, invert: bool, generator) -> list[np.ndarray]:
    from latent_flow.data.masks import check_mask, load_mask

    if masks_arg is None:
        if generator is None:
            raise ValueError("masks=... is required")
        return [check_mask(generator(i), f"generated mask {i}") for i in range(len(inputs))]
    path = Path(masks_arg)
    if path.is_file():
        mask = load_mask(path, (resolution, resolution), invert=invert)
        return [mask] * len(inputs)
    if path.is_dir():
        out = []
        for inp in inputs:
            candidates = [path / (inp.stem + ext) for ext in IMAGE_EXTENSIONS]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise FileNotFoundError(f"no mask for input '{inp.name}' in '{path}' (expected {inp.stem}.png)")
            out.append(load_mask(found[0], (resolution, resolution), invert=invert))
        return out
    raise FileNotFoundError(f"masks '{path}' does not exist")


def run_conditional_sampling(cfg, model) -> dict:
    """``python -m latent_flow.sample`` for inpainting / semantic models (see the module docstring)."""
    from omegaconf import OmegaConf

    from latent_flow.conditioning import InpaintCondition, SemanticCondition
    from latent_flow.sample import cfg_interval_of, parse_labels, sampling_settings
    from latent_flow.flowturbo import build_model_solver
    from latent_flow.utils.images import make_grid_image, save_png, to_uint8
    from latent_flow.utils.io import write_json

    condition = model.condition
    per_input = int(cfg.get("samples_per_input", 4))
    if per_input < 1:
        raise ValueError(f"samples_per_input must be >= 1, got {per_input}")
    resolution = int(condition.resolution)
    inpaint = isinstance(condition, InpaintCondition)
    if inpaint:
        if cfg.get("semantic"):
            raise ValueError("semantic=... given, but this model inpaints (condition=inpaint): use inputs= and masks=")
        if not cfg.get("inputs"):
            raise ValueError("this model inpaints (condition=inpaint): pass inputs=<image or folder> [masks=<mask or folder>]")
        files = list_inputs(cfg.inputs, "inputs")
        images_u8 = np.stack([load_image(f, resolution) for f in files])
        masks = np.stack(
            _pair_masks(files, cfg.get("masks"), resolution, bool(cfg.get("invert_masks", False)), condition.mask_generator())
        ).astype(bool)
    elif isinstance(condition, SemanticCondition):
        if cfg.get("inputs") or cfg.get("masks"):
            raise ValueError("inputs=/masks= given, but this model is semantic-conditional: use semantic=<index PNG or folder>")
        if not cfg.get("semantic"):
            raise ValueError("this model is semantic-conditional: pass semantic=<index PNG or folder>")
        files = list_inputs(cfg.semantic, "semantic")
        maps = np.stack([load_semantic_map(f, resolution, condition.num_semantic_classes) for f in files])
    else:  # pragma: no cover - sample.py only calls this for spatial models
        raise ValueError("not a spatially conditioned model")

    num_inputs = len(files)
    total = num_inputs * per_input
    label_arg = OmegaConf.to_container(cfg.label) if OmegaConf.is_config(cfg.label) else cfg.label
    labels = parse_labels(label_arg, total, model.num_classes, condition.uses_label)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    solver = build_model_solver(model, sampler.pop("name"), use_ema=bool(cfg.use_ema), **sampler)
    out_dir = Path(cfg.out_dir)
    owner = np.repeat(np.arange(num_inputs), per_input)  # input of each sample
    samples, nfe_total, batches = [], 0, 0
    start = time.time()
    for lo in range(0, total, int(cfg.batch_size)):
        hi = min(total, lo + int(cfg.batch_size))
        idx = owner[lo:hi]
        if inpaint:
            cond = spatial_condition(model, images_u8=images_u8[idx], masks=masks[idx])
        else:
            cond = spatial_condition(model, semantic=maps[idx])
        images, nfe = sample_spatial(
            model, solver, cond, indices=range(lo, hi), labels=None if labels is None else labels[lo:hi],
            cfg_scale=float(cfg.cfg_scale), seed=int(cfg.seed), use_ema=bool(cfg.use_ema),
            cfg_interval=cfg_interval_of(cfg),
        )
        arr = to_uint8(images)
        if inpaint:
            arr = paste_known(arr, images_u8[idx], masks[idx])
        samples.append(arr)
        nfe_total += nfe
        batches += 1
        log.info("sampled %d/%d (NFE %d per batch)", hi, total, nfe)
    seconds = time.time() - start
    samples = np.concatenate(samples)

    exact = None
    if inpaint:  # the promise: known pixels are the input's, bit for bit
        exact = bool(np.all(samples[masks[owner]] == images_u8[owner][masks[owner]]))
        if not exact:  # pragma: no cover - paste_known makes this impossible
            raise RuntimeError("known region changed after pasting back")
    rows = []
    for i, f in enumerate(files):
        own = samples[i * per_input : (i + 1) * per_input]
        for k, img in enumerate(own):
            save_png(img, out_dir / "images" / f"{f.stem}_{k}.png")
        if inpaint:
            masked = np.where(masks[i][..., None], images_u8[i], np.uint8(128))
            head = [images_u8[i], masked]
        else:
            head = [colorize_semantic(maps[i], condition.num_semantic_classes)]
        row = np.stack([*head, *own])
        rows.append(row)
        save_png(make_grid_image(_to_float(row), len(row), upscale=int(cfg.grid_upscale)), out_dir / "grids" / f"{f.stem}.png")
    all_rows = np.concatenate(rows)
    save_png(make_grid_image(_to_float(all_rows), len(rows[0]), upscale=int(cfg.grid_upscale)), out_dir / "grid.png")
    summary = {
        **sampling_settings(cfg),
        "num_samples": int(total),
        "condition": condition.__class__.__name__,
        "inputs": [str(f) for f in files],
        "samples_per_input": per_input,
        "nfe_per_sample": nfe_total / batches,
        "wall_seconds": round(seconds, 3),
        "ms_per_image": round(1000 * seconds / total, 2),
        "known_region_bit_exact": exact,
        "mean_hole_ratio": float(1 - masks.mean()) if inpaint else None,
        "files": {"grid": "grid.png", "grids": "grids/", "images": "images/"},
    }
    write_json(out_dir / "summary.json", summary)
    print(f"wrote {total} samples ({per_input} per input, {num_inputs} inputs) to {out_dir}")
    return summary
