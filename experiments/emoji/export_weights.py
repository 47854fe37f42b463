"""A training checkpoint as a small sampling checkpoint: the EMA weights only, for sharing a model (and for
keeping the emoji study's models across machines without their optimizer states and EMA snapshots).

    .venv/bin/python experiments/emoji/export_weights.py RUN/checkpoints/last.ckpt OUT.ckpt

Keeps ``hyper_parameters``, ``global_step`` / ``epoch`` and the ``state_dict`` with the backbone's tensors
replaced by the EMA copy's (the same tensor objects, so ``torch.save`` stores them once: the file is about a
quarter of the training checkpoint); drops optimizer states, loops, callbacks (post-hoc EMA snapshots) and
RNG states. The result loads with ``latent_flow.api.load_model`` / ``ckpt_path=`` in ``sample`` and
``evaluate`` and samples exactly like the training checkpoint with ``use_ema=true`` (the default); it cannot
resume training. Written atomically with its checksum (``utils.checkpoint_files``); the input is verified.
"""

from __future__ import annotations

import sys
from pathlib import Path

from latent_flow.utils.checkpoint_files import load_checkpoint, save_checkpoint_file

KEEP = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams_name")


def export(src: str | Path, dst: str | Path) -> Path:
    checkpoint = load_checkpoint(src)
    state = checkpoint.get("state_dict") or {}
    ema = {k[len("ema.module.") :]: v for k, v in state.items() if k.startswith("ema.module.")}
    backbone = [k for k in state if k.startswith("backbone.")]
    missing = [k for k in backbone if k[len("backbone.") :] not in ema]
    if not ema or missing:
        raise SystemExit(f"{src}: no EMA copy of every backbone tensor (missing {missing[:5]}); nothing written")
    slim = dict(state)
    for key in backbone:
        slim[key] = ema[key[len("backbone.") :]]  # the same tensor: stored once
    out = {k: checkpoint[k] for k in KEEP if k in checkpoint}
    out["state_dict"] = slim
    out["exported_from"] = {"path": str(src), "weights": "ema (backbone = EMA)"}
    save_checkpoint_file(out, dst)
    return Path(dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    path = export(sys.argv[1], sys.argv[2])
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
