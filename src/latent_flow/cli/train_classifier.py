"""Train latent attribute classifiers for compositional control:
``python -m latent_flow.train_classifier flow_ckpt_path=<run>/checkpoints/last.ckpt [+experiment=shapes_classifier]``.

The classifiers ``p(attribute | x_t, t)`` (t = 0 noise, t = 1 data) learn on noisy latents of the
flow checkpoint's own path, read from the latent cache of ``data`` under the checkpoint's
autoencoder (built when missing). Writes into the run directory (or ``out_dir``):

- ``classifier.pt``: weights, architecture and the flow model it belongs to (scheduler, latent
  shape and statistics), for ``python -m latent_flow.sample ... classifier_ckpt_path=... compose=...``;
- ``classifier_metrics.json``: accuracy per attribute and per t range on seen (validation) items
  and on the held-out combinations (``holdout``), training loss history, timings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from latent_flow.api import load_model
from latent_flow.cli.run import save_resolved_config
from latent_flow.compositional.classifier import LatentAttributeClassifier
from latent_flow.compositional.training import (
    classifier_specs,
    evaluate_classifier,
    holdout_mask,
    train_classifier,
)
from latent_flow.data.datamodule import split_indices
from latent_flow.data.latent_cache import LatentCache, build_cache_distributed
from latent_flow.utils.config import to_plain
from latent_flow.utils.io import write_json

__all__ = ["run_classifier_training"]

log = logging.getLogger(__name__)


def _load_latents(cache, flow_stats: dict, progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """All cached latents (view 0), renormalised with the flow model's statistics, and their attributes."""
    view = cache.dataset_view(random_flip=False)
    if not view.meta.has_attributes:
        raise ValueError(
            f"the latent cache {cache.root} has no attributes: the dataset must provide per-item 'attributes' "
            "(e.g. data=shapes)"
        )
    loader = torch.utils.data.DataLoader(view, batch_size=2048, shuffle=False)
    chunks, attrs = [], []
    for batch in loader:
        chunks.append(batch["latent"])
        attrs.append(batch["attributes"].numpy())
    latents = torch.cat(chunks)
    meta = cache.meta()
    shape = (1, -1, 1, 1)
    raw = latents * torch.tensor(meta.std).view(shape) + torch.tensor(meta.mean).view(shape)
    latents = (raw - torch.tensor(flow_stats["mean"]).view(shape)) / torch.tensor(flow_stats["std"]).view(shape)
    return latents.float(), np.concatenate(attrs)


