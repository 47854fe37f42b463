"""Sampling from the command line (``python -m latent_flow.sample ckpt_path=... num_samples=64 sampler=heun``).

Writes into the run directory (or ``out_dir``): ``grid.png``, ``images/NNNNNN.png``
(lossless, one per sample index), optionally ``samples.npz`` (``arr_0``: uint8 NHWC,
``labels``), and ``summary.json`` (NFE, wall time, ms per image, settings).
Noise is seeded per sample index, so the same command reproduces the same images.

Spatially conditioned models (inpainting, semantic synthesis) sample their inputs::

    # inpainting: an image (or a folder of images) and a mask (one for all, or a folder of masks
    # named like the images); without masks=, masks come from the model's training mask generator
    python -m latent_flow.sample ckpt_path=RUN/checkpoints/last.ckpt inputs=photo.png masks=mask.png samples_per_input=4
    # semantic synthesis: an index PNG (pixel value = class id) or a folder of them
    python -m latent_flow.sample ckpt_path=RUN/checkpoints/last.ckpt semantic=maps/ samples_per_input=4

They write ``images/<stem>_<k>.png`` (``samples_per_input`` per input), ``grids/<stem>.png`` (one
row: input | masked input or coloured map | samples), ``grid.png`` (all rows) and ``summary.json``
(with the bit-exactness check of the known region for inpainting). Noise of sample ``k`` of
input ``i`` is seeded by the index ``i * samples_per_input + k``. Conventions and checks:
:mod:`latent_flow.generation.spatial`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from latent_flow.api import load_model
from latent_flow.cli.compose import composed_generator
from latent_flow.conditioning import InpaintCondition, SemanticCondition
from latent_flow.data.image_folder import list_image_files, load_image
from latent_flow.generation import NFETally, load_semantic_map, pair_masks, parse_labels, sample_batches
from latent_flow.sampling.guidance import check_guidance_interval
from latent_flow.training.checkpoints import check_guide
from latent_flow.utils.config import to_plain
from latent_flow.utils.images import colorize_semantic, from_uint8, make_grid_image, save_png
from latent_flow.utils.io import write_json

__all__ = [
    "cfg_interval_of",
    "guide_path",
    "load_guide",
    "run_conditional_sampling",
    "run_sampling",
    "sampling_settings",
]

log = logging.getLogger(__name__)


def cfg_interval_of(cfg: DictConfig) -> list[float] | None:
    """``cfg.cfg_interval`` as ``[t_lo, t_hi]`` (validated; t = 0 noise, t = 1 data) or ``None`` (guide everywhere)."""
    interval = check_guidance_interval(to_plain(cfg.get("cfg_interval")))
    return None if interval is None else list(interval)


def sampling_settings(cfg: DictConfig) -> dict:
    """The settings that determine a set of samples (written next to them by sample and evaluate)."""
    return {
        "ckpt_path": str(cfg.ckpt_path),
        "num_samples": int(cfg.num_samples),
        "sampler": to_plain(cfg.sampler),
        "cfg_scale": float(cfg.cfg_scale),
        "cfg_interval": cfg_interval_of(cfg),
        "seed": int(cfg.seed),
        "use_ema": bool(cfg.use_ema),
        "guide_ckpt_path": guide_path(cfg),
    }


def guide_path(cfg: DictConfig) -> str | None:
    """``guide_ckpt_path`` (set by ``guidance=autoguidance``), or None for classifier-free guidance."""
    if OmegaConf.is_missing(cfg, "guide_ckpt_path"):
        raise ValueError(
            "guidance=autoguidance needs guide_ckpt_path=<checkpoint of a weaker model of the same latents and "
            "condition> (e.g. an earlier checkpoint of the same run: RUN/checkpoints/step_0000500.ckpt)"
        )
    path = cfg.get("guide_ckpt_path")
    return str(path) if path else None


def load_guide(cfg: DictConfig, model):
    """``guide_ckpt_path=`` (``guidance=autoguidance``): the guide model, checked against ``model``; else None."""
    path = guide_path(cfg)
    if not path:
        return None
    guide = load_model(path, device=model.device)
    check_guide(model, guide, guide_path=path)
    return guide


def _label_arg(cfg: DictConfig):
    return to_plain(cfg.get("label"))


def run_sampling(cfg: DictConfig) -> dict:
    """``python -m latent_flow.sample``: label / unconditional models, ``compose=``, or spatial inputs."""
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {cfg.num_samples}")
    cfg_interval = cfg_interval_of(cfg)  # invalid intervals fail before the model loads
    out_dir = Path(cfg.out_dir)
    model = load_model(cfg.ckpt_path, device=cfg.device)
    if model.condition.spatial_channels or any(cfg.get(k) for k in ("inputs", "masks", "semantic")):
        if not model.condition.spatial_channels:
            raise ValueError(
                "inputs= / masks= / semantic= need an inpainting or semantic model (condition=inpaint|semantic)"
            )
        return run_conditional_sampling(cfg, model)  # inpainting / semantic synthesis
    labels = parse_labels(_label_arg(cfg), cfg.num_samples, model.num_classes, model.condition.uses_label)
    sampler = to_plain(cfg.sampler)
    guide = load_guide(cfg, model)
    composer = None
    if cfg.get("compose"):  # compositional control (LACE): energy guidance by attribute classifiers
        composer = composed_generator(cfg, model)
        if cfg_interval is not None:
            raise ValueError(
                "cfg_interval= is not supported with compose= (energy guidance) yet; use cfg_interval=null"
            )
    tally, all_images = NFETally(), []
    for batch in sample_batches(
        model,
        range(cfg.num_samples),
        sampler=sampler,
        batch_size=int(cfg.batch_size),
        labels=labels,
        cfg_scale=float(cfg.cfg_scale),
        cfg_interval=cfg_interval,
        seed=int(cfg.seed),
        use_ema=bool(cfg.use_ema),
        generate_fn=composer,
        guide=guide,
    ):
        tally.add(batch)
        if cfg.save_png:
            for index, img in zip(batch.indices, batch.images):
                save_png(img, out_dir / "images" / f"{index:06d}.png")
        all_images.append(batch.images)
        log.info("sampled %d/%d (NFE %d per batch)", batch.indices[-1] + 1, cfg.num_samples, batch.nfe)
    arr = np.concatenate(all_images)
    if cfg.grid_nrow:
        nrow = cfg.grid_nrow
    elif labels is not None and cfg.label is None:
        nrow = -(-len(arr) // model.num_classes)  # one row per class
    else:
        nrow = int(np.ceil(np.sqrt(len(arr))))
    save_png(make_grid_image(from_uint8(arr), nrow, upscale=cfg.grid_upscale), out_dir / "grid.png")
    if cfg.save_npz:
        np.savez(out_dir / "samples.npz", arr, labels=(labels.numpy() if labels is not None else np.zeros(0)))
    summary = {
        **sampling_settings(cfg),
        **tally.summary(sampler["name"], guided=guide is not None),
        **(composer.summary() if composer is not None else {}),
        "wall_seconds": round(tally.seconds, 3),
        "ms_per_image": round(1000 * tally.seconds / cfg.num_samples, 2),
        "device": str(model.device),
        "files": {
            "grid": "grid.png",
            "images": "images/" if cfg.save_png else None,
            "npz": "samples.npz" if cfg.save_npz else None,
        },
    }
    write_json(out_dir / "summary.json", summary)
    print(
        f"wrote {cfg.num_samples} samples to {out_dir} (NFE {summary['nfe_per_sample']:.0f}, "
        f"{summary['ms_per_image']} ms/image)"
    )
    return summary


def run_conditional_sampling(cfg: DictConfig, model) -> dict:
    """``python -m latent_flow.sample`` for inpainting / semantic models (see the module docstring)."""
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
            raise ValueError(
                "this model inpaints (condition=inpaint): pass inputs=<image or folder> [masks=<mask or folder>]"
            )
        files = list_image_files(cfg.inputs, "inputs")
        images_u8 = np.stack([load_image(f, resolution) for f in files])
        masks = np.stack(
            pair_masks(
                files, cfg.get("masks"), resolution, bool(cfg.get("invert_masks", False)), condition.mask_generator()
            )
        ).astype(bool)
    elif isinstance(condition, SemanticCondition):
        if cfg.get("inputs") or cfg.get("masks"):
            raise ValueError(
                "inputs=/masks= given, but this model is semantic-conditional: use semantic=<index PNG or folder>"
            )
        if not cfg.get("semantic"):
            raise ValueError("this model is semantic-conditional: pass semantic=<index PNG or folder>")
        files = list_image_files(cfg.semantic, "semantic")
        maps = np.stack([load_semantic_map(f, resolution, condition.num_semantic_classes) for f in files])
    else:  # pragma: no cover - run_sampling only calls this for spatial models
        raise ValueError("not a spatially conditioned model")

    num_inputs = len(files)
    total = num_inputs * per_input
    labels = parse_labels(_label_arg(cfg), total, model.num_classes, condition.uses_label)
    sampler = to_plain(cfg.sampler)
    guide = load_guide(cfg, model)
    out_dir = Path(cfg.out_dir)
    owner = np.repeat(np.arange(num_inputs), per_input)  # input of each sample

    def inputs(indices: list[int]) -> dict[str, np.ndarray]:
        idx = owner[indices]
        return {"images": images_u8[idx], "masks": masks[idx]} if inpaint else {"maps": maps[idx]}

    tally, samples = NFETally(), []
    for batch in sample_batches(
        model,
        range(total),
        sampler=sampler,
        batch_size=int(cfg.batch_size),
        labels=labels,
        spatial=inputs,
        cfg_scale=float(cfg.cfg_scale),
        cfg_interval=cfg_interval_of(cfg),
        seed=int(cfg.seed),
        use_ema=bool(cfg.use_ema),
        guide=guide,
    ):
        tally.add(batch)
        samples.append(batch.images)
        log.info("sampled %d/%d (NFE %d per batch)", batch.indices[-1] + 1, total, batch.nfe)
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
        save_png(
            make_grid_image(from_uint8(row), len(row), upscale=int(cfg.grid_upscale)),
            out_dir / "grids" / f"{f.stem}.png",
        )
    all_rows = np.concatenate(rows)
    save_png(make_grid_image(from_uint8(all_rows), len(rows[0]), upscale=int(cfg.grid_upscale)), out_dir / "grid.png")
    summary = {
        **sampling_settings(cfg),
        "num_samples": int(total),
        "condition": condition.__class__.__name__,
        "inputs": [str(f) for f in files],
        "samples_per_input": per_input,
        **tally.summary(sampler["name"], guided=guide is not None),
        "wall_seconds": round(tally.seconds, 3),
        "ms_per_image": round(1000 * tally.seconds / total, 2),
        "known_region_bit_exact": exact,
        "mean_hole_ratio": float(1 - masks.mean()) if inpaint else None,
        "files": {"grid": "grid.png", "grids": "grids/", "images": "images/"},
    }
    write_json(out_dir / "summary.json", summary)
    print(f"wrote {total} samples ({per_input} per input, {num_inputs} inputs) to {out_dir}")
    return summary
