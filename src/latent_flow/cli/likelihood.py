"""NLL / bits per dimension of held-out data: ``python -m latent_flow.likelihood ckpt_path=...``.

The held-out data are the checkpoint's validation split: the run's dataset (``config.yaml`` next
to ``checkpoints/``) split exactly as training split it (:func:`latent_flow.data.datamodule.split_indices`
with the run's ``data.val_fraction`` and ``seed``; items never trained on), or with
``dataset_split=val`` all of the dataset's own held-out split (emoji: the set FID is measured against). Each item is scored by
:func:`latent_flow.api.log_likelihood`: latent models encode the image with the model's autoencoder
and its training normalisation (bits/dim in the autoencoder's latent space, normalised latents);
pixel models (autoencoder ``identity`` / space-to-depth) score the dequantised 8-bit image in pixel
space. Label models use the velocity conditional on the item's true label (no guidance).

Writes ``likelihood.json`` into the run directory (or ``out_dir``): the mean bits/dim with its
standard error over the samples, NLL in nats per dimension, what space it is in, NFE and the settings.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from latent_flow.api import LIKELIHOOD_SPACES, load_model, log_likelihood
from latent_flow.data.datamodule import split_indices
from latent_flow.utils.hashing import file_sha256
from latent_flow.utils.io import write_json

__all__ = ["held_out_split", "run_likelihood"]

log = logging.getLogger(__name__)


def held_out_split(ckpt_path: str | Path, run_config: str | Path | None = None, dataset_split: str | None = None):
    """``(dataset, indices, info)``: the run's dataset and its validation indices (the training split).

    ``dataset_split`` (e.g. ``"val"``): instead, every item of the run's dataset built with
    ``split=dataset_split``, for datasets with their own held-out split (``data=emoji``: the emoji
    held out by codepoint hash, the set FID is measured against)."""
    path = Path(run_config) if run_config else Path(ckpt_path).resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no run config at {path}: the held-out split is the run's validation split, which needs the run's "
            "config.yaml (dataset, data.val_fraction, seed); pass run_config=<run dir>/config.yaml"
        )
    run = OmegaConf.load(path)
    if dataset_split is None:  # the items training held back from the run's dataset
        dataset = instantiate(run.data.dataset)
        val_fraction = float(run.data.get("val_fraction", 0.02))
        split_seed = int(run.get("seed", 0))
        indices = [int(i) for i in split_indices(len(dataset), val_fraction, split_seed)[1]]
        split = {"split": "validation", "val_fraction": val_fraction, "split_seed": split_seed}
    else:  # all of the dataset's own held-out split
        if "split" not in run.data.dataset:
            raise ValueError(
                f"dataset_split={dataset_split!r}, but the run's dataset ({run.data.dataset.get('_target_')}, "
                f"in {path}) has no split option; use dataset_split=null (the run's validation split)"
            )
        dataset = instantiate(OmegaConf.merge(run.data.dataset, {"split": str(dataset_split)}))
        indices = list(range(len(dataset)))
        split = {"split": f"dataset split {dataset_split!r} (all of it)"}
    info = {
        "data": str(run.data.get("name")),
        **split,
        "num_items": len(dataset),
        "num_held_out": len(indices),
        "run_config": str(path),
    }
    return dataset, indices, info


def run_likelihood(cfg: DictConfig) -> dict:
    model = load_model(cfg.ckpt_path, device=cfg.device)
    dataset, val_idx, info = held_out_split(cfg.ckpt_path, cfg.get("run_config"), cfg.get("dataset_split"))
    if cfg.num_samples is not None:
        if int(cfg.num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1 or null, got {cfg.num_samples}")
        if int(cfg.num_samples) > len(val_idx):
            raise ValueError(f"num_samples={cfg.num_samples} but the validation split holds {len(val_idx)} items")
        val_idx = val_idx[: int(cfg.num_samples)]
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    bpd, logp, se_bits, nfes = [], [], [], []
    space = dims = None
    start = time.time()
    for lo in range(0, len(val_idx), int(cfg.batch_size)):
        batch = val_idx[lo : lo + int(cfg.batch_size)]
        items = [dataset[i] for i in batch]
        images = torch.stack([it["image"] for it in items])
        labels = torch.stack([it["label"] for it in items]) if model.condition.uses_label else None
        out = log_likelihood(
            model,
            images,
            inputs="images",
            labels=labels,
            indices=batch,
            divergence=cfg.divergence,
            probe=cfg.probe,
            num_probes=int(cfg.num_probes),
            seed=int(cfg.seed),
            atol=float(cfg.atol),
            rtol=float(cfg.rtol),
            use_ema=bool(cfg.use_ema),
            dequantize=bool(cfg.dequantize),
            max_num_steps=cfg.get("max_num_steps"),
        )
        space, dims = out.space, out.num_dims
        bpd.append(out.bits_per_dim)
        logp.append(out.logp)
        nfes.append(out.nfe)
        if out.bits_standard_error is not None:
            se_bits.append(out.bits_standard_error)
        log.info(
            "likelihood %d/%d: %.4f bits/dim (batch mean, NFE %d)",
            lo + len(batch),
            len(val_idx),
            float(out.bits_per_dim.mean()),
            out.nfe,
        )
    seconds = time.time() - start
    bpd_t, logp_t = torch.cat(bpd).double(), torch.cat(logp).double()
    n = len(bpd_t)
    summary = {
        "ckpt_path": str(cfg.ckpt_path),
        "checkpoint_sha256": file_sha256(cfg.ckpt_path),
        "bits_per_dim": float(bpd_t.mean()),
        "bits_per_dim_std_error": float(bpd_t.std(unbiased=True) / math.sqrt(n)) if n > 1 else None,
        "space": space,
        "statement": LIKELIHOOD_SPACES[space],
        "nll_nats_per_dim": float(-logp_t.mean() / dims),
        "num_dims": dims,
        "num_samples": n,
        "held_out": info,
        "condition": "the true label, no guidance" if model.condition.uses_label else "unconditional",
        "divergence": str(cfg.divergence),
        "probe": str(cfg.probe) if cfg.divergence == "hutchinson" else None,
        "num_probes": int(cfg.num_probes) if cfg.divergence == "hutchinson" else None,
        # standard error of the mean bits/dim from the probes alone (num_probes >= 2)
        "hutchinson_std_error_of_mean": (
            float(torch.cat(se_bits).double().square().sum().sqrt() / n) if se_bits else None
        ),
        "dequantized": bool(cfg.dequantize) if space == "pixel" else False,
        "seed": int(cfg.seed),
        "rtol": float(cfg.rtol),
        "atol": float(cfg.atol),
        "use_ema": bool(cfg.use_ema),
        "nfe_per_batch": nfes,
        "nfe_mean": sum(nfes) / len(nfes),
        "batch_size": int(cfg.batch_size),
        "wall_seconds": round(seconds, 2),
        "device": str(model.device),
        "per_sample_bits_per_dim": [round(float(v), 6) for v in bpd_t],
    }
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "likelihood.json", summary)
    se = summary["bits_per_dim_std_error"]
    print(
        f"{summary['bits_per_dim']:.4f}"
        + (f" +- {se:.4f}" if se is not None else "")
        + f" {summary['statement']} ({n} held-out samples, D = {dims}, NFE {summary['nfe_mean']:.0f} per batch); "
        f"wrote {out_dir / 'likelihood.json'}"
    )
    return summary
