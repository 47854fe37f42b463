"""Learning-rate schedule: linear warm-up then constant or cosine decay."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int, *, warmup_steps: int, total_steps: int | None, cosine: bool, min_lr_ratio: float = 0.0
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up from ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps; then 1
    (``cosine=False``) or a cosine decay to ``min_lr_ratio`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    if total_steps is None or total_steps <= warmup_steps:
        raise ValueError("cosine decay needs total_steps > warmup_steps (set trainer.max_steps)")
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
