"""Sampling: ODE solvers, the Euler-Maruyama SDE sampler, time grids, classifier-free guidance, NFE counting.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**; solvers
integrate ``dx/dt = velocity_fn(x, t)`` from t = 0 to t = 1 with ``t`` of
shape ``(B,)``. NFE = number of velocity (= model) calls. Flow-map models (``objective=meanflow``)
also sample in a few jumps of their average velocity: :mod:`latent_flow.sampling.flowmap`
(``sampler=flowmap``, registered in ``SOLVERS`` on import).
"""

from latent_flow.sampling.flowmap import FlowMapSolver, GuidedFlowMap  # registers "flowmap" in SOLVERS
from latent_flow.sampling.guidance import GuidedVelocity, ModelFn, check_guidance_interval, classifier_free_guidance
from latent_flow.sampling.sde import EulerMaruyamaSolver  # registers "euler_maruyama" in SOLVERS
from latent_flow.sampling.solvers import (
    SOLVERS,
    Dopri5Solver,
    EulerSolver,
    FixedStepSolver,
    HeunSolver,
    MidpointSolver,
    NFECounter,
    SampleResult,
    Solver,
    VelocityFn,
    build_solver,
    expand_time,
)
from latent_flow.sampling.time_grids import TIME_GRID_KINDS, shift_time, time_grid

__all__ = [
    "FlowMapSolver",
    "GuidedFlowMap",
    "GuidedVelocity",
    "ModelFn",
    "check_guidance_interval",
    "classifier_free_guidance",
    "EulerMaruyamaSolver",
    "SOLVERS",
    "Dopri5Solver",
    "EulerSolver",
    "FixedStepSolver",
    "HeunSolver",
    "MidpointSolver",
    "NFECounter",
    "SampleResult",
    "Solver",
    "VelocityFn",
    "build_solver",
    "expand_time",
    "TIME_GRID_KINDS",
    "shift_time",
    "time_grid",
]
