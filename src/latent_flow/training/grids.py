"""Training-time sample grids of spatially conditioned models (inpainting, semantic synthesis)."""

from __future__ import annotations

import torch
from torch import Tensor

from latent_flow.conditioning import InpaintCondition
from latent_flow.utils.images import colorize_semantic, from_uint8

__all__ = ["grid_conditions", "spatial_training_grid"]


def grid_conditions(datamodule, count: int) -> dict[str, Tensor]:
    """The first ``count`` validation items (collated) of a LatentDataModule, for training grids."""
    if datamodule is None or getattr(datamodule, "val_set", None) is None:
        raise ValueError("sample grids of a spatially conditioned model need the datamodule's validation set")
    val = datamodule.val_set
    items = [val[i] for i in range(min(count, len(val)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def spatial_training_grid(pl_module, datamodule, solver, *, per_row: int, rows: int, seed: int, cfg_scale: float):
    """Grid tensor for a spatial model during training: per validation item, its condition then ``per_row`` samples.

    Inpainting rows start with the masked real image, semantic rows with the coloured map.
    Returns (images (rows * (per_row + 1), 3, H, W) in [-1, 1], ncol, nfe).
    """
    batch = grid_conditions(datamodule, rows)
    n = len(batch["index"])
    batch = {k: v.to(pl_module.device) for k, v in batch.items()}
    cond = pl_module.condition.from_batch(batch)
    labels = cond.pop("label", None)
    rep = {k: v.repeat_interleave(per_row, dim=0) for k, v in cond.items()}
    labels = None if labels is None else labels.repeat_interleave(per_row)
    result = pl_module.sample_latents(
        solver, indices=range(n * per_row), labels=labels, cfg_scale=cfg_scale, seed=seed, spatial_cond=rep
    )
    images, nfe = pl_module.decode(result.x), result.nfe
    res = images.shape[-1]
    if isinstance(pl_module.condition, InpaintCondition):
        mask = batch["mask"].float()
        real = pl_module.decode(batch["latent"])  # the (reconstructed) real image
        first = real * mask  # holes mid-grey
        mask_rep, real_rep = mask.repeat_interleave(per_row, 0), real.repeat_interleave(per_row, 0)
        images = images * (1 - mask_rep) + real_rep * mask_rep  # known region pasted back for display
    else:
        colour = colorize_semantic(batch["semantic"].cpu().numpy(), pl_module.condition.num_semantic_classes)
        first = from_uint8(colour).to(images.device)
    if first.shape[-1] != res:  # pragma: no cover - decoded images always have the map's resolution
        raise ValueError("condition and sample resolutions differ")
    rows_out = []
    for i in range(n):
        rows_out += [first[i : i + 1], images[i * per_row : (i + 1) * per_row]]
    return torch.cat(rows_out), per_row + 1, nfe
