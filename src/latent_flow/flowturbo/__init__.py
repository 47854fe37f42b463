"""FlowTurbo (Zhao et al., NeurIPS 2024): a velocity refiner, pseudo-corrector steps and per-block
compilation for fast sampling of any trained latent_flow checkpoint (DiT or UNet).

Time convention: ``t`` in [0, 1], **t = 0 noise, t = 1 data**.

- :mod:`~latent_flow.flowturbo.refiner`: the refiner network, built from the base's hyper-parameters.
- :mod:`~latent_flow.flowturbo.module`: ``RefinerModule`` (training against the frozen base's EMA
  weights), ``load_refiner`` (checks that a refiner belongs to the base it is used with).
- :mod:`~latent_flow.flowturbo.sampler`: schedules (``H1P5R3``), the solver, NFE counts, compilation.
- :mod:`~latent_flow.flowturbo.train`: ``python -m latent_flow.train +experiment=<name>_refiner base_ckpt_path=...``.
"""

from latent_flow.flowturbo.module import (
    RefinerBaseMismatchError,
    RefinerModule,
    base_condition,
    base_network,
    base_weights_hash,
    load_refiner,
    weights_hash,
)
from latent_flow.flowturbo.refiner import VelocityRefiner, build_refiner, refiner_spec
from latent_flow.flowturbo.sampler import (
    FlowTurboResult,
    FlowTurboSolver,
    Schedule,
    TurboNetworks,
    build_flowturbo_solver,
    parse_schedule,
)

__all__ = [
    "FlowTurboResult",
    "FlowTurboSolver",
    "RefinerBaseMismatchError",
    "RefinerModule",
    "Schedule",
    "TurboNetworks",
    "VelocityRefiner",
    "base_condition",
    "base_network",
    "base_weights_hash",
    "build_flowturbo_solver",
    "build_refiner",
    "load_refiner",
    "parse_schedule",
    "refiner_spec",
    "weights_hash",
]
