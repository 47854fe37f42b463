"""The one solver dispatch for a trained model: every ``sampler=...`` config, FlowTurbo included."""

from __future__ import annotations

from typing import Any

from latent_flow.flowturbo.sampler import build_flowturbo_solver
from latent_flow.sampling.solvers import Solver, build_solver

__all__ = ["build_model_solver"]


def build_model_solver(model, name: str, *, use_ema: bool = True, **options: Any) -> Solver:
    """Any sampler by name for a trained model: ``flowturbo`` (needs the model) or a plain solver.

    The one call for code that samples a ``LatentFlowModule`` and accepts every ``sampler=...``
    config: ``solver = build_model_solver(model, **sampler_cfg)`` then
    ``model.sample_latents(solver, ...)`` (or :func:`latent_flow.generation.sample_batches`).
    """
    if str(name).lower() == "flowturbo":
        return build_flowturbo_solver(model, use_ema=use_ema, **options)
    return build_solver(name, **options)
