"""Distribution matching for few-step generators on an affine path (DMD; Yin et al. 2024, "One-step
Diffusion with Distribution Matching Distillation"; DMD2, Yin et al. 2024).

A generator ``x = G(z)`` (here: a flow map's jump from noise, ``x = z + u(z, 0, 1)``) is pushed toward the
teacher's distribution by the gradient of ``KL(p_G,t || p_real,t)`` at noised samples ``x_t = path(eps, x, t)``:

    d/dx KL ~ E_t,eps[ w(t) (score_fake(x_t) - score_real(x_t)) ]

with ``score_real`` the (guided) teacher and ``score_fake`` a flow network trained on the generator's own samples
(flow matching on ``x.detach()``). On the CondOT path (``x_t = t x + (1 - t) eps``, t = 0 noise, t = 1 data) the
score difference is ``t / (1 - t)^2 (x_fake - x_real)`` with ``x_. = x_t + (1 - t) v_.`` the data predictions of
the two velocities, so the update direction is the difference of the data predictions; DMD normalises it per
sample by ``mean |x - x_real|`` (its ``w(t)``), which makes the step size independent of the noise level.
:func:`distribution_matching_loss` turns that direction into a loss whose gradient in ``x`` is exactly it:
``1/2 ||x - sg(x - g)||^2`` summed over a sample's elements and averaged over the batch.

DMD2 adds an adversarial term (section 4.3): a discriminator ``D(x_t, t)`` (a head on the fake network's features)
tells noised real data from noised generator samples, trained with the logistic loss
:func:`discriminator_loss`, while the generator descends the non-saturating :func:`generator_loss`; real data
lets the student move past the teacher's own errors, which distribution matching alone copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from latent_flow.flow.path import AffinePath

__all__ = ["discriminator_loss", "distribution_matching_direction", "distribution_matching_loss", "generator_loss"]


def distribution_matching_direction(
    path: AffinePath, x: Tensor, x_t: Tensor, t: Tensor, v_real: Tensor, v_fake: Tensor, *, eps: float = 1e-6
) -> Tensor:
    """DMD's normalised gradient ``g = (x_fake - x_real) / mean|x - x_real|`` per sample, without gradient.

    Args:
        path: the affine path ``x_t`` was drawn from (its velocity -> data conversion).
        x: the generator's samples ``(B, ...)``.
        x_t: ``x`` noised to time ``t`` on ``path``.
        t: ``(B,)`` times in (0, 1).
        v_real, v_fake: the teacher's (guided) and the fake network's velocities at ``(x_t, t)``.
    """
    dtype = torch.promote_types(x_t.dtype, torch.float32)  # at least float32 (bf16 network outputs)
    with torch.no_grad():
        x_real = path.velocity_to_data(x_t.to(dtype), v_real.to(dtype), t)
        x_fake = path.velocity_to_data(x_t.to(dtype), v_fake.to(dtype), t)
        scale = (x.detach().to(dtype) - x_real).abs().flatten(1).mean(dim=1).clamp_min(eps)
        return (x_fake - x_real) / scale.view(-1, *([1] * (x.dim() - 1)))


def distribution_matching_loss(
    path: AffinePath, x: Tensor, x_t: Tensor, t: Tensor, v_real: Tensor, v_fake: Tensor
) -> Tensor:
    """``mean_b 1/2 ||x_b - sg(x_b - g_b)||^2`` with ``g`` :func:`distribution_matching_direction`: its gradient in
    ``x_b`` is ``g_b / B``, so gradient descent moves each sample toward the teacher's data prediction and away
    from the fake network's."""
    direction = distribution_matching_direction(path, x, x_t, t, v_real, v_fake)
    goal = x.detach().to(direction.dtype) - direction
    return 0.5 * (x.to(direction.dtype) - goal).flatten(1).square().sum(dim=1).mean()


def generator_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating GAN loss of the generator, ``mean softplus(-D(fake))`` (= ``-log sigmoid D``)."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's logistic loss, ``mean softplus(-D(real)) + mean softplus(D(fake))`` (the binary
    cross-entropy of real = 1, fake = 0; ``2 log 2`` when both logits are 0)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()
