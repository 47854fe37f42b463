"""Loading a trained flow checkpoint (what ``api.load_model``, FlowTurbo and post-hoc EMA build on), and
checking that one checkpoint can autoguide another."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import resolve_device

__all__ = ["check_guide", "load_flow_module"]


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


def check_guide(
    model: LatentFlowModule, guide: LatentFlowModule, *, guide_path: str | os.PathLike = "the guide"
) -> None:
    """Raise ``ValueError`` unless ``guide`` can autoguide ``model``: the same latent space (shape,
    normalisation statistics, autoencoder) and the same condition (kind, classes, options)."""
    mh, gh = model.hparams, guide.hparams

    def differ(name: str, mine, theirs) -> None:
        raise ValueError(
            f"guide_ckpt_path={guide_path} cannot guide this model: its {name} is {theirs!r}, the model's is "
            f"{mine!r}; autoguidance needs a weaker model of the same latent space and condition (an earlier "
            "checkpoint of the same run, or a smaller backbone trained on the same latents)"
        )

    if tuple(model.latent_shape) != tuple(guide.latent_shape):
        differ("latent shape", tuple(model.latent_shape), tuple(guide.latent_shape))
    if to_plain(mh.get("autoencoder")) != to_plain(gh.get("autoencoder")):
        differ("autoencoder", to_plain(mh.get("autoencoder")), to_plain(gh.get("autoencoder")))
    for key in ("mean", "std"):
        mine = (to_plain(mh.get("latent_stats")) or {}).get(key)
        theirs = (to_plain(gh.get("latent_stats")) or {}).get(key)
        if mine is None or theirs is None:
            continue
        if len(mine) != len(theirs) or any(abs(a - b) > 1e-4 * max(1.0, abs(a)) for a, b in zip(mine, theirs)):
            differ(f"latent {key} (normalisation)", mine, theirs)
    strip = lambda c: {k: v for k, v in (to_plain(c) or {}).items() if k not in ("label_dropout", "cond_dropout")}  # noqa: E731
    if strip(mh.get("condition")) != strip(gh.get("condition")):
        differ("condition", strip(mh.get("condition")), strip(gh.get("condition")))
    if int(model.num_classes) != int(guide.num_classes):
        differ("number of classes", int(model.num_classes), int(guide.num_classes))
