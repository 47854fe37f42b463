"""The Python API: load a trained checkpoint and sample with any solver.

    from latent_flow.api import load_model, generate
    model = load_model("outputs/train/<run>/checkpoints/last.ckpt")
    images, result = generate(model, num_samples=16, sampler="heun", steps=10, labels=[0] * 16)

``images`` are in [-1, 1]; ``result.nfe`` counts model calls. For a bare velocity
callable ``v(x, t)`` use the solvers directly::

    from latent_flow.sampling import build_solver
    result = build_solver("dopri5", atol=1e-5, rtol=1e-5).sample(velocity_fn, x_init)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load_model", "generate", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(ckpt_path: str | os.PathLike, *, device: str | torch.device = "auto"):
    """A ``LatentFlowModule`` from a checkpoint written by ``latent_flow.train``, in eval mode."""
    from latent_flow.training.module import LatentFlowModule

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist (expected a .ckpt written by latent_flow.train)")
    device = resolve_device(device)
    header = torch.load(path, map_location="cpu", weights_only=False)
    if "hyper_parameters" not in header or "backbone" not in header.get("hyper_parameters", {}):
        raise ValueError(f"{ckpt_path} is not a latent_flow flow checkpoint (no backbone hyper-parameters)")
    model = LatentFlowModule.load_from_checkpoint(path, map_location=device)
    return model.to(device).eval()


def generate(
    model,
    *,
    num_samples: int,
    sampler: str = "heun",
    labels: Sequence[int] | Tensor | None = None,
    cfg_scale: float = 1.0,
    seed: int = 0,
    first_index: int = 0,
    use_ema: bool = True,
    spatial_cond: dict[str, Tensor] | None = None,
    **sampler_options,
):
    """Sample ``num_samples`` images (noise seeded per index ``first_index + k``); returns (images, result).

    Inpainting / semantic models take ``spatial_cond`` (batch ``num_samples``), built by
    :func:`latent_flow.conditional_sampling.spatial_condition` from images + masks or maps; the
    known region of an inpainting is pasted back by ``conditional_sampling.paste_known``.
    """
    from latent_flow.flowturbo import build_model_solver  # flowturbo: base + refiner; result.refiner_nfe

    solver = build_model_solver(model, sampler, use_ema=use_ema, **sampler_options)
    label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    if label_tensor is not None and len(label_tensor) != num_samples:
        raise ValueError(f"got {len(label_tensor)} labels for num_samples={num_samples}")
    if label_tensor is not None and model.condition.uses_label:
        bad = label_tensor[(label_tensor < 0) | (label_tensor > model.num_classes)]
        if len(bad):
            raise ValueError(
                f"labels must be in [0, {model.num_classes - 1}] (or {model.num_classes} = null class), got {bad.tolist()}"
            )
    result = model.sample_latents(
        solver,
        indices=range(first_index, first_index + num_samples),
        labels=label_tensor,
        cfg_scale=cfg_scale,
        seed=seed,
        use_ema=use_ema,
        spatial_cond=spatial_cond,
    )
    return model.decode(result.x), result
