"""Training and evaluation of latent attribute classifiers on the flow model's own path.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**. Each step draws cached
latents ``x_data`` (normalised with the *flow checkpoint's* latent statistics), ``t ~ U(0, 1)``
and ``x_noise ~ N(0, I)`` and trains on ``x_t = alpha_t x_data + sigma_t x_noise`` from
:class:`~latent_flow.flow.path.AffinePath` with the flow checkpoint's scheduler.

``holdout`` rules (e.g. ``[{"shape": "triangle", "color": "red"}]``; a value may be a list) remove
every matching item from the training data; those items form the *held-out* evaluation set
(zero-shot combinations), a random ``val_fraction`` of the rest the *seen* one. Accuracy is
reported per attribute and per t range on both.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from latent_flow.compositional.classifier import (
    AttributeSpec,
    LatentAttributeClassifier,
)
from latent_flow.flow.path import AffinePath

__all__ = ["classifier_specs", "evaluate_classifier", "holdout_mask", "train_classifier"]

log = logging.getLogger(__name__)


def holdout_mask(
    attributes: np.ndarray, names: Sequence[str], values: Mapping[str, Sequence[str]], holdout: Sequence[Mapping] | None
) -> np.ndarray:
    """Bool (N,): items matching any holdout rule (every listed attribute has a listed value)."""
    mask = np.zeros(len(attributes), dtype=bool)
    for rule in holdout or []:
        if not isinstance(rule, Mapping) or not rule:
            raise ValueError(f"each holdout rule must be a non-empty mapping attribute -> value(s), got {rule!r}")
        match = np.ones(len(attributes), dtype=bool)
        for key, wanted in rule.items():
            if key not in names:
                raise ValueError(f"unknown attribute {key!r} in holdout; valid attributes: {', '.join(names)}")
            wanted = [wanted] if isinstance(wanted, (str, int)) else list(wanted)
            idx = []
            for w in wanted:
                if str(w) not in values[key]:
                    raise ValueError(
                        f"unknown value {w!r} for attribute {key!r} in holdout; valid values: {', '.join(values[key])}"
                    )
                idx.append(list(values[key]).index(str(w)))
            match &= np.isin(attributes[:, list(names).index(key)], idx)
        mask |= match
    return mask


def classifier_specs(
    names: Sequence[str],
    values: Mapping[str, Sequence[str]],
    attributes: Sequence[str] | None,
    continuous: Sequence[str] = (),
    sigma: float = 0.1,
) -> list[AttributeSpec]:
    """Head specs for the chosen ``attributes`` (default: all) of a dataset."""
    chosen = list(names) if attributes is None else list(attributes)
    for a in list(chosen) + list(continuous):
        if a not in names:
            raise ValueError(f"unknown attribute {a!r}; the dataset's attributes are: {', '.join(names)}")
    return [
        AttributeSpec(a, "continuous" if a in continuous else "discrete", list(values[a]), sigma=sigma) for a in chosen
    ]


def _path_batch(path: AffinePath, x_data: Tensor, t: Tensor, gen: torch.Generator | None) -> Tensor:
    noise = torch.randn(x_data.shape, generator=gen, device="cpu").to(x_data.device, x_data.dtype)
    return path.sample(noise, x_data, t).x_t


def train_classifier(
    classifier: LatentAttributeClassifier,
    path: AffinePath,
    latents: Tensor,
    targets: Tensor,
    names: list[str],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    warmup_steps: int = 100,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train on ``x_t`` of ``latents`` (N, C, h, w) with ``targets`` (N, A) (columns in ``names`` order)."""
    if steps < 1:
        raise ValueError(f"train.steps must be >= 1, got {steps}")
    if len(latents) == 0:
        raise ValueError("no training latents left (did holdout remove everything?)")
    device = next(classifier.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    history = []
    classifier.train()
    bar = None
    if progress:
        bar = tqdm(total=steps, desc="classifier", unit="step", mininterval=5.0)
    n = len(latents)
    for step in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        x_data = latents[idx].to(device)
        t = torch.rand(len(idx), generator=gen).to(device)
        x_t = _path_batch(path, x_data, t, gen)
        loss, parts = classifier.loss(classifier(x_t, t), targets[idx].to(device), names)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append(
                {"step": step + 1, "loss": float(loss.detach()), **{f"loss/{k}": v for k, v in parts.items()}}
            )
            log.info("classifier step %d/%d loss %.4f %s", step + 1, steps, float(loss.detach()), parts)
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    if bar is not None:
        bar.close()
    classifier.eval()
    return history


@torch.no_grad()
def evaluate_classifier(
    classifier: LatentAttributeClassifier,
    path: AffinePath,
    latents: Tensor,
    targets: Tensor,
    names: list[str],
    *,
    t_bins: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seed: int = 1,
    batch_size: int = 1024,
    joint: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy (discrete) / RMSE (continuous) per attribute, per t range ``[lo, hi)`` and at t = 1.

    Each item is evaluated once per range at a t drawn uniformly in it (fixed seed). ``joint``:
    also report the fraction of items whose listed attributes are all predicted right.
    """
    device = next(classifier.parameters()).device
    edges = [float(v) for v in t_bins]
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 0 or edges[-1] > 1:
        raise ValueError(f"t_bins must be increasing values in [0, 1] (at least two), got {list(t_bins)}")
    ranges = [*itertools.pairwise(edges), (1.0, 1.0)]
    result: dict[str, Any] = {"num_items": len(latents), "per_t_range": {}}
    if len(latents) == 0:
        return result
    gen = torch.Generator().manual_seed(seed)
    for lo, hi in ranges:
        key = "t=1" if lo == hi else f"[{lo:g},{hi:g})"
        correct = {n: 0.0 for n in classifier.specs}
        joint_ok = 0
        for start in range(0, len(latents), batch_size):
            x_data = latents[start : start + batch_size].to(device)
            tgt = targets[start : start + batch_size].to(device)
            t = lo + (hi - lo) * torch.rand(len(x_data), generator=gen)
            t = t.to(device)
            x_t = _path_batch(path, x_data, t, gen)
            pred = classifier.predict(x_t, t)
            all_ok = torch.ones(len(x_data), dtype=torch.bool, device=device)
            for name, spec in classifier.specs.items():
                col = tgt[:, names.index(name)]
                if spec.kind == "discrete":
                    ok = pred[name] == col
                    correct[name] += float(ok.sum())
                else:
                    ok = (pred[name] - col.float()).abs() < 0.5
                    correct[name] += float((pred[name] - col.float()).square().sum())
                if joint is not None and name in joint:
                    all_ok &= ok
            joint_ok += int(all_ok.sum())
        entry = {}
        for name, spec in classifier.specs.items():
            if spec.kind == "discrete":
                entry[name] = correct[name] / len(latents)
            else:
                entry[f"{name}_rmse"] = math.sqrt(correct[name] / len(latents))
        if joint:
            entry["joint(" + "+".join(joint) + ")"] = joint_ok / len(latents)
        result["per_t_range"][key] = entry
    # mean over the ranges [lo, hi) (= uniform t), t = 1 excluded
    keys = [k for k in result["per_t_range"] if k != "t=1"]
    result["uniform_t"] = {
        m: float(np.mean([result["per_t_range"][k][m] for k in keys])) for m in result["per_t_range"][keys[0]]
    }
    return result
