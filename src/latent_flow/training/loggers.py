"""Logger factories."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

__all__ = ["build_wandb_logger", "wandb_has_credentials"]

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when an API key is available without asking (env var or ~/.netrc from `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(Path.home() / ".netrc").authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return auth is not None


def build_wandb_logger(
    *, project: str, name: str | None, save_dir: str, mode: str = "auto", group: str = "", tags: list | None = None
):
    """A Lightning ``WandbLogger`` that never blocks on a login prompt.

    ``mode="auto"`` logs online when credentials exist and offline otherwise
    (``wandb sync`` uploads an offline run later).
    """
    if mode not in {"auto", "online", "offline", "disabled"}:
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
        if mode == "offline":
            log.info("W&B: no API key found, logging offline to %s (upload later with `wandb sync`)", save_dir)
    if mode == "online" and not wandb_has_credentials():
        raise RuntimeError("logger.wandb.mode=online needs WANDB_API_KEY or `wandb login`; use mode=offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        mode=mode,
        group=group or None,
        tags=list(tags or []),
        log_model=False,
    )
