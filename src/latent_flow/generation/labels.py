"""Class labels of samples: parsed from the command line, checked against the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_labels", "parse_labels"]


def check_labels(labels: Sequence[int] | Tensor | None, num_samples: int, num_classes: int) -> Tensor | None:
    """``labels`` as a long tensor of length ``num_samples``, each in ``[0, num_classes]`` (``num_classes`` = null)."""
    if labels is None:
        return None
    values = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if len(values) != num_samples:
        raise ValueError(f"got {len(values)} labels for num_samples={num_samples}")
    bad = values[(values < 0) | (values > num_classes)]
    if len(bad):
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}] (or {num_classes} = null class), got {bad.tolist()}: "
            f"this model has {num_classes} classes"
        )
    return values


def parse_labels(label, num_samples: int, num_classes: int, uses_label: bool) -> Tensor | None:
    """``label``: None (every class, in equal consecutive blocks), an int, or a list (repeated to ``num_samples``)."""
    if not uses_label:
        if label is not None:
            raise ValueError("label=... given, but this checkpoint was trained without labels (condition=none)")
        return None
    if label is None:  # consecutive blocks per class: a grid with one row per class
        per_class = -(-num_samples // num_classes)
        return torch.arange(num_samples) // per_class
    values = [int(v) for v in (label if isinstance(label, (list, tuple)) else [label])]
    repeated = (values * (num_samples // len(values) + 1))[:num_samples]
    return check_labels(repeated, num_samples, num_classes)
