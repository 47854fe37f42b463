"""Pixel-space attribute judges: one small CNN per attribute that reads it back from an image.

Compositional samples (LACE, :mod:`latent_flow.compositional`) are steered by *latent* classifiers; scoring
them with those same classifiers would reward adversarial latents. The judges here are independent of
them: they see only **pixels**, and they are trained on the **real training images** with their
attributes (e.g. the emoji attributes of ``data.dataset.attributes=true``,
:mod:`latent_flow.data.emoji_attributes`). Their accuracy on **real held-out images** says how far their
reading of a generated image can be trusted (the same pattern as the part segmenter,
:mod:`latent_flow.evaluation.segmenter`).

* :class:`AttributeJudge`: three stages at 1/2, 1/4 and 1/8 resolution (two 3x3 conv-BN-ReLU each, the
  first strided; a strided stem keeps the cost of one training step at ~0.05 s of one CPU thread at 64 px),
  global average pooling, one linear layer over the attribute's values.
* :func:`train_judge`: cross-entropy with AdamW and a one-cycle learning rate; batches drawn with a seeded
  generator, **class-balanced** by default (``balance=1``: each value as likely as any other in a batch,
  so a rare value such as ``hair=red`` (18 of 3,498 training emoji) is learnt rather than outvoted);
  random horizontal flips (every emoji attribute is mirror invariant) and shifts of up to ``shift`` px.
* :func:`judge_scores`: accuracy, **balanced accuracy** (mean recall over the values present) and per
  value count / recall / how often it is predicted, on images with known attributes.
* :func:`load_or_train_judges`: one judge per attribute, cached as ``<cache_dir>/judges/<name>-<attribute>-<key>.pt``
  (weights through :func:`~latent_flow.utils.checkpoint_files.save_checkpoint_file`, loaded back through the
  verifying :func:`~latent_flow.utils.checkpoint_files.load_checkpoint`) and ``<...>.json`` (training time,
  scores on the training images and, when given, on held-out images). The key hashes the training set's
  fingerprint (its split and attributes included), the resolution, the attribute and its values, and
  :class:`JudgeConfig`, so another split or recipe trains another judge.
* :func:`judge_attributes`: every judge's reading of a set of images.

Images at every interface: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_flow.evaluation.pixel_readers import (
    as_float_images,
    cache_key,
    config_record,
    conv_bn_relu,
    held_out_record,
    load_cached_reader,
    save_cached_reader,
    training_record,
)
from latent_flow.utils.images import to_uint8

__all__ = [
    "JUDGE_VERSION",
    "AttributeJudge",
    "JudgeConfig",
    "attribute_arrays",
    "judge_attributes",
    "judge_cache_key",
    "judge_scores",
    "load_or_train_judges",
    "predict",
    "train_judge",
]

log = logging.getLogger(__name__)

#: bumped when the architecture or the training loop changes (part of the cache key)
JUDGE_VERSION = 1


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture and training recipe of one judge (all fields are part of the cache key).

    ``balance``: batches drawn with item weights ``count(value) ** -balance`` (0: uniform over items, 1:
    uniform over values). ``shift``: random translation of up to this many pixels (edge padding).
    """

    widths: tuple[int, int, int] = (16, 32, 64)
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    balance: float = 1.0
    flip: bool = True
    shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"JudgeConfig.widths must be three positive ints, got {self.widths}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"JudgeConfig.steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 <= self.balance <= 1.0:
            raise ValueError(f"JudgeConfig.balance must be in [0, 1], got {self.balance}")
        if self.shift < 0:
            raise ValueError(f"JudgeConfig.shift must be >= 0, got {self.shift}")


