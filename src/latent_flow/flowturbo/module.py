"""Refiner training: ``RefinerModule`` learns FlowTurbo's velocity refiner against a frozen base model.

Time convention: ``t`` in [0, 1], **t = 0 noise, t = 1 data**. Loss (``docs/methods.md`` section 3),
per training batch of data latents ``x_data``:

    x_noise ~ N(0, I);  t ~ U(0, 1);  dt ~ U(dt_min, dt_max];  t' = min(t + dt, 1)
    x_t = path(x_noise, x_data, t)              # the base model's own path
    v0 = v(x_t, t);  x' = x_t + (t' - t) v0;  target = v(x', t')        # base (EMA weights, frozen)
    loss = || v0 + r_phi(x', v0, t') - target ||^2

The label is replaced by the null label with probability ``label_dropout`` (0.1) per sample,
and the *same* choice is used for the three calls (base at t, base at t', refiner), so the
refiner also learns the unconditional velocity that guidance needs.

The base is loaded from ``base_ckpt_path`` (its EMA weights), frozen, kept in eval mode and kept
*out* of the checkpoint (it is not a submodule). "The base" is every network its velocity
``model.velocity(..., use_ema=True)`` runs: the EMA backbone (:func:`base_network`) and the EMA
condition encoder (:func:`base_condition`; the semantic map encoder of ``condition=semantic``, the
parameter-free encoder of the other conditions). The refiner's inputs go through the same encoder.
The checkpoint records the base's path and a SHA-1 of those weights (``base_hash``,
:func:`base_weights_hash`); resuming or loading a refiner with a different base raises
:class:`RefinerBaseMismatchError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latent_flow.flowturbo.refiner import VelocityRefiner, parameter_count, refiner_spec
from latent_flow.training.checkpoints import load_checkpoint, load_flow_module
from latent_flow.training.ema import EMA
from latent_flow.training.module import LatentFlowModule
from latent_flow.training.resume import ResumableRNG
from latent_flow.utils.config import to_plain
from latent_flow.utils.hashing import update_with_state_dict, weights_hash

__all__ = [
    "RefinerBaseMismatchError",
    "RefinerModule",
    "base_condition",
    "base_network",
    "base_weights_hash",
    "load_refiner",
    "weights_hash",
]

log = logging.getLogger(__name__)


class RefinerBaseMismatchError(RuntimeError):
    """A refiner checkpoint is used with a base model other than the one it was trained for."""


def base_network(model) -> nn.Module:
    """The network FlowTurbo uses of a ``LatentFlowModule``: its EMA copy (the backbone if it has none)."""
    return model.ema.module if getattr(model, "ema", None) is not None else model.backbone


def base_condition(model) -> nn.Module:
    """The condition encoder FlowTurbo uses with :func:`base_network`: the EMA copy when the model has one.

    The same encoder as ``model.velocity(..., use_ema=True)``: a trainable encoder (``condition=semantic``)
    has an EMA copy next to the EMA backbone; parameter-free encoders (label, inpaint) have none.
    """
    ema = getattr(model, "condition_ema", None) if getattr(model, "ema", None) is not None else None
    return ema.module if ema is not None else model.condition


def base_weights_hash(model) -> str:
    """SHA-1 of every network the base velocity runs: :func:`base_network` and :func:`base_condition`.

    A condition encoder without parameters or buffers (label, inpaint, none) adds nothing, so the
    hash is then :func:`weights_hash` of the backbone alone (what refiners recorded before the
    condition encoder was included).
    """
    net, condition = base_network(model), base_condition(model)
    h = hashlib.sha1()
    update_with_state_dict(h, net)
    if condition.state_dict():
        update_with_state_dict(h, condition, prefix="condition.")
    return h.hexdigest()


class RefinerModule(ResumableRNG, L.LightningModule):
    """Trains a :class:`~latent_flow.flowturbo.refiner.VelocityRefiner` for a frozen base checkpoint.

    Args:
        base_ckpt_path: the trained ``latent_flow.train`` checkpoint (its EMA weights are used).
        refiner: ``{"num_blocks": 1}`` (architecture options; the rest is derived from the base).
        optim: AdamW + warm-up / cosine settings, as for ``LatentFlowModule`` (lr, warmup_steps, ...).
        ema: EMA of the refiner (``{"decay", "warmup"}``) or ``None``; sampling uses it when present.
        time_offset: ``{"min": 0.0, "max": 0.12}``: ``dt ~ U(min, max]``, ``t + dt`` clamped to 1.
        label_dropout: probability of the null label, the same for all three calls.
        seed: reseeds torch's RNG at the start of training (``seed + global_rank``); a resumed run
            restores the RNG states its checkpoint saved per rank instead (:mod:`latent_flow.training.resume`).
        base_hash: expected SHA-1 of the base weights (set from a checkpoint's hparams when
            loading / resuming; ``None`` accepts the base found at ``base_ckpt_path``).
        base_model: an already loaded base ``LatentFlowModule`` (skips loading it again).
    """

    def __init__(
        self,
        *,
        base_ckpt_path: str,
        refiner: dict | None = None,
        optim: dict,
        ema: dict | None = None,
        time_offset: dict | None = None,
        label_dropout: float = 0.1,
        seed: int = 0,
        base_hash: str | None = None,
        base_model=None,
        **saved: Any,
    ) -> None:
        super().__init__()
        unknown = set(saved) - {"refiner_spec", "base_parameters", "refiner_parameters", "parameter_ratio"}
        if unknown:
            raise TypeError(f"RefinerModule: unknown arguments {sorted(unknown)}")
        refiner, optim, ema, time_offset = map(to_plain, (refiner or {}, optim, ema, time_offset or {}))
        offset = {"min": 0.0, "max": 0.12, **dict(time_offset)}
        lo, hi = float(offset["min"]), float(offset["max"])
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"refiner time_offset must satisfy 0 <= min < max <= 1, got min={lo}, max={hi}")
        if not 0.0 <= float(label_dropout) <= 1.0:
            raise ValueError(f"refiner label_dropout must be in [0, 1], got {label_dropout}")
        unknown_ref = set(refiner) - {"num_blocks"}
        if unknown_ref:
            raise ValueError(f"unknown refiner option(s) {sorted(unknown_ref)}; valid: ['num_blocks']")

        path = Path(base_ckpt_path)
        if base_model is None:
            if not path.is_file():
                raise FileNotFoundError(
                    f"base_ckpt_path={base_ckpt_path} does not exist; expected the flow checkpoint the refiner "
                    "belongs to (e.g. outputs/train/<run>/checkpoints/last.ckpt)"
                )
            base_model = load_flow_module(path, device="cpu")
        base_model.eval()
        base_model.requires_grad_(False)
        net = base_network(base_model)
        digest = base_weights_hash(base_model)  # EMA backbone + EMA condition encoder
        if base_hash is not None and base_hash != digest:
            raise RefinerBaseMismatchError(
                f"this refiner was trained for a base with weights hash {base_hash}, but base_ckpt_path={base_ckpt_path} "
                f"now holds weights with hash {digest}; use the base checkpoint the refiner was trained with, "
                "or train a new refiner for this base"
            )
        spec = refiner_spec(
            dict(base_model.hparams), num_blocks=int(refiner.get("num_blocks", 1)), condition=base_model.condition
        )
        self.refiner = VelocityRefiner(spec)
        n_base, n_ref = parameter_count(net), parameter_count(self.refiner)
        self.save_hyperparameters(
            {
                "base_ckpt_path": str(path.resolve()),
                "base_hash": digest,
                "refiner": dict(refiner),
                "refiner_spec": spec,
                "optim": dict(optim),
                "ema": ema,
                "time_offset": {"min": lo, "max": hi},
                "label_dropout": float(label_dropout),
                "seed": int(seed),
                "base_parameters": n_base,
                "refiner_parameters": n_ref,
                "parameter_ratio": n_ref / n_base,
            }
        )
        self.ema = EMA(self.refiner, **ema) if ema else None
        self.__dict__["_base"] = base_model  # not a submodule: never in checkpoints, never optimised
        log.info(
            "refiner for %s: %d parameters = %.1f%% of the base's %d",
            spec["base_backbone"],
            n_ref,
            100 * n_ref / n_base,
            n_base,
        )

    # ------------------------------------------------------------------ base model
    @property
    def base(self):
        """The frozen base ``LatentFlowModule`` (eval mode, on this module's device)."""
        base = self.__dict__["_base"]
        if base.device != self.device:
            base.to(self.device)
        return base

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        base = self.__dict__.get("_base")
        if base is not None:
            base._apply(fn, *args, **kwargs)
        return self

    def refiner_network(self, use_ema: bool = True) -> nn.Module:
        return self.ema.module if (use_ema and self.ema is not None) else self.refiner

    # ------------------------------------------------------------------ loss
    def refiner_loss(
        self, batch: dict[str, Tensor], *, use_ema: bool = False, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``{"loss", "loss_carry"}``: the refiner loss and the same error with a zero refiner (``v0`` carried)."""
        base = self.base
        x_data = batch["latent"]
        b, device = x_data.shape[0], x_data.device

        def rand(*shape: int) -> Tensor:
            return (
                torch.rand(shape, generator=generator).to(device)
                if generator is not None
                else torch.rand(shape, device=device)
            )

        x_noise = (
            torch.randn(x_data.shape, generator=generator).to(device, x_data.dtype)
            if generator is not None
            else torch.randn_like(x_data)
        )
        t = rand(b)
        lo, hi = self.hparams.time_offset["min"], self.hparams.time_offset["max"]
        dt = lo + (hi - lo) * (1.0 - rand(b))  # in (lo, hi]
        t_next = torch.clamp(t + dt, max=1.0)
        cond = base.condition.from_batch(batch)
        p = float(self.hparams.label_dropout)
        if cond and p > 0:
            drop = rand(b) < p  # one decision per sample, used by all three calls below
            null = base.condition.null(cond)
            cond = {
                k: torch.where(drop.reshape(-1, *([1] * (v.dim() - 1))), null[k].to(v.device), v)
                for k, v in cond.items()
            }
        x_t = base.path.sample(x_noise, x_data, t).x_t
        with torch.no_grad():
            v0 = base.velocity(x_t, t, cond, use_ema=True)
            step = (t_next - t).reshape(-1, *([1] * (x_t.dim() - 1)))
            x_next = x_t + step * v0
            target = base.velocity(x_next, t_next, cond, use_ema=True)
        # the refiner sees the condition through the encoder of the base calls above (the EMA one)
        x_in, y = base_condition(base).network_inputs(x_next, cond)
        pred = v0 + self.refiner_network(use_ema)(x_in, v0, t_next, y)
        return {
            "loss": F.mse_loss(pred.float(), target.float()),
            "loss_carry": F.mse_loss(v0.float(), target.float()),
        }

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.refiner_loss(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite refiner loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/loss_carry", out["loss_carry"], on_step=True, on_epoch=False)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.refiner)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(20_000 + batch_idx)
        out = self.refiner_loss(batch, generator=gen)
        self.log("val/loss", out["loss"], prog_bar=True, on_epoch=True, sync_dist=True)
        self.log("val/loss_carry", out["loss_carry"], on_epoch=True, sync_dist=True)
        if self.ema is not None:
            gen = torch.Generator().manual_seed(20_000 + batch_idx)
            self.log(
                "val/loss_ema",
                self.refiner_loss(batch, use_ema=True, generator=gen)["loss"],
                on_epoch=True,
                sync_dist=True,
            )

    def configure_optimizers(self):
        # the same AdamW + warm-up / cosine schedule as flow training (over the refiner's parameters)
        return LatentFlowModule.configure_optimizers(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # as flow training: also clips a fused AdamW (optim.fused=true) under bf16 autocast
        LatentFlowModule.configure_gradient_clipping(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_start(self) -> None:
        self.seed_or_restore_rng(int(self.hparams.seed))  # seed + rank, or the saved states when resuming

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.save_rng_states(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_rng_states(checkpoint)
        saved = checkpoint.get("hyper_parameters", {})
        if saved.get("base_hash") not in (None, self.hparams.base_hash):
            raise RefinerBaseMismatchError(
                f"checkpoint is a refiner for the base {saved.get('base_ckpt_path')} (weights hash {saved.get('base_hash')}), "
                f"but this run's base {self.hparams.base_ckpt_path} has weights hash {self.hparams.base_hash}; "
                "resume with the base_ckpt_path the refiner was trained for"
            )
        if saved.get("refiner_spec") not in (None, self.hparams.refiner_spec):
            raise RefinerBaseMismatchError(
                f"checkpoint refiner architecture {saved.get('refiner_spec')} differs from {self.hparams.refiner_spec}"
            )


def load_refiner(ckpt_path: str | os.PathLike, model, *, use_ema: bool = True) -> VelocityRefiner:
    """The refiner of a ``RefinerModule`` checkpoint, checked against the base ``model`` it will run with.

    Raises:
        FileNotFoundError: no such file.
        CheckpointIntegrityError: a damaged, truncated or non-finite checkpoint.
        ValueError: not a refiner checkpoint.
        RefinerBaseMismatchError: the checkpoint records another base (weights hash differs).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"refiner_ckpt_path={ckpt_path} does not exist (expected a checkpoint written by "
            "`python -m latent_flow.train +experiment=<name>_refiner base_ckpt_path=...`)"
        )
    ckpt = load_checkpoint(path)  # verified: checksum, readable, finite weights
    hp = ckpt.get("hyper_parameters", {})
    if "refiner_spec" not in hp or "base_hash" not in hp:
        raise ValueError(
            f"{ckpt_path} is not a FlowTurbo refiner checkpoint (no refiner_spec / base_hash hyper-parameters)"
        )
    digest = base_weights_hash(model)
    if digest != hp["base_hash"]:
        raise RefinerBaseMismatchError(
            f"refiner {ckpt_path} was trained for the base {hp.get('base_ckpt_path')} (weights hash {hp['base_hash']}), "
            f"but the model it is used with has weights hash {digest}; sample with that base checkpoint, or train a "
            "refiner for this one (`python -m latent_flow.train +experiment=<name>_refiner base_ckpt_path=...`)"
        )
    refiner = VelocityRefiner(hp["refiner_spec"])
    prefix = "ema.module." if use_ema and any(k.startswith("ema.module.") for k in ckpt["state_dict"]) else "refiner."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    refiner.load_state_dict(state)
    refiner.requires_grad_(False)
    return refiner.eval()
