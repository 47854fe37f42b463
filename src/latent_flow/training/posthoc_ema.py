"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2, section 3 and appendix C): choose the EMA length *after* training.

Power-function EMA. At optimiser step ``t`` (1, 2, ...) the average with exponent ``gamma`` is

    theta_hat(t) = beta(t) theta_hat(t - 1) + (1 - beta(t)) theta(t),   beta(t) = (1 - 1/t)^(gamma + 1),

which weights the past like ``p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``[0, t]``: the
average has no fixed half-life, it is a constant *fraction* of the run. Its relative width is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))

(EDM2's ``sigma_rel``; 0.05-0.10 are typical, DiT's fixed 0.9999 over 400k steps is ~0.01).

Training stores snapshots of two such averages (two ``sigma_rel``) every ``every_n_steps`` steps
(:class:`PostHocEMACallback`). Afterwards the average of any other ``sigma_rel`` at any snapshot
time is reconstructed as the linear combination of snapshots whose weighting profile is closest in
L2 to the target's (:func:`solve_weights`; the inner products of power profiles are closed form):

    <p_a, p_b> = (g_a + 1)(g_b + 1) min(t_a, t_b)^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1)).

``python -m latent_flow.posthoc_ema ckpt_path=... sigma_rel=0.08`` writes a checkpoint whose EMA
weights are the reconstruction, so ``sample`` / ``evaluate`` (``use_ema=true``) use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from latent_flow.training.checkpoints import flow_module_from_checkpoint, load_checkpoint, save_checkpoint_file
from latent_flow.training.ema import gamma_to_sigma_rel, power_decay, sigma_rel_to_gamma

__all__ = [
    "PowerEMA",
    "PostHocEMACallback",
    "gamma_to_sigma_rel",
    "list_snapshots",
    "reconstruct",
    "sigma_rel_to_gamma",
    "solve_weights",
    "write_posthoc_checkpoint",
]

SNAPSHOT_PATTERN = "phema_{step:07d}.pt"