class AttributeJudge(nn.Module):
    """Small CNN: images ``(B, 3, R, R)`` in [-1, 1] -> logits ``(B, len(values))`` of one attribute.

    Args:
        attribute: the attribute's name (e.g. ``"skin"``).
        values: its value names, in index order.
        resolution: image side it is trained for (inputs must match).
        widths: channels of the full, 1/2 and 1/4 resolution stages.
    """

    def __init__(
        self, attribute: str, values: Sequence[str], resolution: int, widths: tuple[int, int, int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if len(values) < 2:
            raise ValueError(f"attribute {attribute!r}: a judge needs >= 2 values, got {list(values)}")
        if int(resolution) < 8:
            raise ValueError(f"judge resolution must be >= 8, got {resolution}")
        self.attribute = str(attribute)
        self.values = [str(v) for v in values]
        self.resolution = int(resolution)
        self.widths = tuple(int(w) for w in widths)
        w1, w2, w3 = self.widths
        self.features = nn.Sequential(
            conv_bn_relu(3, w1, 2), conv_bn_relu(w1, w1),  # R -> R/2 (the strided stem still sees every pixel)
            conv_bn_relu(w1, w2, 2), conv_bn_relu(w2, w2),  # -> R/4
            conv_bn_relu(w2, w3, 2), conv_bn_relu(w3, w3),  # -> R/8
        )  # fmt: skip
        self.head = nn.Linear(w3, len(self.values))

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.resolution,) * 2:
            raise ValueError(
                f"AttributeJudge({self.attribute!r}, {self.resolution} px) expects images (B, 3, {self.resolution}, "
                f"{self.resolution}) in [-1, 1], got {tuple(images.shape)}"
            )
        return self.head(self.features(images).mean(dim=(2, 3)))

    def config(self) -> dict:
        return {
            "attribute": self.attribute,
            "values": list(self.values),
            "resolution": self.resolution,
            "widths": list(self.widths),
        }

    @classmethod
    def from_config(cls, config: Mapping) -> AttributeJudge:
        cfg = dict(config)
        cfg["widths"] = tuple(cfg["widths"])
        return cls(**cfg)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def attribute_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every item of a dataset with attributes as ``(images uint8 (N, R, R, 3), attributes int64 (N, A))``."""
    if not hasattr(dataset, "attribute_names") or not hasattr(dataset, "attributes"):
        raise ValueError(
            f"{type(dataset).__name__} has no attributes: judges train on images with attributes "
            "(emoji: attributes=True, data.dataset.attributes=true)"
        )
    images = [to_uint8(dataset[i]["image"][None])[0] for i in range(len(dataset))]
    return np.stack(images), np.asarray(dataset.attributes, dtype=np.int64)


def _shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift`` px in x and y (edge padding: the background continues)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def train_judge(
    images_u8: np.ndarray,
    labels: np.ndarray,
    attribute: str,
    values: Sequence[str],
    config: JudgeConfig | None = None,
    log_every: int = 0,
) -> AttributeJudge:
    """Train an :class:`AttributeJudge` on images ``(N, R, R, 3)`` uint8 and value indices ``(N,)``.

    The same config and data give the same weights on one machine and thread count (the seed draws the
    initial weights, the batches, the flips and the shifts).
    """
    cfg = config or JudgeConfig()
    labels = np.asarray(labels, dtype=np.int64)
    if images_u8.ndim != 4 or images_u8.shape[-1] != 3 or images_u8.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, R, R, 3), got {images_u8.dtype} {images_u8.shape}")
    if labels.shape != (len(images_u8),):
        raise ValueError(f"{len(images_u8)} images but labels of shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError(f"no training images for the {attribute!r} judge")
    if labels.min() < 0 or labels.max() >= len(values):
        raise ValueError(f"attribute {attribute!r}: value indices must be in [0, {len(values) - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    model = AttributeJudge(attribute, values, images_u8.shape[1], cfg.widths)
    torch.random.set_rng_state(torch_state)
    gen = torch.Generator().manual_seed(cfg.seed)
    counts = np.bincount(labels, minlength=len(values)).astype(np.float64)
    weights = torch.from_numpy(counts[labels] ** -cfg.balance)
    images = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2)  # uint8 NCHW
    targets = torch.from_numpy(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    model.train()
    for step in range(cfg.steps):
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        x, y = images[idx].float() / 127.5 - 1.0, targets[idx]
        if cfg.flip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = _shift(x, cfg.shift, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            log.info("judge %s step %d/%d loss %.4f (%.0f s)", attribute, step, cfg.steps, loss.item(),
                     time.perf_counter() - start)  # fmt: skip
    model.eval()
    model.train_seconds = time.perf_counter() - start  # informational (wall clock)
    model.train_cpu_seconds = time.process_time() - cpu_start  # this process's CPU time (shared machines)
    return model


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(judge: AttributeJudge, images: Tensor | np.ndarray, batch_size: int = 256) -> Tensor:
    """Value indices ``(N,)`` int64 the judge reads from images (uint8 NHWC or float NCHW in [-1, 1])."""
    was_training = judge.training
    judge.eval()
    device = next(judge.parameters()).device
    x = as_float_images(images)
    out = [judge(x[lo : lo + batch_size].to(device)).argmax(1).cpu() for lo in range(0, len(x), batch_size)]
    judge.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def judge_scores(judge: AttributeJudge, images: Tensor | np.ndarray, labels: np.ndarray | Tensor) -> dict:
    """``{"num_images", "accuracy", "balanced_accuracy", "per_value": {value: {count, recall, predicted}},
    "confusion"}`` of the judge's reading of ``images`` against the true value indices ``labels``.

    Balanced accuracy: the mean recall over the values present in ``labels`` (absent values: ``recall``
    None, left out of the mean). ``predicted``: how many images the judge assigns to the value.
    ``confusion[i][j]``: images of value i read as value j.
    """
    labels = torch.as_tensor(np.asarray(labels)).long()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    k = len(judge.values)
    pred = predict(judge, images)
    conf = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    counts, hits = conf.sum(1), conf.diag()
    recalls = [float(hits[i] / counts[i]) if counts[i] else None for i in range(k)]
    present = [r for r in recalls if r is not None]
    return {
        "num_images": len(labels),
        "accuracy": float(hits.sum() / max(len(labels), 1)) if len(labels) else None,
        "balanced_accuracy": float(np.mean(present)) if present else None,
        "per_value": {
            v: {"count": int(counts[i]), "recall": recalls[i], "predicted": int(conf[:, i].sum())}
            for i, v in enumerate(judge.values)
        },
        "confusion": conf.tolist(),
    }


def judge_attributes(judges: Mapping[str, AttributeJudge], images: Tensor | np.ndarray) -> dict[str, Tensor]:
    """``{attribute: value indices (N,)}``: every judge's reading of the same images."""
    x = as_float_images(images)
    return {name: predict(judge, x) for name, judge in judges.items()}


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def judge_cache_key(
    train_fingerprint: str, resolution: int, attribute: str, values: Sequence[str], config: JudgeConfig
) -> str:
    """Short sha1 of the training set's fingerprint, the resolution, the attribute, its values and the config."""
    return cache_key(
        {
            "version": JUDGE_VERSION,
            "data": train_fingerprint,
            "resolution": int(resolution),
            "attribute": str(attribute),
            "values": [str(v) for v in values],
            "config": config_record(config),
        }
    )


def load_or_train_judges(
    cache_dir: str | os.PathLike,
    train_dataset,
    held_out_dataset=None,
    attributes: Sequence[str] | None = None,
    config: JudgeConfig | None = None,
    name: str | None = None,
    log_every: int = 0,
) -> dict[str, AttributeJudge]:
    """One judge per attribute of ``train_dataset`` (images + attributes): cached, or trained, scored and cached.

    ``attributes``: which (default: all of ``train_dataset.attribute_names``; an unknown name raises).
    ``<cache_dir>/judges/<name>-<attribute>-<key>.pt`` holds the weights and architecture, ``.json`` what it
    was trained on, the training time and :func:`judge_scores` on the training images and, when
    ``held_out_dataset`` is given, on those real held-out images. Available as ``judge.metrics``.
    """
    cfg = config or JudgeConfig()
    names = list(getattr(train_dataset, "attribute_names", []) or [])
    if not names:
        raise ValueError(
            f"{type(train_dataset).__name__} has no attribute_names: judges train on a dataset with attributes "
            "(emoji: attributes=True)"
        )
    chosen = list(names) if attributes is None else [str(a) for a in attributes]
    for a in chosen:
        if a not in names:
            raise ValueError(
                f"unknown attribute {a!r} for the judges; the dataset's attributes are: {', '.join(names)}"
            )
    values = {a: [str(v) for v in train_dataset.attribute_values[a]] for a in chosen}
    resolution = int(train_dataset[0]["image"].shape[-1])
    name = name or type(train_dataset).__name__.lower()
    folder = Path(cache_dir) / "judges"
    files = {}
    for a in chosen:
        key = judge_cache_key(train_dataset.fingerprint(), resolution, a, values[a], cfg)
        files[a] = (folder / f"{name}-{a}-{key}.pt", folder / f"{name}-{a}-{key}.json", key)
    judges: dict[str, AttributeJudge] = {}
    missing = [a for a in chosen if not files[a][0].is_file()]
    for a in chosen:
        if a not in missing:
            judges[a] = load_cached_reader(AttributeJudge, *files[a][:2])
    if not missing:
        return judges
    images, attrs = attribute_arrays(train_dataset)
    held = attribute_arrays(held_out_dataset) if held_out_dataset is not None else None
    for a in missing:
        column = names.index(a)
        judge = train_judge(images, attrs[:, column], a, values[a], cfg, log_every=log_every)
        weights, meta, key = files[a]
        info = {
            "key": key,
            "version": JUDGE_VERSION,
            "attribute": a,
            "values": values[a],
            "resolution": resolution,
            "config": config_record(cfg),
            **training_record(judge, train_dataset, len(images)),
            "train_scores": judge_scores(judge, images, attrs[:, column]),
        }
        if held is not None:
            column_held = list(held_out_dataset.attribute_names).index(a)
            info["held_out"] = held_out_record(held_out_dataset, judge_scores(judge, held[0], held[1][:, column_held]))
        save_cached_reader(judge, weights, meta, info)
        judges[a] = judge
    return {a: judges[a] for a in chosen}
