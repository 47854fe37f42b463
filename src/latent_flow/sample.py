"""Sample from a trained model: ``python -m latent_flow.sample ckpt_path=... num_samples=64 sampler=heun``.

Writes into the run directory (or ``out_dir``): ``grid.png``, ``images/NNNNNN.png``
(lossless, one per sample index), optionally ``samples.npz`` (``arr_0``: uint8 NHWC,
``labels``), and ``summary.json`` (NFE, wall time, ms per image, settings).
Noise is seeded per sample index, so the same command reproduces the same images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from latent_flow.runtime import CONFIG_DIR

__all__ = ["run_sampling", "main", "parse_labels", "sampling_settings", "cfg_interval_of"]

log = logging.getLogger(__name__)


def parse_labels(label, num_samples: int, num_classes: int, uses_label: bool) -> torch.Tensor | None:
    """``label``: None (every class, in equal consecutive blocks), an int, or a list (repeated to ``num_samples``)."""
    if not uses_label:
        if label is not None:
            raise ValueError("label=... given, but this checkpoint was trained without labels (condition=none)")
        return None
    if label is None:  # consecutive blocks per class: a grid with one row per class
        per_class = -(-num_samples // num_classes)
        return torch.arange(num_samples) // per_class
    values = [int(v) for v in (label if isinstance(label, (list, tuple)) else [label])]
    for v in values:
        if not 0 <= v <= num_classes:
            raise ValueError(
                f"label={v} is out of range: this model has {num_classes} classes (0..{num_classes - 1}; "
                f"{num_classes} is the null class)"
            )
    return torch.tensor(values * (num_samples // len(values) + 1))[:num_samples]


def cfg_interval_of(cfg: DictConfig) -> list[float] | None:
    """``cfg.cfg_interval`` as ``[t_lo, t_hi]`` (validated; t = 0 noise, t = 1 data) or ``None`` (guide everywhere)."""
    from latent_flow.sampling.guidance import check_guidance_interval

    value = cfg.get("cfg_interval")
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    interval = check_guidance_interval(value)
    return None if interval is None else list(interval)


def sampling_settings(cfg: DictConfig) -> dict:
    """The settings that determine a set of samples (written next to them by sample and evaluate)."""
    return {
        "ckpt_path": str(cfg.ckpt_path),
        "num_samples": int(cfg.num_samples),
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "cfg_scale": float(cfg.cfg_scale),
        "cfg_interval": cfg_interval_of(cfg),
        "seed": int(cfg.seed),
        "use_ema": bool(cfg.use_ema),
    }


def run_sampling(cfg: DictConfig) -> dict:
    from latent_flow.api import generate, load_model
    from latent_flow.utils.images import make_grid_image, save_png, to_uint8
    from latent_flow.utils.io import write_json

    if cfg.num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {cfg.num_samples}")
    cfg_interval = cfg_interval_of(cfg)  # invalid intervals fail before the model loads
    out_dir = Path(cfg.out_dir)
    model = load_model(cfg.ckpt_path, device=cfg.device)
    if model.condition.spatial_channels or any(cfg.get(k) for k in ("inputs", "masks", "semantic")):
        if not model.condition.spatial_channels:
            raise ValueError("inputs= / masks= / semantic= need an inpainting or semantic model (condition=inpaint|semantic)")
        from latent_flow.conditional_sampling import run_conditional_sampling

        return run_conditional_sampling(cfg, model)  # inpainting / semantic synthesis
    labels = parse_labels(
        OmegaConf.to_container(cfg.label) if OmegaConf.is_config(cfg.label) else cfg.label,
        cfg.num_samples,
        model.num_classes,
        model.condition.uses_label,
    )
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    name = sampler.pop("name")
    composer = None
    if cfg.get("compose"):  # compositional control (LACE): energy guidance by attribute classifiers
        from latent_flow.compositional.cli import composed_generator

        composer = composed_generator(cfg, model)
        if cfg_interval is not None:
            raise ValueError("cfg_interval= is not supported with compose= (energy guidance) yet; use cfg_interval=null")
    generate_fn = composer or generate
    interval_kw = {} if cfg_interval is None else {"cfg_interval": cfg_interval}
    all_images, nfe_total, batches = [], 0, 0
    refiner_nfe_total = 0  # sampler=flowturbo: refiner calls, counted apart from the base model's
    start = time.time()
    for lo in range(0, cfg.num_samples, cfg.batch_size):
        hi = min(cfg.num_samples, lo + cfg.batch_size)
        images, result = generate_fn(
            model,
            num_samples=hi - lo,
            sampler=name,
            labels=None if labels is None else labels[lo:hi],
            cfg_scale=cfg.cfg_scale,
            seed=cfg.seed,
            first_index=lo,
            use_ema=cfg.use_ema,
            **interval_kw,
            **sampler,
        )
        nfe_total += result.nfe
        refiner_nfe_total += getattr(result, "refiner_nfe", 0)
        batches += 1
        arr = to_uint8(images)
        if cfg.save_png:
            for k, img in enumerate(arr):
                save_png(img, out_dir / "images" / f"{lo + k:06d}.png")
        all_images.append(arr)
        log.info("sampled %d/%d (NFE %d per batch)", hi, cfg.num_samples, result.nfe)
    seconds = time.time() - start
    arr = np.concatenate(all_images)
    if cfg.grid_nrow:
        nrow = cfg.grid_nrow
    elif labels is not None and cfg.label is None:
        nrow = -(-len(arr) // model.num_classes)  # one row per class
    else:
        nrow = int(np.ceil(np.sqrt(len(arr))))
    grid = make_grid_image(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1, nrow, upscale=cfg.grid_upscale)
    save_png(grid, out_dir / "grid.png")
    if cfg.save_npz:
        np.savez(out_dir / "samples.npz", arr, labels=(labels.numpy() if labels is not None else np.zeros(0)))
    summary = {
        **sampling_settings(cfg),
        "nfe_per_sample": nfe_total / batches,
        **({"base_nfe_per_sample": nfe_total / batches, "refiner_nfe_per_sample": refiner_nfe_total / batches}
           if name == "flowturbo" else {}),
        **(composer.summary() if composer is not None else {}),
        "wall_seconds": round(seconds, 3),
        "ms_per_image": round(1000 * seconds / cfg.num_samples, 2),
        "device": str(model.device),
        "files": {
            "grid": "grid.png",
            "images": "images/" if cfg.save_png else None,
            "npz": "samples.npz" if cfg.save_npz else None,
        },
    }
    write_json(out_dir / "summary.json", summary)
    print(f"wrote {cfg.num_samples} samples to {out_dir} (NFE {summary['nfe_per_sample']:.0f}, "
          f"{summary['ms_per_image']} ms/image)")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    run_sampling(cfg)


if __name__ == "__main__":
    main()
