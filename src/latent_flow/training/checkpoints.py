"""Flow checkpoints: written atomically with their checksum, verified by every loader; and checking that
one checkpoint can autoguide another.

The files themselves (atomic writes with a ``.xxh128`` checksum beside them, the verifying loader and its
recovery hints) are :mod:`latent_flow.utils.checkpoint_files`; this module adds Lightning's side
(:class:`AtomicCheckpointIO`, which sends every save and resume of a trainer through them) and the flow
module loaders built on :func:`load_checkpoint`: :func:`load_flow_module` (``api.load_model``: ``sample``,
``evaluate``, ``likelihood``, ``edit``, ``train_classifier``, autoguidance guides, FlowTurbo bases),
FlowTurbo's ``load_refiner``, post-hoc EMA and a resumed ``train ckpt_path=`` all read through it.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from latent_flow.flow.path import path_differences
from latent_flow.training.module import LatentFlowModule
from latent_flow.utils.checkpoint_files import (
    CheckpointIntegrityError,
    checkpoint_problem,
    checksum_path,
    checksum_paths,
    load_checkpoint,
    newest_intact_checkpoint,
    nonfinite_tensors,
    read_checksum,
    save_checkpoint_file,
    zip_crc_problem,
)
from latent_flow.utils.config import to_plain
from latent_flow.utils.distributed import resolve_device

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointIntegrityError",
    "check_guide",
    "checkpoint_problem",
    "checksum_path",
    "checksum_paths",
    "flow_module_from_checkpoint",
    "load_checkpoint",
    "load_flow_module",
    "newest_intact_checkpoint",
    "nonfinite_tensors",
    "read_checksum",
    "save_checkpoint_file",
    "zip_crc_problem",
]

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO for every latent_flow trainer: saves through :func:`save_checkpoint_file`
    (atomic, with a checksum), loads through :func:`load_checkpoint` (a resume is verified), and removes a
    checkpoint's checksum files with it.

    :meth:`hold` hands over a checkpoint already verified by :func:`load_checkpoint` (``train ckpt_path=``
    checks it before the run's stages), so that Lightning's load of the same path does not read and
    check the file a second time.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[str, dict[str, Any]] = {}

    def hold(self, path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
        self._held[str(Path(path).resolve())] = checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        held = self._held.pop(str(Path(path).resolve()), None)
        return held if held is not None else load_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        for side in checksum_paths(path):
            side.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- flow modules
def flow_module_from_checkpoint(checkpoint: dict[str, Any], *, path: str | os.PathLike) -> LatentFlowModule:
    """A ``LatentFlowModule`` (on the CPU, train mode) built from a loaded checkpoint: its hyper-parameters,
    ``on_load_checkpoint`` (which checks them) and its ``state_dict`` (strict), as Lightning's
    ``load_from_checkpoint`` does, without reading the file again."""
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams or "backbone" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a latent_flow flow checkpoint (no backbone hyper-parameters)")
    accepted = set(inspect.signature(LatentFlowModule.__init__).parameters) - {"self"}
    model = LatentFlowModule(**{k: v for k, v in dict(hparams).items() if k in accepted})
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model


def load_flow_module(ckpt_path: str | os.PathLike, *, device: str | torch.device = "auto") -> LatentFlowModule:
    """A ``LatentFlowModule`` from a checkpoint written by ``latent_flow.train`` (verified by
    :func:`load_checkpoint`), in eval mode."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist (expected a .ckpt written by latent_flow.train)")
    device = resolve_device(device)
    model = flow_module_from_checkpoint(load_checkpoint(path), path=path)
    return model.to(device).eval()


def check_guide(
    model: LatentFlowModule, guide: LatentFlowModule, *, guide_path: str | os.PathLike = "the guide"
) -> None:
    """Raise ``ValueError`` unless ``guide`` can autoguide ``model``: the same latent space (shape,
    normalisation statistics, autoencoder), the same probability path (time convention, scheduler,
    coupling; :func:`~latent_flow.flow.path.path_differences`) and the same condition (kind, classes, options)."""
    mh, gh = model.hparams, guide.hparams

    def differ(name: str, mine, theirs) -> None:
        raise ValueError(
            f"guide_ckpt_path={guide_path} cannot guide this model: its {name} is {theirs!r}, the model's is "
            f"{mine!r}; autoguidance needs a weaker model of the same latent space, probability path and condition (an earlier "
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
    for what, mine, theirs in path_differences(model.path, guide.path):
        differ(f"probability path's {what}", mine, theirs)
    if getattr(model, "coupling", "independent") != getattr(guide, "coupling", "independent"):
        differ(
            "probability path's coupling",
            getattr(model, "coupling", "independent"),
            getattr(guide, "coupling", "independent"),
        )
    strip = lambda c: {k: v for k, v in (to_plain(c) or {}).items() if k not in ("label_dropout", "cond_dropout")}  # noqa: E731
    if strip(mh.get("condition")) != strip(gh.get("condition")):
        differ("condition", strip(mh.get("condition")), strip(gh.get("condition")))
    if int(model.num_classes) != int(guide.num_classes):
        differ("number of classes", int(model.num_classes), int(guide.num_classes))
