"""Log-likelihood of data under a flow's ODE (instantaneous change of variables), and bits per dimension.

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**; ``velocity_fn(x, t)`` is
``d/dt x_t`` with ``t`` of shape ``(B,)`` (the solvers' :data:`~latent_flow.sampling.solvers.VelocityFn`).

**Change of variables.** Along a solution of ``dx/dt = v(x, t)`` the log-density of the marginal
obeys ``d/dt log p_t(x_t) = -div v(x_t, t)``, so with ``p_0`` the standard normal

    log p_1(x) = log p_0(x_0) - int_0^1 div v(x_t, t) dt,      x_1 = x, x_0 = the ODE solved back to t = 0.

:func:`log_likelihood` integrates the augmented state ``(x_t, L_t)`` with
``d/dt (x, L) = (v(x, t), div v(x, t))`` from ``t = 1`` (``x = x_data``, ``L = 0``) back to
``t = 0`` with dopri5 (``torchdiffeq``, error control on both parts), so ``L_0 = -int_0^1 div v dt``
and ``log p_1(x) = log p_0(x_0) + L_0``.

**Divergence.**

- ``"exact"``: autograd, one vector-Jacobian product per dimension (``D`` backward passes per
  function evaluation): for small ``D``.
- ``"hutchinson"``: ``div v ~ eps^T (dv/dx) eps`` with ``E[eps eps^T] = I``, one VJP per probe
  (Hutchinson 1989; FFJORD, Grathwohl et al. 2019). ``probe="rademacher"`` (entries +-1, the lower
  variance) or ``"gaussian"``. The probes of sample ``i`` are drawn once per solve from a
  generator seeded by ``(seed, indices[i])`` and kept fixed along the trajectory, so the ODE is
  smooth for the adaptive solver and the estimate of each sample does not depend on its batch.
  The trajectory ``x_t`` does not depend on the probes, so ``log p`` is unbiased. With
  ``num_probes = K`` each probe has its own integral ``L_0^(k)``; ``logp`` is their mean and
  ``standard_error`` the standard error over the ``K`` probes (``None`` for ``K = 1``).

**Bits per dimension.** ``bits_per_dim(logp, D) = -logp / (D ln 2)``: in whatever space ``x``
lives. For a latent model that is the autoencoder's (normalised) latent space; see
:func:`pixel_bits_per_dim` for 8-bit images modelled in pixel space and
:func:`normalisation_log_det` for the per-channel normalisation of latents.

NFE counts evaluations of the augmented ODE (each is one forward pass of ``velocity_fn`` plus
``D`` or ``K`` backward passes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DIVERGENCES",
    "PROBES",
    "LikelihoodResult",
    "standard_normal_logp",
    "log_likelihood",
    "bits_per_dim",
    "pixel_bits_per_dim",
    "normalisation_log_det",
    "dequantize",
    "UINT8_SCALE",
]

DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")

#: images in [-1, 1] are ``u8 / UINT8_SCALE - 1``: one uint8 level is ``1 / 127.5`` wide
UINT8_SCALE = 127.5

_PROBE_STREAM = 0x5DEECE66D  # generator seeds of the probes, apart from the sampling noise streams


@dataclass(frozen=True)
class LikelihoodResult:
    """``log p_1(x)`` per sample (nats) and what it is made of; unpacks as ``logp, nfe = result``.

    Attributes:
        logp: ``(B,)`` log-density of each ``x`` (mean over probes for Hutchinson).
        nfe: evaluations of the augmented ODE.
        prior_logp: ``(B,)`` ``log p_0(x_0)`` at the end of the backward solve.
        divergence_integral: ``(B,)`` ``int_0^1 div v dt`` (mean over probes).
        x_noise: ``(B, ...)`` the point ``x_0`` reached at t = 0.
        logp_probes: ``(B, K)`` one estimate per probe (Hutchinson), else ``None``.
        standard_error: ``(B,)`` standard error of ``logp`` over the probes (``K >= 2``), else ``None``.
    """

    logp: Tensor
    nfe: int
    prior_logp: Tensor
    divergence_integral: Tensor
    x_noise: Tensor
    logp_probes: Tensor | None = None
    standard_error: Tensor | None = None

    def __iter__(self):
        return iter((self.logp, self.nfe))


def standard_normal_logp(x: Tensor) -> Tensor:
    """``log N(x; 0, I)`` summed over all but the batch dimension: ``-(|x|^2 + D log 2 pi) / 2``."""
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * (flat.square().sum(1) + flat.shape[1] * math.log(2.0 * math.pi))


def _probes(
    indices: Sequence[int], shape: Sequence[int], num_probes: int, kind: str, seed: int, dtype: torch.dtype, device
) -> Tensor:
    """``(K, B, *shape)`` probes; sample ``indices[b]``'s come from its own generator."""
    rows = []
    mask = (1 << 63) - 1
    for index in indices:
        gen = torch.Generator(device="cpu").manual_seed(((int(seed) * 1_000_003 + int(index)) ^ _PROBE_STREAM) & mask)
        if kind == "gaussian":
            eps = torch.randn((num_probes, *shape), generator=gen, dtype=torch.float64)
        else:
            eps = torch.randint(0, 2, (num_probes, *shape), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
        rows.append(eps)
    return torch.stack(rows, dim=1).to(device=device, dtype=dtype)


def log_likelihood(
    velocity_fn: Callable[[Tensor, Tensor], Tensor],
    x_data: Tensor,
    *,
    divergence: str = "exact",
    probe: str = "rademacher",
    num_probes: int = 1,
    seed: int = 0,
    indices: Sequence[int] | Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    prior_logp: Callable[[Tensor], Tensor] = standard_normal_logp,
    max_num_steps: int | None = None,
) -> LikelihoodResult:
    """``log p_1(x_data)`` under the flow ``dx/dt = velocity_fn(x, t)`` (see the module docstring).

    Args:
        velocity_fn: ``v(x, t)``, ``t`` of shape ``(B,)``; called with grad enabled on ``x``.
        x_data: ``(B, ...)`` points at t = 1 (data).
        divergence: ``"exact"`` (D backward passes per evaluation) or ``"hutchinson"``.
        probe: ``"rademacher"`` or ``"gaussian"`` (Hutchinson).
        num_probes: probes per sample (Hutchinson), each integrated separately.
        seed: seed of the probes; sample ``indices[b]``'s probes depend only on ``(seed, index)``.
        indices: sample index of each row (default ``0..B-1``).
        atol, rtol: dopri5 tolerances (on ``x`` and on the log-density integrals).
        prior_logp: ``log p_0`` of the t = 0 end (default: the standard normal).
        max_num_steps: optional cap on dopri5 steps (``RuntimeError`` beyond it).

    Returns:
        :class:`LikelihoodResult` (``logp, nfe = result`` unpacks the two main fields).
    """
    from torchdiffeq import odeint

    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {list(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {list(PROBES)}")
    num_probes = int(num_probes)
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if not isinstance(x_data, Tensor) or not x_data.is_floating_point() or x_data.dim() < 2:
        raise ValueError("x_data must be a floating point tensor of shape (B, ...)")
    if not (atol > 0 and rtol > 0):
        raise ValueError(f"atol and rtol must be > 0, got atol={atol}, rtol={rtol}")
    batch = x_data.shape[0]
    dims = x_data[0].numel()
    dtype = x_data.dtype if x_data.dtype in (torch.float32, torch.float64) else torch.float32
    x1 = x_data.detach().to(dtype)
    if indices is None:
        indices = list(range(batch))
    indices = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
    if len(indices) != batch:
        raise ValueError(f"got {len(indices)} indices for a batch of {batch}")
    k = 1 if divergence == "exact" else num_probes
    eps = None
    if divergence == "hutchinson":
        eps = _probes(indices, x1.shape[1:], k, probe, seed, dtype, x1.device)  # (K, B, ...)
    nfe = 0

    def func(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        x, _ = state
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            tb = t.to(dtype).reshape(1).expand(batch)
            v = velocity_fn(x, tb)
            if v.shape != x.shape:
                raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
            if divergence == "exact":
                flat = v.reshape(batch, -1)
                div = torch.zeros(batch, dtype=dtype, device=x.device)
                for i in range(dims):
                    (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                    div = div + g.reshape(batch, -1)[:, i]
                divs = div[:, None]
            else:
                columns = []
                for j in range(k):
                    (g,) = torch.autograd.grad(v, x, grad_outputs=eps[j], retain_graph=j < k - 1)
                    columns.append((g * eps[j]).reshape(batch, -1).sum(1))
                divs = torch.stack(columns, dim=1)
        return v.detach().to(dtype), divs.detach().to(dtype)

    times = torch.tensor([1.0, 0.0], dtype=dtype, device=x1.device)
    state0 = (x1, torch.zeros(batch, k, dtype=dtype, device=x1.device))
    options = {"max_num_steps": int(max_num_steps)} if max_num_steps is not None else None
    try:
        xs, ls = odeint(func, state0, times, method="dopri5", atol=float(atol), rtol=float(rtol), options=options)
    except AssertionError as err:  # torchdiffeq signals step limits / underflow with asserts
        raise RuntimeError(f"dopri5 failed: {err}") from err
    x0, l0 = xs[-1], ls[-1]  # l0 = int_1^0 div dt = -int_0^1 div dt, (B, K)
    prior = prior_logp(x0).to(dtype)
    per_probe = prior[:, None] + l0
    logp = per_probe.mean(1)
    stderr = per_probe.std(1, unbiased=True) / math.sqrt(k) if k > 1 else None
    return LikelihoodResult(
        logp=logp,
        nfe=nfe,
        prior_logp=prior,
        divergence_integral=-l0.mean(1),
        x_noise=x0,
        logp_probes=per_probe if divergence == "hutchinson" else None,
        standard_error=stderr,
    )


def bits_per_dim(logp: Tensor | float, num_dims: int) -> Tensor | float:
    """``-logp / (D ln 2)``: bits per dimension of a continuous log-density (nats) over ``D`` dims."""
    return -logp / (int(num_dims) * math.log(2.0))


def normalisation_log_det(std: Tensor | Sequence[float], positions: int) -> float:
    """``log |det d z / d y|`` of the per-channel normalisation ``z = (y - mean_c) / std_c``.

    ``= -positions * sum_c log std_c`` (each channel's ``1 / std_c`` appears once per spatial
    position), so ``log p_y(y) = log p_z(z) + normalisation_log_det(std, h * w)``.
    """
    std = torch.as_tensor(std, dtype=torch.float64)
    return -float(positions) * float(torch.log(std).sum())


def pixel_bits_per_dim(logp_images: Tensor | float, num_dims: int) -> Tensor | float:
    """Bits per dimension of 8-bit images from a continuous log-density of images in [-1, 1].

    Images are ``x = u / 127.5 - 1`` for ``u`` in {0, ..., 255}, so one level is ``1 / 127.5``
    wide in ``x``. With uniform dequantisation ``y = u + U``, ``U ~ U[0, 1)^D`` (in ``x``:
    ``x + U / 127.5``, :func:`dequantize`), the density of ``y`` is
    ``p_y(y) = p_x(x) (1 / 127.5)^D``, and for the discrete model
    ``P(u) = int_{[0,1)^D} p_y(u + U) dU`` Jensen gives ``log P(u) >= E_U[log p_y(u + U)]``, so

        bpd(u) = -log2 P(u) / D  <=  (-log p_x(x_deq) + D ln 127.5) / (D ln 2)
                                  =  bits_per_dim(log p_x(x_deq), D) + log2(127.5),

    an upper bound on the discrete model's bits per dimension (the convention of FFJORD / Flow
    Matching papers; 256 levels of width 2/256 would give ``log2(128)`` instead: our data are
    ``u8 / 127.5 - 1``, width 2/255). A density uniform on ``[-1, 1 + 1/127.5)^D``
    (``log p_x = D log(127.5 / 256)``) gives exactly 8 bits per dimension.
    """
    return bits_per_dim(logp_images, num_dims) + math.log2(UINT8_SCALE)


def dequantize(images: Tensor, indices: Sequence[int], *, seed: int = 0) -> Tensor:
    """``images + U / 127.5`` with ``U ~ U[0, 1)`` drawn per sample index (images ``u8 / 127.5 - 1``)."""
    rows = []
    mask = (1 << 63) - 1
    for index in indices:
        gen = torch.Generator(device="cpu").manual_seed(
            ((int(seed) * 1_000_003 + int(index)) ^ (_PROBE_STREAM * 3)) & mask
        )
        rows.append(torch.rand(tuple(images.shape[1:]), generator=gen, dtype=torch.float64))
    u = torch.stack(rows).to(device=images.device, dtype=images.dtype)
    return images + u / UINT8_SCALE
