"""Loading a trained flow checkpoint (what ``api.load_model``, FlowTurbo and post-hoc EMA build on)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.distributed import resolve_device

__all__ = ["load_flow_module"]


def load_flow_module(ckpt_path: str | os.PathLike, *, device: str | torch.device = "auto") -> LatentFlowModule:
    """A ``LatentFlowModule`` from a checkpoint written by ``latent_flow.train``, in eval mode."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist (expected a .ckpt written by latent_flow.train)")
    device = resolve_device(device)
    header = torch.load(path, map_location="cpu", weights_only=False)
    if "hyper_parameters" not in header or "backbone" not in header.get("hyper_parameters", {}):
        raise ValueError(f"{ckpt_path} is not a latent_flow flow checkpoint (no backbone hyper-parameters)")
    model = LatentFlowModule.load_from_checkpoint(path, map_location=device)
    return model.to(device).eval()
