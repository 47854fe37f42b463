"""Compositional control (LACE on latent flows): latent attribute classifiers, an expression
language over attribute conditions, energy composition (AND / OR / NOT), energy-guided ODE
sampling and sequential editing. Time convention: t = 0 noise, t = 1 data."""

from latent_flow.compositional.classifier import AttributeSpec, LatentAttributeClassifier, load_classifier
from latent_flow.compositional.editing import EditResult, edit_latents, invert, reverse_time, sequential_edit
from latent_flow.compositional.energy import DEFAULT_NOT_CAP, ComposedEnergy, compose_energy, softcap
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
    "AttributeSpec",
    "LatentAttributeClassifier",
    "load_classifier",
    "EditResult",
    "edit_latents",
    "invert",
    "reverse_time",
    "sequential_edit",
    "DEFAULT_NOT_CAP",
    "ComposedEnergy",
    "compose_energy",
    "softcap",
    "And",
    "ExpressionError",
    "Node",
    "Not",
    "Or",
    "Term",
    "parse",
    "satisfied",
    "terms",
    "to_string",
    "validate",
    "EnergyGuidedVelocity",
    "GuidanceSettings",
    "guidance_weight",
    "score_to_velocity_factor",
    "GuidedSampleResult",
    "check_compatible",
    "generate_composed",
    "load_classifier_for",
    "sample_composed",
]
