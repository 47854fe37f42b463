"""Compositional control (LACE on latent flows): latent attribute classifiers, an expression
language over attribute conditions, energy composition (AND / OR / NOT), energy-guided ODE
sampling and sequential editing. Time convention: t = 0 noise, t = 1 data."""

from latent_flow.compositional.classifier import (
    AttributeSpec,
    LatentAttributeClassifier,
    load_classifier,
)
from latent_flow.compositional.editing import (
    EditResult,
    edit_latents,
    invert,
    reverse_time,
    sequential_edit,
)
from latent_flow.compositional.energy import (
    DEFAULT_NOT_CAP,
    ComposedEnergy,
    compose_energy,
    softcap,
)
from latent_flow.compositional.expression import (
    And,
    ExpressionError,
    Node,
    Not,
    Or,
    Term,
    parse,
    satisfied,
    terms,
    to_string,
    validate,
)
from latent_flow.compositional.guidance import (
    EnergyGuidedVelocity,
    GuidanceSettings,
    guidance_weight,
    score_to_velocity_factor,
)
from latent_flow.compositional.sampling import (
    GuidedSampleResult,
    check_compatible,
    generate_composed,
    load_classifier_for,
    sample_composed,
)

__all__ = [
    "DEFAULT_NOT_CAP",
    "And",
    "AttributeSpec",
    "ComposedEnergy",
    "EditResult",
    "EnergyGuidedVelocity",
    "ExpressionError",
    "GuidanceSettings",
    "GuidedSampleResult",
    "LatentAttributeClassifier",
    "Node",
    "Not",
    "Or",
    "Term",
    "check_compatible",
    "compose_energy",
    "edit_latents",
    "generate_composed",
    "guidance_weight",
    "invert",
    "load_classifier",
    "load_classifier_for",
    "parse",
    "reverse_time",
    "sample_composed",
    "satisfied",
    "score_to_velocity_factor",
    "sequential_edit",
    "softcap",
    "terms",
    "to_string",
    "validate",
]
