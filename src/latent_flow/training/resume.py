"""Exact resume: the random-number state of every rank goes into every checkpoint.

Time convention (everywhere in latent_flow): ``t = 0`` is noise, ``t = 1`` is data.

A training step draws its noise ``x_noise``, times ``t`` and condition / label dropout from the
global RNGs (torch CPU and the CUDA device of the rank; numpy and Python ``random`` are saved too,
for anything that uses them). Without their state a resumed run has to reseed and replays (or
invents) draws that the uninterrupted run never made. So:

- :func:`collect_rng_states` / :func:`set_rng_states`: the states as plain tensors and numbers
  (loadable with ``torch.load(weights_only=True)``); CUDA only for the rank's own device.
- :func:`rank_rng_states`: ``{global_rank: states}`` of every rank, all-gathered to every rank
  when the checkpoint is written by all of them together (periodic checkpoints, a SIGTERM that
  Lightning broadcasts); only the rank's own entry when one rank saves alone (an exception that
  the others did not see), where a collective could hang.
- :class:`ResumableRNG`: the LightningModule side. ``on_save_checkpoint`` stores
  ``checkpoint["rng_states"] = {"world_size", "global_step", "per_rank": {rank: states}}``;
  ``on_load_checkpoint`` keeps it; :meth:`ResumableRNG.seed_or_restore_rng` (from ``on_train_start``)
  restores the rank's entry when the run resumes from that checkpoint, and otherwise seeds
  ``seed + global_rank`` (a fresh run). A checkpoint without an entry for the rank (older
  checkpoints, another world size) reseeds from ``(seed, rank, global_step)`` with a warning: not
  exact, but the resumed part does not replay the first part's draws.

The data order is the other half (:class:`latent_flow.data.samplers.ResumableSampler`, saved by
``LatentDataModule.state_dict``): together they make a run killed after a checkpoint and resumed
from it continue bit for bit like the uninterrupted run (``tests/integration/test_resume_exact.py``).
The state saved is the one at the moment of saving: exact for checkpoints written between steps
(``ModelCheckpoint``, ``interrupted.ckpt`` after SIGTERM); a Ctrl-C or crash *inside* a step saves
the state of part of that step, which is then drawn again.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["ResumableRNG", "collect_rng_states", "rank_rng_states", "set_rng_states"]

log = logging.getLogger(__name__)


def collect_rng_states(device: torch.device | str | None = None) -> dict[str, Any]:
    """The global RNG states: torch CPU, CUDA of ``device`` (when it is a CUDA device), numpy, Python."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        states["cuda"] = {"device": int(index), "state": torch.cuda.get_rng_state(index)}
    return states


def set_rng_states(states: dict[str, Any], device: torch.device | str | None = None) -> None:
    """Restore what :func:`collect_rng_states` returned (CUDA on ``device``, when both are CUDA)."""
    torch.set_rng_state(states["torch"].cpu())
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state(
            (
                n["kind"],
                n["keys"].numpy().astype(np.uint32),
                int(n["pos"]),
                int(n["has_gauss"]),
                float(n["cached_gaussian"]),
            )
        )
    if "python" in states:
        p = states["python"]
        random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    device = torch.device(device) if device is not None else None
    if "cuda" in states and device is not None and device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_rng_state(states["cuda"]["state"].cpu(), index)


def _saving_together() -> bool:
    """Whether every rank is saving this checkpoint (no exception, or Lightning's broadcast SIGTERM)."""
    exc = sys.exc_info()[1]
    if exc is None:
        return True

    return isinstance(exc, SIGTERMException)


def rank_rng_states(trainer, device) -> dict[int, dict[str, Any]]:
    """``{global_rank: states}`` of every rank (all-gathered) or of this rank alone (see the module docstring)."""
    rank = int(trainer.global_rank) if trainer is not None else 0
    states = collect_rng_states(device)
    world = int(trainer.world_size) if trainer is not None else 1
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized() and _saving_together():
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (rank, states))
        return {int(r): s for r, s in gathered}
    return {rank: states}


def _fallback_seed(seed: int, rank: int, step: int) -> int:
    digest = hashlib.sha1(f"latent_flow resume {seed} {rank} {step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ResumableRNG:
    """Mixin for LightningModules: RNG states per rank in checkpoints, restored when resuming."""

    _resume_rng_states: dict[str, Any] | None = None

    def save_rng_states(self, checkpoint: dict[str, Any]) -> None:
        trainer = getattr(self, "_trainer", None)
        checkpoint["rng_states"] = {
            "world_size": int(trainer.world_size) if trainer is not None else 1,
            "global_step": int(trainer.global_step) if trainer is not None else 0,
            "per_rank": rank_rng_states(trainer, self.device),
        }

    def load_rng_states(self, checkpoint: dict[str, Any]) -> None:
        self._resume_rng_states = checkpoint.get("rng_states")

    def seed_or_restore_rng(self, seed: int) -> int | None:
        """At ``on_train_start``: restore this rank's saved states when resuming, else seed ``seed + rank``.

        Returns the seed used, or ``None`` when the saved states were restored.
        """
        trainer = self.trainer
        rank, step = int(trainer.global_rank), int(trainer.global_step)
        saved, self._resume_rng_states = self._resume_rng_states, None
        if trainer.ckpt_path is None:  # a fresh run
            torch.manual_seed(seed + rank)  # the CPU generator and every CUDA device's
            return seed + rank
        per_rank = (saved or {}).get("per_rank", {})
        if rank in per_rank:
            set_rng_states(per_rank[rank], self.device)
            log.info("rank %d: RNG states restored from %s (step %d)", rank, trainer.ckpt_path, step)
            return None
        fallback = _fallback_seed(seed, rank, step)
        log.warning(
            "%s holds no RNG state for rank %d (%s): the resumed run reseeds from (seed, rank, step) and does not "
            "continue the interrupted run bit for bit",
            trainer.ckpt_path,
            rank,
            "an older checkpoint" if saved is None else f"saved by {saved.get('world_size')} rank(s)",
        )
        torch.manual_seed(fallback)
        return fallback
