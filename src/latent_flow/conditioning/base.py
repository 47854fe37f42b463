"""Condition encoders behind one interface.

The LightningModule builds its backbone with
``in_channels = latent_channels + condition.spatial_channels`` and calls
``condition.network_inputs(x_t, cond)`` to obtain ``(x_in, label)`` for
``backbone(x_in, t, label)``.  Guidance uses ``condition.null(cond)``.

While training, ``condition.train_dropout(cond)`` replaces a spatial condition by its null
per sample with probability ``cond_dropout``, so the same network also learns the unconditional
velocity that classifier-free guidance needs. Label dropout: for ``condition=label`` in the
backbone (``class_dropout_prob``); for spatial + label conditions in ``train_dropout``, where the
label is nulled *together* with the spatial condition (the joint null, what ``null(cond)`` gives)
with probability ``cond_dropout`` and alone with ``label_dropout`` among the rest
(``drops_labels = True``: the backbone is then built without label dropout; see
:mod:`latent_flow.conditioning.spatial`).

Names (``build_condition``): ``none``, ``label``, ``inpaint`` and ``semantic`` (the last two
in :mod:`latent_flow.conditioning.spatial`; ``use_label=true`` adds class labels to them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConditionEncoder", "LabelCondition", "NoCondition"]

Cond = dict[str, Tensor]


class ConditionEncoder(nn.Module):
    """Base class. Subclasses may own trainable parameters (they train with the backbone)."""

    #: number of channels concatenated to the noisy latent
    spatial_channels: int = 0
    #: whether the backbone receives class labels
    uses_label: bool = False
    #: whether ``train_dropout`` drops the labels itself (the backbone then has no label dropout)
    drops_labels: bool = False

    def from_batch(self, batch: dict[str, Tensor]) -> Cond:
        """Extract the condition tensors of a (latent) batch."""
        return {}

    def null(self, cond: Cond) -> Cond:
        """The unconditional counterpart of ``cond`` (same batch size)."""
        return {}

    def network_inputs(self, x_t: Tensor, cond: Cond) -> tuple[Tensor, Tensor | None]:
        """Return ``(x_in, label)`` for ``backbone(x_in, t, label)``."""
        return x_t, None

    def train_dropout(self, cond: Cond) -> Cond:
        """Condition dropout while training (spatial conditions; their labels too when ``drops_labels``)."""
        return cond

    def extra_repr(self) -> str:
        return f"spatial_channels={self.spatial_channels}, uses_label={self.uses_label}"


class NoCondition(ConditionEncoder):
    """Unconditional generation."""


class LabelCondition(ConditionEncoder):
    """Class-label conditioning; the null label is ``num_classes`` (DiT convention).

    Label dropout for classifier-free guidance happens inside the backbone.
    """

    uses_label = True

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(
                f"condition=label needs a dataset with class labels, got num_classes={num_classes}; "
                "use condition=none for unconditional training"
            )
        self.num_classes = int(num_classes)

    def from_batch(self, batch: dict[str, Tensor]) -> Cond:
        if "label" not in batch:
            raise KeyError("condition=label: the batch has no 'label' entry (dataset without labels?)")
        return {"label": batch["label"].long()}

    def null(self, cond: Cond) -> Cond:
        label = cond["label"]
        return {"label": torch.full_like(label, self.num_classes)}

    def network_inputs(self, x_t: Tensor, cond: Cond) -> tuple[Tensor, Tensor | None]:
        return x_t, cond.get("label")
