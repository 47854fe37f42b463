"""Post-hoc EMA: ``python -m latent_flow.posthoc_ema ckpt_path=RUN/checkpoints/last.ckpt sigma_rel=0.08``.

Reconstructs the power-function EMA of any ``sigma_rel`` at any snapshot step from the snapshots a
run stored with ``callbacks=posthoc_ema`` (``RUN/posthoc_ema/phema_*.pt``), and writes a checkpoint
with those EMA weights (default ``RUN/checkpoints/posthoc_sigma<sigma_rel>[_step<step>].ckpt``) for
``sample`` / ``evaluate``. The maths: :mod:`latent_flow.training.posthoc_ema`.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from latent_flow.training.posthoc_ema import write_posthoc_checkpoint

__all__ = ["run_posthoc_ema"]


def run_posthoc_ema(cfg: DictConfig) -> dict:
    ckpt = Path(cfg.ckpt_path)
    suffix = f"posthoc_sigma{float(cfg.sigma_rel):g}" + (f"_step{int(cfg.step)}" if cfg.step is not None else "")
    out = Path(cfg.out_path) if cfg.out_path else ckpt.parent / f"{suffix}.ckpt"
    summary = write_posthoc_checkpoint(ckpt, float(cfg.sigma_rel), out, snapshot_dir=cfg.snapshot_dir, step=cfg.step)
    print(json.dumps(summary, indent=2))
    return summary
