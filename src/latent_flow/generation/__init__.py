"""Generation: a trained model + a solver + the decoder, the layer under the API and the commands.

- :func:`build_model_solver`: the one dispatch for every ``sampler=...`` (FlowTurbo included);
- :func:`sample_batches`: the one batched sampling loop (labels, spatial inputs, NFE counted);
- labels (:func:`parse_labels`, :func:`check_labels`) and spatial inputs (:mod:`.spatial`).
"""

from latent_flow.generation.labels import check_labels, parse_labels
from latent_flow.generation.loop import NFETally, SampledBatch, sample_batches
from latent_flow.generation.solvers import build_model_solver
from latent_flow.generation.spatial import load_semantic_map, pair_masks, paste_known, spatial_condition

__all__ = [
    "NFETally",
    "SampledBatch",
    "build_model_solver",
    "check_labels",
    "load_semantic_map",
    "pair_masks",
    "parse_labels",
    "paste_known",
    "sample_batches",
    "spatial_condition",
]
