"""Condition encoders: what a velocity network is conditioned on besides (x_t, t).

A condition encoder turns a batch into a ``cond`` dict of tensors, says how many
channels it concatenates to the noisy latent (``spatial_channels``), and knows its
*null* condition for classifier-free guidance.
"""

from latent_flow.conditioning.base import (
    ConditionEncoder,
    LabelCondition,
    NoCondition,
    build_condition,
)

__all__ = ["ConditionEncoder", "LabelCondition", "NoCondition", "build_condition"]
