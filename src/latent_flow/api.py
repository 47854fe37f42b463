"""The Python API: load a trained checkpoint and sample with any solver.

    from latent_flow.api import load_model, generate
    model = load_model("outputs/train/<run>/checkpoints/last.ckpt")
    images, result = generate(model, num_samples=16, sampler="heun", steps=10, labels=[0] * 16)

``images`` are in [-1, 1]; ``result.nfe`` counts model calls. For a bare velocity
callable ``v(x, t)`` use the solvers directly::

    from latent_flow.sampling import build_solver
    result = build_solver("dopri5", atol=1e-5, rtol=1e-5).sample(velocity_fn, x_init)

Log-likelihood / bits per dimension of held-out data (``python -m latent_flow.likelihood`` on a split)::

    from latent_flow.api import log_likelihood
    out = log_likelihood(model, images, labels=labels, divergence="hutchinson")
    out.bits_per_dim, out.description   # bits/dim in the autoencoder's latent space, normalised latents
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from latent_flow.autoencoders.identity import IdentityAutoencoder
from latent_flow.flow import likelihood as lik
from latent_flow.generation import build_model_solver, check_labels
from latent_flow.training.checkpoints import check_guide, load_flow_module
from latent_flow.utils.distributed import resolve_device

__all__ = ["load_model", "generate", "resolve_device", "log_likelihood", "ModelLikelihood", "LIKELIHOOD_SPACES"]


def load_model(ckpt_path: str | os.PathLike, *, device: str | torch.device = "auto"):
    """A ``LatentFlowModule`` from a checkpoint written by ``latent_flow.train``, in eval mode."""
    return load_flow_module(ckpt_path, device=device)


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
    cfg_interval: Sequence[float] | None = None,
    guide=None,
    **sampler_options,
):
    """Sample ``num_samples`` images (noise seeded per index ``first_index + k``); returns (images, result).

    ``cfg_interval=[t_lo, t_hi]``: classifier-free guidance only for ``t_lo <= t < t_hi`` (t = 0
    noise, t = 1 data), the conditional velocity elsewhere (``None``: everywhere).

    Inpainting / semantic models take ``spatial_cond`` (batch ``num_samples``), built by
    :func:`latent_flow.generation.spatial_condition` from images + masks or maps; the known region
    of an inpainting is pasted back by :func:`latent_flow.generation.paste_known`.

    ``guide``: autoguidance (Karras et al. 2024) by a weaker model of the same latent space and
    condition (e.g. ``load_model(<earlier checkpoint>)``; checked): ``v_guide + cfg_scale (v - v_guide)``
    instead of CFG; ``result.guide_nfe`` counts the guide's evaluations.
    """
    if guide is not None:
        check_guide(model, guide)
    solver = build_model_solver(model, sampler, use_ema=use_ema, **sampler_options)  # flowturbo: result.refiner_nfe
    label_tensor = None
    if labels is not None:
        label_tensor = torch.as_tensor(labels, dtype=torch.long)
        if model.condition.uses_label:
            label_tensor = check_labels(label_tensor, num_samples, model.num_classes)
        elif len(label_tensor) != num_samples:
            raise ValueError(f"got {len(label_tensor)} labels for num_samples={num_samples}")
    result = model.sample_latents(
        solver,
        indices=range(first_index, first_index + num_samples),
        labels=label_tensor,
        cfg_scale=cfg_scale,
        seed=seed,
        use_ema=use_ema,
        spatial_cond=spatial_cond,
        cfg_interval=cfg_interval,
        guide=guide,
    )
    return model.decode(result.x), result


# ----------------------------------------------------------------------------- likelihood
#: what ``bits_per_dim`` measures, by space (written next to the numbers by ``python -m latent_flow.likelihood``)
LIKELIHOOD_SPACES = {
    "latent": "bits/dim in the autoencoder's latent space, normalised latents",
    "pixel": "bits/dim of the 8-bit images in pixel space (uniform dequantisation: an upper bound on the discrete bpd)",
}


def log_likelihood(
    model,
    images_or_latents: Tensor,
    *,
    inputs: str = "auto",
    labels: Sequence[int] | Tensor | None = None,
    indices: Sequence[int] | None = None,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    num_probes: int = 1,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    use_ema: bool = True,
    dequantize: bool = True,
    max_num_steps: int | None = None,
):
    """Log-likelihood and bits per dimension of data under a trained flow's ODE.

    The density is the one of the ODE ``dx/dt = v(x, t)`` (t = 0 noise N(0, I), t = 1 data) by the
    instantaneous change of variables (:func:`latent_flow.flow.likelihood.log_likelihood`: dopri5 from
    the data back to the noise, exact or Hutchinson divergence). Label models use the conditional
    velocity given the true ``labels`` (no guidance); spatially conditioned models are not supported.

    - **latent models** (and ``inputs="latents"``): images are encoded by the model's autoencoder into
      normalised latents (the training normalisation); ``bits_per_dim = -log p(z) / (D ln 2)`` with
      ``D = C h w``: bits/dim in the autoencoder's latent space, normalised latents.
    - **pixel models** (autoencoder ``identity``, with or without space-to-depth) given images:
      images are dequantised (``x + U / 127.5``, ``U ~ U[0, 1)`` per sample index; ``dequantize=False``
      skips it), ``log p_x = log p_z + log|det dz/dx|`` (the per-channel normalisation; space-to-depth is
      a permutation) and ``bits_per_dim = (-log p_x + D ln 127.5) / (D ln 2)``, ``D = 3 H W``
      (:func:`latent_flow.flow.likelihood.pixel_bits_per_dim`).

    Args:
        images_or_latents: ``(B, 3, H, W)`` images in [-1, 1] (``u8 / 127.5 - 1``) or ``(B, C, h, w)``
            normalised latents.
        inputs: ``"images"``, ``"latents"`` or ``"auto"`` (by shape; ambiguous shapes raise).
        labels: the true labels (label-conditional models).
        indices: sample index of each row (seeds the probes and the dequantisation); default ``0..B-1``.
        divergence, probe, num_probes, seed, atol, rtol, max_num_steps: see ``flow.likelihood.log_likelihood``.

    Returns:
        :class:`ModelLikelihood`.
    """
    if model.condition.spatial_channels:
        raise ValueError("log_likelihood of spatially conditioned models (inpaint / semantic) is not supported")
    x = torch.as_tensor(images_or_latents).to(device=model.device, dtype=torch.float32)
    latent_shape = tuple(model.latent_shape)
    if inputs == "auto":
        is_latent = tuple(x.shape[1:]) == latent_shape
        is_image = x.dim() == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3]
        if is_latent == is_image:
            raise ValueError(
                f"cannot tell images from latents of shape {tuple(x.shape)} (latents are {latent_shape}): "
                "pass inputs='images' or inputs='latents'"
            )
        inputs = "latents" if is_latent else "images"
    if inputs not in ("images", "latents"):
        raise ValueError(f"inputs must be 'images', 'latents' or 'auto', got {inputs!r}")
    batch = x.shape[0]
    indices = list(range(batch)) if indices is None else [int(i) for i in indices]
    if len(indices) != batch:
        raise ValueError(f"got {len(indices)} indices for a batch of {batch}")
    cond: dict[str, Tensor] = {}
    if model.condition.uses_label:
        if labels is None:
            raise ValueError("this model is label-conditional: pass the true labels")
        cond["label"] = torch.as_tensor(labels, dtype=torch.long).to(model.device)
        if len(cond["label"]) != batch:
            raise ValueError(f"got {len(cond['label'])} labels for a batch of {batch}")
    elif labels is not None:
        raise ValueError("this model was trained without labels (condition=none); do not pass labels")
    ae = model.autoencoder
    pixel = inputs == "images" and isinstance(ae, IdentityAutoencoder)
    with torch.no_grad():
        if inputs == "images":
            if pixel and dequantize:
                x = lik.dequantize(x, indices, seed=seed)
            z = ae.encode(x)
        else:
            z = x
    if tuple(z.shape[1:]) != latent_shape:
        raise ValueError(f"latents of shape {tuple(z.shape[1:])}, the model expects {latent_shape}")
    was_training = model.training
    model.eval()
    try:
        velocity = model.velocity_fn(cond, cfg_scale=1.0, use_ema=use_ema)
        res = lik.log_likelihood(
            velocity,
            z,
            divergence=divergence,
            probe=probe,
            num_probes=num_probes,
            seed=seed,
            indices=indices,
            atol=atol,
            rtol=rtol,
            max_num_steps=max_num_steps,
        )
    finally:
        model.train(was_training)
    dims = int(z[0].numel())
    if pixel:
        log_det = lik.normalisation_log_det(ae.latent_std.detach().cpu(), latent_shape[1] * latent_shape[2])
        logp = res.logp + log_det
        bpd = lik.pixel_bits_per_dim(logp, dims)
    else:
        logp = res.logp
        bpd = lik.bits_per_dim(logp, dims)
    se = res.standard_error
    return ModelLikelihood(
        logp=logp.detach().cpu(),
        bits_per_dim=bpd.detach().cpu(),
        logp_latent=res.logp.detach().cpu(),
        space="pixel" if pixel else "latent",
        num_dims=dims,
        nfe=res.nfe,
        standard_error=None if se is None else se.detach().cpu(),
        bits_standard_error=None if se is None else (se / (dims * math.log(2.0))).detach().cpu(),
        dequantized=bool(pixel and dequantize),
    )


@dataclass(frozen=True)
class ModelLikelihood:
    """What :func:`log_likelihood` returns (per sample, on the CPU).

    Attributes:
        logp: ``(B,)`` nats in ``space``: of the normalised latents (``"latent"``) or of the
            (dequantised) images in [-1, 1] as a continuous density (``"pixel"``).
        bits_per_dim: ``(B,)`` bits per dimension in ``space`` (see :data:`LIKELIHOOD_SPACES`).
        logp_latent: ``(B,)`` nats of the normalised latents (= ``logp`` for latent space).
        space: ``"latent"`` or ``"pixel"``.
        num_dims: ``D`` of the bits per dimension.
        nfe: evaluations of the augmented ODE (one batch).
        standard_error / bits_standard_error: ``(B,)`` Hutchinson standard error over the probes
            (``num_probes >= 2``), in nats / in bits per dimension, else ``None``.
        dequantized: whether uniform dequantisation was applied (pixel space).
    """

    logp: Tensor
    bits_per_dim: Tensor
    logp_latent: Tensor
    space: str
    num_dims: int
    nfe: int
    standard_error: Tensor | None = None
    bits_standard_error: Tensor | None = None
    dequantized: bool = False

    @property
    def description(self) -> str:
        return LIKELIHOOD_SPACES[self.space]
