"""Condition encoders: what a velocity network is conditioned on besides (x_t, t).

A condition encoder turns a batch into a ``cond`` dict of tensors, says how many
channels it concatenates to the noisy latent (``spatial_channels``), and knows its
*null* condition for classifier-free guidance. Names: ``none``, ``label``, ``inpaint``,
``semantic`` (the spatial ones optionally with labels, ``use_label=true``).
"""

from latent_flow.conditioning.base import ConditionEncoder, LabelCondition, NoCondition
from latent_flow.conditioning.factory import CONDITION_NAMES, build_condition
from latent_flow.conditioning.spatial import (
    InpaintCondition,
    SemanticCondition,
    SpatialCondition,
    cache_extras,
    check_condition_data,
    check_semantic_ids,
    mask_to_latent,
)

__all__ = [
    "CONDITION_NAMES",
    "ConditionEncoder",
    "InpaintCondition",
    "LabelCondition",
    "NoCondition",
    "SemanticCondition",
    "SpatialCondition",
    "build_condition",
    "cache_extras",
    "check_condition_data",
    "check_semantic_ids",
    "mask_to_latent",
]