class PowerEMA(nn.Module):
    """Power-function EMA of a module's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, gamma: float) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.params = nn.ParameterList(
            [nn.Parameter(p.detach().clone(), requires_grad=False) for p in model.parameters()]
        )
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        beta = power_decay(int(self.num_updates), self.gamma)
        params = [p.detach() for p in model.parameters()]
        if len(params) != len(self.params):
            raise RuntimeError("PowerEMA.update: the model's parameters do not match the averaged copy")
        torch._foreach_lerp_(list(self.params), [p.to(e.dtype) for p, e in zip(params, self.params)], 1.0 - beta)

    def tensors(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]


def _profile_inner(t_a, g_a, t_b, g_b) -> np.ndarray:
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, g_a, t_b, g_b))
    m = np.minimum(t_a, t_b)
    # computed in logs: t^(gamma+1) overflows for long runs and large gamma
    log = (
        np.log(g_a + 1)
        + np.log(g_b + 1)
        + (g_a + g_b + 1) * np.log(m)
        - np.log(g_a + g_b + 1)
        - (g_a + 1) * np.log(t_a)
        - (g_b + 1) * np.log(t_b)
    )
    return np.exp(log)


def solve_weights(
    times: Sequence[float], gammas: Sequence[float], target_time: float, target_gamma: float
) -> np.ndarray:
    """Weights ``x`` with ``sum_i x_i p_i`` closest in L2 to the target profile (least squares)."""
    t = np.asarray(times, dtype=np.float64)
    g = np.asarray(gammas, dtype=np.float64)
    if len(t) != len(g) or len(t) == 0:
        raise ValueError("solve_weights needs as many snapshot times as exponents, and at least one")
    gram = _profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    rhs = _profile_inner(t, g, float(target_time), float(target_gamma))
    weights, *_ = np.linalg.lstsq(gram, rhs, rcond=None)
    return weights


class PostHocEMACallback(L.Callback):
    """Tracks power-function EMAs of the trained networks and stores snapshots for post-hoc EMA.

    ``sigma_rels``: the stored averages (EDM2 stores 0.05 and 0.10); ``every_n_steps``: snapshot
    interval (files ``out_dir/phema_<step>.pt``, each holding every average at that step). The
    averages themselves are part of the callback's checkpoint state, so a resumed run continues them.
    Networks: the backbone and, when it has parameters, the condition encoder.
    """

    def __init__(self, *, out_dir: str, every_n_steps: int, sigma_rels: Sequence[float] = (0.05, 0.10)) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.out_dir = Path(out_dir)
        self.every_n_steps = int(every_n_steps)
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.averages: dict[str, list[PowerEMA]] = {}
        self._pending_state: dict | None = None

    @staticmethod
    def networks(pl_module) -> dict[str, nn.Module]:
        nets = {"backbone": pl_module.backbone}
        if getattr(pl_module, "condition_ema", None) is not None:
            nets["condition"] = pl_module.condition
        return nets

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self.averages = {
            name: [PowerEMA(net, g).to(next(net.parameters()).device) for g in self.gammas]
            for name, net in self.networks(pl_module).items()
        }
        if self._pending_state is not None:
            for name, states in self._pending_state["averages"].items():
                for avg, state in zip(self.averages[name], states):
                    avg.load_state_dict(state)
            self._pending_state = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        for name, net in self.networks(pl_module).items():
            for avg in self.averages[name]:
                avg.update(net)
        step = trainer.global_step
        if step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.save_snapshot(step)

    def save_snapshot(self, step: int) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / SNAPSHOT_PATTERN.format(step=step)
        payload = {
            "step": int(step),
            "sigma_rels": self.sigma_rels,
            "gammas": self.gammas,
            "updates": int(next(iter(self.averages.values()))[0].num_updates),
            "averages": {name: [avg.tensors() for avg in avgs] for name, avgs in self.averages.items()},
        }
        save_checkpoint_file(payload, path)  # atomic, with its checksum
        return path

    def state_dict(self) -> dict:
        return {"averages": {name: [avg.state_dict() for avg in avgs] for name, avgs in self.averages.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending_state = state_dict  # applied at fit start, once the networks exist


def list_snapshots(snapshot_dir: str | os.PathLike) -> list[Path]:
    files = sorted(Path(snapshot_dir).glob("phema_*.pt"))
    if not files:
        raise FileNotFoundError(
            f"no post-hoc EMA snapshots (phema_*.pt) in {snapshot_dir}; train with callbacks=posthoc_ema"
        )
    return files


def reconstruct(snapshot_dir: str | os.PathLike, sigma_rel: float, *, step: int | None = None) -> dict[str, Any]:
    """The power-EMA of ``sigma_rel`` at snapshot ``step`` (default: the last one), as
    ``{"step", "sigma_rel", "weights", "networks": {name: [tensors in parameter order]}}``."""
    files = list_snapshots(snapshot_dir)
    metas = [load_checkpoint(f, weights_key="averages") for f in files]  # verified, finite
    steps = [m["step"] for m in metas]
    target = steps[-1] if step is None else int(step)
    if target not in steps:
        raise ValueError(f"step={step} has no snapshot in {snapshot_dir}; snapshots at steps {steps}")
    usable = [m for m in metas if m["step"] <= target]  # the future is not known at that step
    times, gammas, refs = [], [], []
    for m in usable:
        for k, g in enumerate(m["gammas"]):
            times.append(float(m["updates"]) if m["updates"] else float(m["step"]))
            gammas.append(g)
            refs.append((m, k))
    target_time = float(next(m for m in usable if m["step"] == target)["updates"] or target)
    weights = solve_weights(times, gammas, target_time, sigma_rel_to_gamma(sigma_rel))
    networks: dict[str, list[torch.Tensor]] = {}
    for (m, k), w in zip(refs, weights):
        for name, avgs in m["averages"].items():
            acc = networks.setdefault(name, [torch.zeros_like(t, dtype=torch.float64) for t in avgs[k]])
            for a, t in zip(acc, avgs[k]):
                a.add_(t.double(), alpha=float(w))
    dtypes = {name: [t.dtype for t in usable[-1]["averages"][name][0]] for name in networks}
    networks = {name: [a.to(d) for a, d in zip(acc, dtypes[name])] for name, acc in networks.items()}
    return {"step": target, "sigma_rel": float(sigma_rel), "weights": weights.tolist(), "networks": networks}


def write_posthoc_checkpoint(
    ckpt_path: str | os.PathLike,
    sigma_rel: float,
    out_path: str | os.PathLike,
    *,
    snapshot_dir: str | os.PathLike | None = None,
    step: int | None = None,
) -> dict:
    """Copy of ``ckpt_path`` whose EMA weights (``ema`` and ``condition_ema``) are the post-hoc
    reconstruction of ``sigma_rel`` at snapshot ``step``; returns a summary (weights, step)."""
    ckpt_path = Path(ckpt_path)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else ckpt_path.resolve().parent.parent / "posthoc_ema"
    rec = reconstruct(snapshot_dir, sigma_rel, step=step)
    checkpoint = load_checkpoint(ckpt_path)  # verified: checksum, readable, finite weights
    model = flow_module_from_checkpoint(checkpoint, path=ckpt_path)
    state = checkpoint["state_dict"]
    targets = {"backbone": ("ema", model.ema), "condition": ("condition_ema", model.condition_ema)}
    for name, tensors in rec["networks"].items():
        prefix, ema = targets[name]
        if ema is None:
            raise ValueError(f"{ckpt_path} has no {prefix} to replace (the snapshots hold a {name} average)")
        names = [n for n, _ in ema.module.named_parameters()]
        if len(names) != len(tensors):
            raise ValueError(
                f"the snapshots' {name} has {len(tensors)} tensors, the checkpoint's {len(names)}: "
                "snapshots of another model"
            )
        for n, t in zip(names, tensors):
            key = f"{prefix}.module.{n}"
            if state[key].shape != t.shape:
                raise ValueError(f"{key}: checkpoint {tuple(state[key].shape)} vs snapshot {tuple(t.shape)}")
            state[key] = t.to(state[key].dtype)
    checkpoint["posthoc_ema"] = {
        "sigma_rel": rec["sigma_rel"],
        "step": rec["step"],
        "weights": rec["weights"],
        "snapshot_dir": str(snapshot_dir),
    }
    out_path = Path(out_path)
    save_checkpoint_file(checkpoint, out_path)  # atomic, with its checksum: sample / evaluate verify it
    return {"out_path": str(out_path), **checkpoint["posthoc_ema"], "num_snapshot_averages": len(rec["weights"])}
