"""Energy composition (AND / OR / NOT): the one place where the logic of LACE becomes maths.

Energies are ``E = -log p`` (low = condition satisfied). For a term ``attribute=value`` the
energy comes from a latent attribute classifier at ``(x_t, t)`` (t = 0 noise, t = 1 data):
``E = -log p(value | x_t, t)`` (discrete) or ``(f(x_t, t) - c)^2 / (2 sigma^2)`` (continuous),
see :meth:`~latent_flow.compositional.classifier.LatentAttributeClassifier.term_energy`.

Composition (``w``: a node's weight from the expression, default 1):

- term:   ``w E_term``
- AND:    ``w * sum_i E_i``                 (product of experts; children carry their own weights)
- OR:     ``w * -log sum_i pi_i exp(-E_i)``  with mixture weights ``pi_i = w_i / sum_j w_j``
          (the OR's children's weights are mixture weights, not energy factors); computed with
          ``logsumexp``, so it is exact and stable
- NOT:    ``-w * softcap(E_child)``, ``softcap(E) = cap - softplus(cap - E)``: a smooth
          ``min(E, cap)``. For ``E << cap`` the negation is exact (``-E``); once the child is
          clearly violated (``E`` beyond ``cap``, i.e. ``p < exp(-cap)``) its gradient fades
          (``d softcap / dE = sigmoid(cap - E)``), so NOT pushes away from a condition without
          driving the latent to ever more extreme places. ``cap`` defaults to 5 (p ~ 0.007).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from latent_flow.compositional.expression import (
    And,
    Node,
    Not,
    Or,
    Term,
    parse,
    validate,
)

__all__ = ["DEFAULT_NOT_CAP", "ComposedEnergy", "compose_energy", "softcap"]

#: default cap of a negated energy (nats)
DEFAULT_NOT_CAP = 5.0

EnergyFn = Callable[[Tensor, Tensor], Tensor]


def softcap(energy: Tensor, cap: float) -> Tensor:
    """Smooth ``min(energy, cap)``: ``cap - softplus(cap - energy)``."""
    return cap - F.softplus(cap - energy)


def compose_energy(node: Node, term_energy: Callable[[Term], Tensor], *, not_cap: float = DEFAULT_NOT_CAP) -> Tensor:
    """Energy (B,) of an expression tree, given ``term_energy(term) -> (B,)`` (the unweighted term energy)."""
    return node.weight * _unweighted(node, term_energy, not_cap)


def _unweighted(node: Node, term_energy: Callable[[Term], Tensor], cap: float) -> Tensor:
    if isinstance(node, Term):
        return term_energy(node)
    if isinstance(node, And):
        return torch.stack([compose_energy(c, term_energy, not_cap=cap) for c in node.children]).sum(0)
    if isinstance(node, Or):
        total = sum(c.weight for c in node.children)
        parts = torch.stack([math.log(c.weight / total) - _unweighted(c, term_energy, cap) for c in node.children])
        return -torch.logsumexp(parts, dim=0)
    if isinstance(node, Not):
        return -softcap(compose_energy(node.child, term_energy, not_cap=cap), cap)
    raise TypeError(f"unknown expression node {type(node).__name__}")


class ComposedEnergy:
    """``E(x_t, t)`` (B,) of an expression under a latent attribute classifier.

    One classifier forward per call; every term reads its head. ``extra`` energies
    ``fn(x_t, t) -> (B,)`` (e.g. the latent anchor of editing) are added.

    Args:
        expression: text (parsed and validated against the classifier) or a parsed tree.
        classifier: a :class:`~latent_flow.compositional.classifier.LatentAttributeClassifier`.
        not_cap: cap of negated energies (see the module docstring).
        extra: additional energy functions.
    """

    def __init__(
        self,
        expression: str | Node,
        classifier,
        *,
        not_cap: float = DEFAULT_NOT_CAP,
        extra: Sequence[EnergyFn] = (),
    ) -> None:
        text = expression if isinstance(expression, str) else ""
        self.node = parse(expression) if isinstance(expression, str) else expression
        validate(self.node, classifier.attribute_values, continuous=classifier.continuous, text=text)
        if not not_cap > 0:
            raise ValueError(f"not_cap must be > 0, got {not_cap}")
        self.expression = text
        self.classifier = classifier
        self.not_cap = float(not_cap)
        self.extra = list(extra)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        outputs = self.classifier(x_t, t)
        energy = compose_energy(
            self.node,
            lambda term: self.classifier.term_energy(outputs, term.attribute, term.value),
            not_cap=self.not_cap,
        )
        for fn in self.extra:
            energy = energy + fn(x_t, t)
        return energy
