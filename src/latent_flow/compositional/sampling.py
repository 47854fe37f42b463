"""Guided sampling of a trained latent flow model with composed attribute energies.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**; the solvers integrate
``dx/dt = v_guided(x, t)`` from noise to data (see :mod:`latent_flow.compositional.guidance`).

    from latent_flow.api import load_model
    from latent_flow.compositional import load_classifier_for, generate_composed
    model = load_model("outputs/.../last.ckpt")
    classifier, meta = load_classifier_for(model, "outputs/.../classifier.pt")
    images, result = generate_composed(model, classifier, "shape=triangle & color=red",
                                       num_samples=16, sampler="heun", steps=10, guidance_scale=2.0)
    result.nfe, result.grad_evals
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from latent_flow.compositional.classifier import (
    LatentAttributeClassifier,
    load_classifier,
)
from latent_flow.compositional.energy import DEFAULT_NOT_CAP, ComposedEnergy
from latent_flow.compositional.guidance import EnergyGuidedVelocity, GuidanceSettings
from latent_flow.sampling.noise import noise_for_indices
from latent_flow.sampling.solvers import build_solver

__all__ = [
    "GuidedSampleResult",
    "check_compatible",
    "generate_composed",
    "guided_solver",
    "guided_velocity_fn",
    "load_classifier_for",
    "model_condition",
    "sample_composed",
]


@dataclass
class GuidedSampleResult:
    """``x``: latents at t = 1; ``nfe``: velocity evaluations (solver count); ``model_calls``: flow
    network calls (a batched CFG call counts once); ``grad_evals``: classifier gradient evaluations."""

    x: Tensor
    nfe: int
    model_calls: int
    grad_evals: int


def check_compatible(model, meta: dict[str, Any], *, where: str = "classifier") -> None:
    """Raise ``ValueError`` when a classifier was trained for another latent space or path than ``model``'s."""
    shape = list(model.latent_shape)
    if meta.get("latent_shape") is not None and list(meta["latent_shape"]) != shape:
        raise ValueError(f"{where} was trained on latents {meta['latent_shape']}, the flow model has {shape}")
    sched = dict(model.hparams["path"]["scheduler"])
    if meta.get("scheduler") is not None and dict(meta["scheduler"]) != sched:
        raise ValueError(
            f"{where} was trained on the path scheduler {meta['scheduler']}, the flow model uses {sched}: "
            "its x_t would not match; retrain it with flow_ckpt_path=<this model's checkpoint>"
        )
    stats = model.hparams.get("latent_stats")
    if meta.get("latent_stats") is not None and stats is not None:
        a = torch.tensor(meta["latent_stats"]["mean"] + meta["latent_stats"]["std"])
        b = torch.tensor(list(stats["mean"]) + list(stats["std"]))
        if a.shape != b.shape or not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise ValueError(
                f"{where} was trained on latents normalised with {meta['latent_stats']}, the flow model uses {stats}"
            )


def load_classifier_for(model, path: str | os.PathLike) -> tuple[LatentAttributeClassifier, dict]:
    """Load a classifier checkpoint on ``model``'s device and check it matches the model."""
    classifier, meta = load_classifier(path, device=model.device)
    check_compatible(model, meta, where=f"classifier {path}")
    classifier.requires_grad_(False)
    return classifier, meta


def model_condition(model, labels: Tensor | None, batch: int) -> dict[str, Tensor]:
    """The flow model's condition dict for a batch (labels for label-conditional models)."""
    if getattr(model.condition, "spatial_channels", 0):
        raise ValueError(
            "compositional sampling supports label-conditional and unconditional models, not spatially conditioned ones"
        )
    if model.condition.uses_label:
        if labels is None:  # the null class: the unconditional velocity of a CFG-trained model
            labels = torch.full((batch,), model.num_classes, dtype=torch.long)
        return {"label": torch.as_tensor(labels, dtype=torch.long).to(model.device)}
    if labels is not None:
        raise ValueError("this model was trained without labels (condition=none); do not pass labels")
    return {}


def guided_velocity_fn(
    model,
    energy,
    *,
    labels: Tensor | None = None,
    batch: int,
    cfg_scale: float = 1.0,
    use_ema: bool = True,
    settings: GuidanceSettings | None = None,
) -> EnergyGuidedVelocity:
    """The model's velocity (with label CFG when ``cfg_scale != 1``) plus energy guidance."""
    cond = model_condition(model, labels, batch)
    base = model.velocity_fn(cond, cfg_scale=cfg_scale, use_ema=use_ema)
    guided = EnergyGuidedVelocity(base, energy, model.path, settings)
    guided.base = base  # keeps the model-call counter reachable
    return guided


def sample_composed(
    model,
    energy,
    solver,
    *,
    indices,
    labels: Tensor | None = None,
    cfg_scale: float = 1.0,
    seed: int = 0,
    use_ema: bool = True,
    settings: GuidanceSettings | None = None,
    x_init: Tensor | None = None,
) -> GuidedSampleResult:
    """Integrate the guided ODE from noise seeded per index (or from ``x_init``) to data."""
    indices = list(indices)
    if x_init is None:
        x_init = noise_for_indices(indices, model.latent_shape, seed=seed, device=model.device)
    vf = guided_velocity_fn(
        model, energy, labels=labels, batch=x_init.shape[0], cfg_scale=cfg_scale, use_ema=use_ema, settings=settings
    )
    was_training = model.training
    model.eval()
    try:
        result = solver.sample(vf, x_init)
    finally:
        model.train(was_training)
    return GuidedSampleResult(
        x=result.x, nfe=result.nfe, model_calls=int(getattr(vf.base, "model_calls", vf.calls)), grad_evals=vf.grad_evals
    )


def guided_solver(name: str, **options):
    """A solver for energy-guided sampling: every fixed-step solver and dopri5, not ``flowturbo``."""
    if str(name).lower() == "flowturbo":
        raise ValueError(
            "compose= / edit guide the base model's velocity with classifier gradients at every step; "
            "sampler=flowturbo's refiner steps skip the base model, so the guidance would not apply. "
            "Use sampler=euler|heun|midpoint|dopri5 here."
        )

    return build_solver(name, **options)


def generate_composed(
    model,
    classifier: LatentAttributeClassifier,
    expression: str,
    *,
    num_samples: int,
    sampler: str = "heun",
    labels=None,
    cfg_scale: float = 1.0,
    seed: int = 0,
    first_index: int = 0,
    use_ema: bool = True,
    guidance_scale: float = 1.0,
    max_weight: float = 10.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
    not_cap: float = DEFAULT_NOT_CAP,
    **sampler_options,
) -> tuple[Tensor, GuidedSampleResult]:
    """Like :func:`latent_flow.api.generate`, guided by ``expression``; returns ``(images in [-1, 1], result)``."""
    solver = guided_solver(sampler, **sampler_options)
    energy = ComposedEnergy(expression, classifier, not_cap=not_cap)
    label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    if label_tensor is not None and len(label_tensor) != num_samples:
        raise ValueError(f"got {len(label_tensor)} labels for num_samples={num_samples}")
    result = sample_composed(
        model,
        energy,
        solver,
        indices=range(first_index, first_index + num_samples),
        labels=label_tensor,
        cfg_scale=cfg_scale,
        seed=seed,
        use_ema=use_ema,
        settings=GuidanceSettings(scale=guidance_scale, max_weight=max_weight, t_min=t_min, t_max=t_max),
    )
    return model.decode(result.x), result
