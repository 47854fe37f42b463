"""SDE sampling from a trained velocity: Euler-Maruyama (t = 0 noise, t = 1 data).

Time convention: ``t`` in [0, 1], **t = 0 is noise, t = 1 is data**; we integrate forward from
``t = 0`` to ``t = 1`` like the ODE solvers.

**The SDE.** For the affine path ``x_t = alpha_t x_data + sigma_t x_noise`` the ODE
``dx = v(x, t) dt`` carries the marginals ``p_t``. For any ``g(t) >= 0`` the SDE

    dx = [v(x, t) + g(t)^2 / 2 * score(x, t)] dt + g(t) dW,     score = grad_x log p_t(x),

has the same marginals (Fokker-Planck: the extra drift ``g^2/2 grad log p`` and the diffusion
``g^2/2 Laplacian`` cancel: ``-div(p g^2/2 grad log p) + g^2/2 Lap p = 0``). The score comes from
the velocity by :meth:`latent_flow.flow.path.AffinePath.velocity_to_score` (the one place it is
derived): ``score = (alpha v - d_alpha x) / (sigma (d_alpha sigma - alpha d_sigma))``.
``g = 0`` is the probability-flow ODE.

**Diffusion coefficient** (``diffusion = w >= 0``, ``diffusion_form``):

- ``"sigma"`` (default): ``g(t)^2 = w * sigma_t``, the SiT choice (Ma et al. 2024). It vanishes
  at the data end (``sigma_1 = 0``), where the score of the data distribution blows up like
  ``1 / sigma_t``; the correction ``g^2/2 * score = w/2 * sigma_t * score = -w/2 E[x_noise | x_t]``
  stays bounded. For CondOT (``sigma_min = 0``): ``g^2 = w (1 - t)``, drift ``v + w/2 (t v - x)``.
- ``"constant"``: ``g(t)^2 = w`` (capped near the data end, see below).

**Stability near the data end.** Where the data are narrow (at the data end they always look so:
the score of ``p_t`` tends to ``-(x - alpha_t x_data) / sigma_t^2``), the score term of one
Euler-Maruyama step pulls ``x`` toward the denoised point by the fraction

    gain_i = h g(t_i)^2 / (2 sigma_{t_i}^2)

(``h = t_{i+1} - t_i``). Above 2 the step overshoots by more than it corrects and the error grows
from step to step; near 2 it oscillates. The ``constant`` form has ``gain ~ w N / 8`` at the
second-to-last step of an ``N``-step uniform CondOT grid (``sigma = 2h``): on data N(2, 0.01^2) with
the exact velocity, ``w = 1`` gave a final std of 0.41 at 50 steps and 150 at 200 steps (the truth is
0.01). So every step's ``g(t_i)^2`` is capped at ``2 MAX_GAIN sigma_{t_i}^2 / h`` (``MAX_GAIN = 1``:
the step lands at most on the denoised point, never past it), with a ``RuntimeWarning`` naming the
requested gain and the steps capped. The cap changes no marginal (any ``g(t) >= 0`` carries the
same ``p_t``); it only lowers the noise where the requested one cannot be integrated with this step
size. The ``sigma`` form has ``gain = h w / (2 sigma_t)``, ``w / 4`` at most on a uniform CondOT grid:
capped only for ``w > 4``. On that example the capped ``constant`` form (w = 1) ends at std 0.013 (50 steps)
and 0.012 (200 steps), the ``sigma`` form at 0.006 and 0.0096.

**The ends.** At ``t = 0`` nothing is singular: the start is ``N(0, I)`` and the score formula
has no ``1 / alpha`` (CondOT: ``score(x, 0) = -x``, exact for the standard normal). At ``t = 1``
the score is singular (``sigma_1 = 0``); Euler-Maruyama evaluates the drift at the left end of each
step, so the score is only ever taken at ``t < 1``, and the **last step has no noise and no score
term**: it is the ODE's Euler step ``x + h v``, which for CondOT lands exactly on Tweedie's
denoised mean ``E[x_data | x_t]`` (``x + (1 - t) v``). So no noise of size ``g(t_{N-1}) sqrt(h)``
is left in the samples.

**Steps** (grid ``0 = t_0 < ... < t_N = 1`` of ``time_grid``, ``h = t_{i+1} - t_i``, ``z ~ N(0, I)``)::

    v = v(x, t_i)
    x <- x + h (v + g(t_i)^2 / 2 * score(x, t_i)) + g(t_i) sqrt(h) z      (i < N - 1, g(t_i) > 0)
    x <- x + h v                                                          (i = N - 1, or g(t_i) = 0)

so NFE = ``steps`` exactly (one velocity call per step), and ``diffusion = 0`` is the ODE's
:class:`~latent_flow.sampling.solvers.EulerSolver` bit for bit.

**Noise per sample index.** The per-step noise of row ``k`` comes from
:class:`~latent_flow.sampling.noise.IndexedNoiseStream` seeded by ``(noise_seed,
noise_indices[k])`` (stream 1; the initial noise is stream 0), so any batch split, order or
rank gives the same samples. ``LatentFlowModule.sample_latents`` passes the batch's indices, the
run seed and the model's path; without ``noise_indices`` the rows are numbered ``0..B-1``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from latent_flow.flow.path import AffinePath
from latent_flow.sampling.noise import IndexedNoiseStream
from latent_flow.sampling.solvers import SOLVERS, SampleResult, Solver, VelocityFn, expand_time, time_dtype
from latent_flow.sampling.time_grids import TIME_GRID_KINDS
from latent_flow.sampling.time_grids import time_grid as make_time_grid

__all__ = ["DIFFUSION_FORMS", "MAX_GAIN", "EulerMaruyamaSolver"]

#: ``diffusion_form`` -> ``g(t)^2 / w`` as a function of the path coefficients
DIFFUSION_FORMS: tuple[str, ...] = ("sigma", "constant")

#: the largest Euler-Maruyama gain ``h g(t)^2 / (2 sigma_t^2)`` of a step; ``g(t)^2`` is capped to keep it
MAX_GAIN = 1.0


class EulerMaruyamaSolver(Solver):
    """Euler-Maruyama for ``dx = [v + g^2/2 score] dt + g dW`` from t = 0 (noise) to t = 1 (data).

    See the module docstring for the SDE, the diffusion forms and the treatment of the ends.

    Args:
        steps: number of steps (>= 1); NFE = ``steps``.
        diffusion: ``w >= 0``; ``g(t)^2 = w sigma_t`` (``"sigma"``) or ``w`` (``"constant"``).
            0 gives the ODE's Euler exactly.
        diffusion_form: ``"sigma"`` or ``"constant"``.
        time_grid, shift: the grid, as for the ODE solvers.
        path: the :class:`~latent_flow.flow.path.AffinePath` the velocity was trained on (for the
            score); may be left ``None`` here and given to :meth:`sample` (``sample_latents``
            passes the model's own). Not needed when ``diffusion == 0``.
    """

    #: ``LatentFlowModule.sample_latents`` passes ``path``, ``noise_indices`` and ``noise_seed``
    stochastic: ClassVar[bool] = True
    evals_per_step: ClassVar[int] = 1

    def __init__(
        self,
        steps: int,
        diffusion: float = 1.0,
        diffusion_form: str = "sigma",
        time_grid: str = "uniform",
        shift: float = 1.0,
        path: AffinePath | None = None,
    ) -> None:
        if time_grid not in TIME_GRID_KINDS:
            raise ValueError(f"unknown time_grid {time_grid!r}; valid: {list(TIME_GRID_KINDS)}")
        self._grid = make_time_grid(steps, time_grid, shift)  # validates steps and shift
        diffusion = float(diffusion)
        if not (diffusion >= 0.0 and math.isfinite(diffusion)):
            raise ValueError(f"diffusion must be a finite number >= 0 (0 = the ODE's Euler), got {diffusion}")
        if diffusion_form not in DIFFUSION_FORMS:
            raise ValueError(f"unknown diffusion_form {diffusion_form!r}; valid: {list(DIFFUSION_FORMS)}")
        if path is not None and not isinstance(path, AffinePath):
            raise TypeError(f"path must be an AffinePath, got {type(path).__name__}")
        self.steps = int(steps)
        self.diffusion = diffusion
        self.diffusion_form = diffusion_form
        self.time_grid = time_grid
        self.shift = float(shift)
        self.path = path
        self._run: tuple[AffinePath | None, IndexedNoiseStream | None, list[float]] | None = None

    @property
    def expected_nfe(self) -> int:
        """NFE of one ``sample`` call: ``steps``."""
        return self.steps

    def grid(self) -> Tensor:
        """The ``(steps + 1,)`` float64 time grid from 0 (noise) to 1 (data)."""
        return self._grid.clone()

    def diffusion_squared(self, t: float, path: AffinePath | None = None) -> float:
        """``g(t)^2`` (float): ``w sigma_t`` or ``w``."""
        if self.diffusion == 0.0:
            return 0.0
        if self.diffusion_form == "constant":
            return self.diffusion
        path = path if path is not None else self.path
        if path is None:
            raise ValueError("diffusion_form='sigma' needs the path (pass path=...)")
        sigma = path.scheduler(torch.tensor([float(t)], dtype=torch.float64)).sigma_t
        return self.diffusion * float(sigma.clamp(min=0.0))

    def step_diffusion(self, path: AffinePath | None = None) -> tuple[list[float], list[float]]:
        """``(g^2 used, gain requested)`` of every step of the grid.

        The gain of step ``i`` is ``h g(t_i)^2 / (2 sigma_{t_i}^2)`` of the requested ``g``; where it
        exceeds :data:`MAX_GAIN`, ``g(t_i)^2`` is capped at ``2 MAX_GAIN sigma_{t_i}^2 / h`` (module
        docstring). The last step is noiseless (``g^2 = 0``).
        """
        path = path if path is not None else self.path
        ts = self._grid.tolist()
        used, gains = [], []
        for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
            g2 = 0.0 if i == len(ts) - 2 else self.diffusion_squared(t, path)
            if g2 == 0.0:
                used.append(0.0)
                gains.append(0.0)
                continue
            if path is None:
                raise ValueError("the gain of a step needs the path's sigma_t (pass path=...)")
            h = t_next - t
            sigma = float(path.scheduler(torch.tensor([t], dtype=torch.float64)).sigma_t)
            gain = h * g2 / (2.0 * sigma**2) if sigma > 0.0 else math.inf
            gains.append(gain)
            used.append(g2 if gain <= MAX_GAIN else 2.0 * MAX_GAIN * sigma**2 / h)
        return used, gains

    def _stable_diffusion(self, path: AffinePath) -> list[float]:
        """The per-step ``g^2`` to integrate with; warns when the requested diffusion was capped."""
        used, gains = self.step_diffusion(path)
        capped = [i for i, gain in enumerate(gains) if gain > MAX_GAIN]
        if capped:
            ts = self._grid.tolist()
            warnings.warn(
                f"sampler=euler_maruyama diffusion_form={self.diffusion_form} diffusion={self.diffusion:g} on this "
                f"{self.steps}-step grid asks for an Euler-Maruyama gain h*g(t)^2/(2 sigma_t^2) of up to "
                f"{max(gains):.3g} near the data end, above the stable {MAX_GAIN:g} (the samples would blow up); "
                f"g(t)^2 is capped at 2*sigma_t^2/h in {len(capped)} of {self.steps} steps (t >= "
                f"{ts[capped[0]]:.4g}), which keeps the marginals. diffusion_form=sigma (gain <= diffusion/4 on a "
                "uniform grid) or a smaller diffusion needs no cap",
                RuntimeWarning,
                stacklevel=3,
            )
        return used

    def sample(
        self,
        velocity_fn: VelocityFn,
        x_init: Tensor,
        *,
        path: AffinePath | None = None,
        noise_indices: Sequence[int] | Tensor | None = None,
        noise_seed: int = 0,
        return_trajectory: bool = False,
        no_grad: bool = True,
    ) -> SampleResult:
        """Integrate from ``x_init`` at t = 0 to t = 1 (see :meth:`Solver.sample`).

        Args:
            path: the velocity's path for the score (default: the one given at construction).
            noise_indices: sample index of each row (per-index noise); default ``0..B-1``.
            noise_seed: the run seed of the per-step noise.
        """
        use_path = path if path is not None else self.path
        if self.diffusion > 0.0 and use_path is None:
            raise ValueError(
                "sampler=euler_maruyama with diffusion > 0 needs the path the velocity was trained on (for the "
                "score): sample through model.sample_latents(solver, ...) (which passes the model's path), or "
                "give path=AffinePath(...) to the solver or to sample()"
            )
        if not isinstance(x_init, Tensor) or x_init.dim() < 1:
            raise ValueError("x_init must be a floating point tensor of shape (B, ...)")
        indices = list(range(x_init.shape[0])) if noise_indices is None else noise_indices
        noise = None
        if self.diffusion > 0.0:
            noise = IndexedNoiseStream(indices, x_init.shape[1:], seed=noise_seed, stream=1)
            if len(noise.indices) != x_init.shape[0]:
                raise ValueError(f"got {len(noise.indices)} noise_indices for a batch of {x_init.shape[0]}")
        schedule = self._stable_diffusion(use_path) if self.diffusion > 0.0 else [0.0] * self.steps
        self._run = (use_path, noise, schedule)
        try:
            return super().sample(velocity_fn, x_init, return_trajectory=return_trajectory, no_grad=no_grad)
        finally:
            self._run = None

    def _integrate(
        self, f: VelocityFn, x_init: Tensor, return_trajectory: bool
    ) -> tuple[Tensor, list[Tensor] | None, Tensor | None]:
        path, noise, schedule = self._run if self._run is not None else (self.path, None, [0.0] * self.steps)
        ts = self._grid.tolist()
        x = x_init
        trajectory = [x] if return_trajectory else None
        for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
            h = t_next - t
            tb = expand_time(t, x)
            v = f(x, tb)
            g2 = schedule[i]  # capped where the requested gain is unstable; 0 at the last step
            if g2 == 0.0:  # the ODE's Euler step (the last step always: no noise left in the sample)
                x = x + h * v
            else:
                score = path.velocity_to_score(x, v, tb)
                z = noise.draw(device=x.device, dtype=x.dtype)
                x = x + h * (v + (0.5 * g2) * score) + math.sqrt(g2 * h) * z
            if trajectory is not None:
                trajectory.append(x)
        times = self._grid.to(device=x.device, dtype=time_dtype(x)) if return_trajectory else None
        return x, trajectory, times


SOLVERS["euler_maruyama"] = EulerMaruyamaSolver