def run_classifier_training(cfg: DictConfig) -> dict:
    start = time.time()
    out_dir = Path(cfg.out_dir)
    save_resolved_config(cfg, out_dir)
    torch.manual_seed(int(cfg.seed))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    flow = load_model(cfg.flow_ckpt_path, device=cfg.device)
    device = flow.device
    stats = flow.hparams.get("latent_stats")
    if stats is None:
        raise ValueError(f"{cfg.flow_ckpt_path} records no latent statistics; cannot match its latent space")

    dataset = instantiate(cfg.data.dataset)
    for needed in ("attribute_names", "attribute_values"):
        if not hasattr(dataset, needed):
            raise ValueError(
                f"data={cfg.data.name}: the dataset has no {needed}; attribute classifiers need labelled attributes"
            )
    names = list(dataset.attribute_names)
    values = {k: list(v) for k, v in dataset.attribute_values.items()}
    cache = LatentCache(cfg.paths.cache_dir, dataset, flow.autoencoder, flip=cfg.data.flip, name=cfg.data.name)
    if not cache.is_complete():
        log.info("building the latent cache %s", cache.root)
        build_cache_distributed(cache, 0, 1)
    if tuple(cache.meta().latent_shape) != tuple(flow.latent_shape):
        raise ValueError(f"cached latents {cache.meta().latent_shape} differ from the flow model's {flow.latent_shape}")
    latents, attributes = _load_latents(cache, stats, bool(cfg.progress))
    stage_data = time.time()

    holdout = to_plain(cfg.holdout) or []
    held = holdout_mask(attributes, names, values, holdout)
    rest = np.flatnonzero(~held)
    train_pos, val_pos = split_indices(len(rest), float(cfg.train.val_fraction), int(cfg.seed))
    train_idx, val_idx, held_idx = rest[train_pos], rest[val_pos], np.flatnonzero(held)
    specs = classifier_specs(names, values, to_plain(cfg.attributes), to_plain(cfg.continuous), float(cfg.sigma))
    classifier = LatentAttributeClassifier(flow.latent_shape, specs, **to_plain(cfg.classifier)).to(device)
    targets = torch.from_numpy(attributes).long()
    log.info(
        "classifier %.2fM parameters; %d train / %d val / %d held-out items (holdout=%s)",
        sum(p.numel() for p in classifier.parameters()) / 1e6,
        len(train_idx),
        len(val_idx),
        len(held_idx),
        holdout,
    )
    history = train_classifier(
        classifier,
        flow.path,
        latents[train_idx],
        targets[train_idx],
        names,
        steps=int(cfg.train.steps),
        batch_size=int(cfg.train.batch_size),
        lr=float(cfg.train.lr),
        weight_decay=float(cfg.train.weight_decay),
        warmup_steps=int(cfg.train.warmup_steps),
        seed=int(cfg.seed),
        log_every=int(cfg.train.log_every),
        progress=bool(cfg.progress),
    )
    stage_train = time.time()

    max_items = int(cfg.eval.max_items)
    t_bins = list(to_plain(cfg.eval.t_bins))
    # seen: validation items of the training combinations; heldout: every holdout rule on its own,
    # with the joint accuracy of the rule's attributes (the zero-shot combination read correctly)
    seen_idx = val_idx[:max_items]
    metrics = {
        "seen": evaluate_classifier(
            classifier,
            flow.path,
            latents[seen_idx],
            targets[seen_idx],
            names,
            t_bins=t_bins,
            joint=sorted({k for rule in holdout for k in rule}, key=names.index) or None,
        ),
        "heldout": {},
    }
    for rule in holdout:
        rule_idx = np.flatnonzero(holdout_mask(attributes, names, values, [rule]))[:max_items]
        key = " & ".join(f"{k}={v}" for k, v in rule.items())
        metrics["heldout"][key] = evaluate_classifier(
            classifier,
            flow.path,
            latents[rule_idx],
            targets[rule_idx],
            names,
            t_bins=t_bins,
            joint=sorted(rule, key=names.index),
        )
    meta = {
        "flow_ckpt_path": str(cfg.flow_ckpt_path),
        "scheduler": dict(flow.hparams.path["scheduler"]),
        "latent_shape": list(flow.latent_shape),
        "latent_stats": {"mean": list(stats["mean"]), "std": list(stats["std"])},
        "data": {"name": cfg.data.name, "fingerprint": dataset.fingerprint()},
        "holdout": holdout,
        "attribute_values": {s.name: s.values for s in specs},
        "train_steps": int(cfg.train.steps),
    }
    ckpt = classifier.save(out_dir / "classifier.pt", meta)
    summary = {
        **meta,
        "checkpoint": str(ckpt),
        "num_items": {"train": len(train_idx), "seen_val": len(val_idx), "heldout": len(held_idx)},
        "metrics": metrics,
        "history": history,
        "parameters": int(sum(p.numel() for p in classifier.parameters())),
        "device": str(device),
        "seconds": {
            "data": round(stage_data - start, 1),
            "training": round(stage_train - stage_data, 1),
            "total": round(time.time() - start, 1),
        },
    }
    write_json(out_dir / "classifier_metrics.json", summary)
    held = "; ".join(f"held-out {k}: {_fmt(v.get('uniform_t', {}))}" for k, v in metrics["heldout"].items())
    print(
        f"wrote {ckpt} ({summary['seconds']['total']}s); accuracy over uniform t: "
        f"seen {_fmt(metrics['seen'].get('uniform_t', {}))}" + (f"; {held}" if held else "")
    )
    return summary


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in d.items()) or "-"
