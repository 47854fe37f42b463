"""Condition encoders by name: the one place that knows every kind (base and spatial)."""

from __future__ import annotations

from typing import Any

from latent_flow.conditioning.base import ConditionEncoder, LabelCondition, NoCondition
from latent_flow.conditioning.spatial import build_spatial_condition

__all__ = ["CONDITION_NAMES", "build_condition"]

CONDITION_NAMES: tuple[str, ...] = ("none", "label", "inpaint", "semantic")


def build_condition(
    name: str, *, num_classes: int = 0, latent_shape: tuple[int, int, int] | None = None, **options: Any
) -> ConditionEncoder:
    """Build a condition encoder by name (:data:`CONDITION_NAMES`); unknown options raise.

    ``latent_shape`` ``(C, h, w)`` is needed by the spatial conditions (``inpaint``, ``semantic``).
    """
    if name in ("inpaint", "semantic"):
        return build_spatial_condition(name, num_classes=num_classes, latent_shape=latent_shape, **options)
    if name not in CONDITION_NAMES:
        raise ValueError(f"unknown condition '{name}'; valid: {', '.join(CONDITION_NAMES)}")
    if options:
        raise ValueError(f"condition '{name}': unknown options {sorted(options)}")
    if name == "none":
        return NoCondition()
    return LabelCondition(num_classes)
