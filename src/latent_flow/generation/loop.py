"""The one batched sampling loop: ``sample``, conditional sampling and ``evaluate`` all run it.

For each batch of sample indices: the spatial condition of those indices (inpainting / semantic
models), the labels, the solve (noise seeded per index, so any batching or rank split gives the
same images), the decode, the known region pasted back (inpainting) and the NFE of the base model
and of the FlowTurbo refiner, counted apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_flow.generation.solvers import build_model_solver
from latent_flow.generation.spatial import paste_known, spatial_condition
from latent_flow.utils.images import to_uint8

__all__ = ["NFETally", "SampledBatch", "sample_batches"]

#: ``spatial(indices) -> {"images": uint8 NHWC, "masks": (N, H, W) bool, "maps": (N, H, W) ids}``
SpatialInputs = Callable[[list[int]], dict[str, np.ndarray]]


@dataclass
class SampledBatch:
    """One batch of the loop: the indices, their uint8 images (N, H, W, 3), the costs."""

    indices: list[int]
    images: np.ndarray
    nfe: int
    refiner_nfe: int
    seconds: float
    inputs: dict[str, np.ndarray] | None = None
    guide_nfe: int = 0
    #: network rows per sample of this batch (all model calls, guided rows twice, the guide's too);
    #: None when the sampler does not report them (``generate_fn``, FlowTurbo)
    model_rows: float | None = None


@dataclass
class NFETally:
    """Model calls per sample over batches: base model, refiner (``sampler=flowturbo``) and the
    autoguidance guide apart."""

    nfe: list[int] = field(default_factory=list)
    refiner_nfe: list[int] = field(default_factory=list)
    guide_nfe: list[int] = field(default_factory=list)
    model_rows: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0

    def add(self, batch: SampledBatch) -> None:
        self.nfe.append(batch.nfe)
        self.refiner_nfe.append(batch.refiner_nfe)
        self.guide_nfe.append(batch.guide_nfe)
        if batch.model_rows is not None:
            self.model_rows.append(batch.model_rows)
        self.seconds += batch.seconds
        self.images += len(batch.indices)

    def summary(self, sampler_name: str, *, guided: bool = False) -> dict[str, Any]:
        """``nfe_per_sample`` (the mean over batches) and, for FlowTurbo, base and refiner NFE apart;
        with autoguidance the guide's evaluations per sample (``guide_nfe_per_sample``); the network
        rows per sample (``model_rows_per_sample``: the cost that NFE alone hides, CFG's doubled
        batch and the guide's rows) when the sampler reports them (FlowTurbo does not)."""
        per = max(len(self.nfe), 1)
        out: dict[str, Any] = {"nfe_per_sample": sum(self.nfe) / per}
        if str(sampler_name).lower() == "flowturbo":
            out["base_nfe_per_sample"] = sum(self.nfe) / per
            out["refiner_nfe_per_sample"] = sum(self.refiner_nfe) / per
        if guided:
            out["guide_nfe_per_sample"] = sum(self.guide_nfe) / per
        if self.model_rows:
            out["model_rows_per_sample"] = sum(self.model_rows) / len(self.model_rows)
        return out


def sample_batches(
    model,
    indices: Sequence[int],
    *,
    sampler: dict[str, Any],
    batch_size: int,
    labels: Tensor | None = None,
    spatial: SpatialInputs | None = None,
    cfg_scale: float = 1.0,
    cfg_interval: Sequence[float] | None = None,
    seed: int = 0,
    use_ema: bool = True,
    generate_fn: Callable | None = None,
    guide=None,
) -> Iterator[SampledBatch]:
    """Sample ``indices`` in batches of ``batch_size``; yields a :class:`SampledBatch` per batch.

    Args:
        sampler: ``{"name": ..., **options}`` (a ``sampler=`` config); dispatched once by
            :func:`~latent_flow.generation.solvers.build_model_solver`.
        labels: one label per index (aligned with ``indices``), for label-conditional models.
        spatial: the inputs of each index (inpainting / semantic models); the known region of an
            inpainting is pasted back in uint8, bit for bit. Inputs that carry ``"labels"`` (the
            label of the render a condition came from) label their samples when ``labels`` is None.
        generate_fn: instead of the model's own velocity, a callable with
            :func:`latent_flow.api.generate`'s signature (compositional energy guidance); it needs
            consecutive indices.
        guide: autoguidance by this weaker model (checked by the caller with
            :func:`latent_flow.training.checkpoints.check_guide`) instead of CFG's unconditional branch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if guide is not None and generate_fn is not None:
        raise ValueError("autoguidance (guide_ckpt_path=) is not supported with compose= (energy guidance)")
    options = dict(sampler)
    name = options.pop("name")
    solver = None if generate_fn is not None else build_model_solver(model, name, use_ema=use_ema, **options)
    indices = [int(i) for i in indices]
    for lo in range(0, len(indices), batch_size):
        batch = indices[lo : lo + batch_size]
        batch_labels = None if labels is None else labels[lo : lo + batch_size]
        start = time.perf_counter()
        inputs = spatial(batch) if spatial is not None else None
        if batch_labels is None and inputs is not None and "labels" in inputs and model.condition.uses_label:
            batch_labels = torch.as_tensor(np.asarray(inputs["labels"]), dtype=torch.long)
        if generate_fn is not None:
            if inputs is not None or batch != list(range(batch[0], batch[0] + len(batch))):
                raise ValueError("generate_fn= samples consecutive indices without spatial conditions")
            images, result = generate_fn(
                model,
                num_samples=len(batch),
                sampler=name,
                labels=batch_labels,
                cfg_scale=cfg_scale,
                seed=seed,
                first_index=batch[0],
                use_ema=use_ema,
                **options,
            )
        else:
            spatial_cond = None
            if inputs is not None:
                spatial_cond = spatial_condition(
                    model, images_u8=inputs.get("images"), masks=inputs.get("masks"), semantic=inputs.get("maps")
                )
            result = model.sample_latents(
                solver,
                indices=batch,
                labels=batch_labels,
                cfg_scale=cfg_scale,
                seed=seed,
                use_ema=use_ema,
                spatial_cond=spatial_cond,
                cfg_interval=cfg_interval,
                guide=guide,
            )
            images = model.decode(result.x)
        arr = to_uint8(images)
        if inputs is not None and inputs.get("masks") is not None:  # the known region is the input's, bit for bit
            arr = paste_known(arr, inputs["images"], inputs["masks"])
        yield SampledBatch(
            indices=batch,
            images=arr,
            nfe=int(result.nfe),
            refiner_nfe=int(getattr(result, "refiner_nfe", 0)),
            seconds=time.perf_counter() - start,
            inputs=inputs,
            guide_nfe=int(getattr(result, "guide_nfe", 0)),
            model_rows=rows / len(batch) if (rows := getattr(result, "model_rows", None)) is not None else None,
        )
