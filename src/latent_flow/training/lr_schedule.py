"""Learning-rate schedule: linear warm-up then constant or cosine decay."""

from __future__ import annotations

import math

__all__ = ["check_schedule", "warmup_cosine_factor"]


def check_schedule(optim: dict, max_steps: int | None) -> None:
    """Refuse an ``optim`` section that cannot train for ``trainer.max_steps`` (``None`` / ``-1``: no step
    limit, e.g. a ``max_time`` budget), naming the keys: a learning rate that is not positive and finite,
    a negative warm-up, a cosine decay without more steps than its warm-up, ``min_lr_ratio`` outside
    [0, 1]. Called before any work starts (``train``) and again when the optimizer is built."""
    total = int(max_steps) if max_steps is not None and int(max_steps) > 0 else None
    try:
        lr = float(optim["lr"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"optim.lr must be a number, got {optim.get('lr')!r}") from exc
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"optim.lr must be a positive finite number, got {lr}")
    warmup = int(optim.get("warmup_steps", 0) or 0)
    if warmup < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {warmup}")
    if bool(optim.get("cosine", False)) and (total is None or total <= warmup):
        raise ValueError(
            f"optim.cosine=true needs trainer.max_steps > optim.warmup_steps, got max_steps={total}, "
            f"warmup_steps={warmup}; set trainer.max_steps or optim.cosine=false"
        )
    min_ratio = float(optim.get("min_lr_ratio", 0.0) or 0.0)
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {min_ratio}")


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
