"""Couplings of noise and data for a training batch (t = 0 noise, t = 1 data).

Conditional flow matching draws ``x_noise`` and ``x_data`` independently (``independent``). A
*minibatch optimal-transport* coupling (``ot``; Tong et al. 2023, "Improving and generalizing
flow-based generative models with minibatch optimal transport"; Pooladian et al. 2023,
"Multisample flow matching") re-pairs the batch's noise draws with its data points by the exact
assignment that minimises the total squared Euclidean distance. Every noise draw is still used
exactly once, so the noise marginal stays N(0, I) and the data marginal the data's; the pairs
are closer, the conditional paths cross less, and the regression target has lower variance.

With class labels the assignment is solved within each class (``groups``), so a data point is
only ever paired with noise that the same label's conditional flow transports: the coupling of
``p(x_data | y)`` and N(0, I) for each ``y``. A condition that differs per sample (an
inpainting mask, a semantic map) has no such groups; :func:`check_coupling` refuses it there.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["COUPLINGS", "check_coupling", "ot_noise_permutation", "couple"]

#: The coupling names ``path.coupling`` accepts.
COUPLINGS = ("independent", "ot")


def check_coupling(name: str, *, spatial_condition: bool = False) -> str:
    """Validate ``path.coupling``; ``ot`` needs a condition that is shared by groups of samples."""
    if name not in COUPLINGS:
        raise ValueError(f"path.coupling must be one of {list(COUPLINGS)}, got {name!r}")
    if name == "ot" and spatial_condition:
        raise ValueError(
            "path.coupling=ot pairs noise and data within groups of samples that share their condition; "
            "a spatial condition (inpaint / semantic) differs per sample, so use path.coupling=independent"
        )
    return name


def ot_noise_permutation(x_noise: Tensor, x_data: Tensor, groups: Tensor | None = None) -> Tensor:
    """Indices ``perm`` such that ``x_noise[perm][i]`` is the noise draw assigned to ``x_data[i]``.

    The assignment minimises ``sum_i ||x_noise[perm[i]] - x_data[i]||^2`` exactly (Hungarian
    algorithm, ``scipy.optimize.linear_sum_assignment``), over the whole batch or, with
    ``groups`` of shape ``(B,)``, separately within each group (noise of a group stays in it).
    Ties and the result are deterministic for the same inputs; no random numbers are drawn.
    """
    if x_noise.shape != x_data.shape:
        raise ValueError(f"x_noise {tuple(x_noise.shape)} and x_data {tuple(x_data.shape)} must have one shape")
    batch_size = x_data.shape[0]
    if groups is not None and tuple(groups.shape) != (batch_size,):
        raise ValueError(f"groups must have shape ({batch_size},), got {tuple(groups.shape)}")
    noise = x_noise.detach().reshape(batch_size, -1).double().cpu()
    data = x_data.detach().reshape(batch_size, -1).double().cpu()
    perm = np.arange(batch_size)
    members = [np.arange(batch_size)] if groups is None else _group_members(groups)
    for idx in members:
        if idx.size < 2:
            continue
        index = torch.from_numpy(idx)
        cost = torch.cdist(data[index], noise[index]).square().numpy()
        rows, cols = linear_sum_assignment(cost)
        perm[idx[rows]] = idx[cols]
    return torch.from_numpy(perm).to(x_noise.device)


def _group_members(groups: Tensor) -> list[np.ndarray]:
    values = groups.detach().cpu().numpy()
    return [np.flatnonzero(values == g) for g in np.unique(values)]


def couple(name: str, x_noise: Tensor, x_data: Tensor, groups: Tensor | None = None) -> Tensor:
    """The noise batch re-ordered by the coupling ``name`` (``independent`` returns it as it is)."""
    if name == "independent":
        return x_noise
    if name == "ot":
        return x_noise[ot_noise_permutation(x_noise, x_data, groups)]
    raise ValueError(f"unknown coupling {name!r}; valid: {list(COUPLINGS)}")
