"""Reference statistics of a dataset split: ``python -m latent_flow.reference_stats data=... split=train``.

Writes ``stats.npz`` (feature mean / covariance and the features themselves, for FID, KID and
precision / recall), ``reference.npz`` (the images, uint8 NHWC, ADM evaluator layout) and
``reference.json`` into ``out_dir``. Pass the directory to ``latent_flow.evaluate`` as
``evaluation.reference_stats=<out_dir>`` or to the training callback (``callbacks=eval_fid``).
The maths and the file layout live in :mod:`latent_flow.evaluation.reference`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from latent_flow.evaluation.reference import build_feature_extractor, compute_reference, reference_indices
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import distributed_rank, rank_device, resolve_device

__all__ = ["run_reference_stats"]

log = logging.getLogger(__name__)


def run_reference_stats(cfg: DictConfig) -> dict | None:
    rank, world_size = distributed_rank()
    device = str(resolve_device(rank_device(cfg.device, rank)))
    spec = to_plain(cfg.evaluation.feature_extractor)
    extractor = build_feature_extractor(spec)
    if isinstance(extractor, torch.nn.Module):
        extractor.to(device)
    dataset = instantiate(cfg.data.dataset)
    indices = reference_indices(
        len(dataset),
        split=cfg.split,
        val_fraction=float(cfg.data.val_fraction),
        seed=int(cfg.seed),
        num_images=cfg.num_images,
    )
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    info = {
        "data": cfg.data.name,
        "resolution": int(cfg.data.resolution),
        "dataset_fingerprint": fingerprint,
        "split": cfg.split,
        # the dataset's own split (e.g. data=emoji data.dataset.split=val: the held-out emoji), if it has one
        "dataset_split": cfg.data.dataset.get("split"),
        "val_fraction": float(cfg.data.val_fraction),
        "seed": int(cfg.seed),
        "augmentation": "none (no flip)",
    }
    log.info(
        "reference statistics of %s split=%s: %d images -> %s", cfg.data.name, cfg.split, len(indices), cfg.out_dir
    )
    summary = compute_reference(
        dataset,
        indices,
        extractor,
        Path(cfg.out_dir),
        extractor_spec=spec,
        info=info,
        batch_size=int(cfg.batch_size),
        chunk_size=int(cfg.chunk_size),
        save_images=bool(cfg.save_images),
        device=device,
        rank=rank,
        world_size=world_size,
        num_workers=int(cfg.data.get("num_workers", 0)),
        wait_timeout=float(cfg.wait_timeout),
    )
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("data", "split", "num_images", "feature_dim", "files")}, indent=2))
        print(f"reference statistics written to {cfg.out_dir}")
    return summary
