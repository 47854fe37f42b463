"""The ``extras`` switches of a training command (lightning-hydra-template's, ``conf/extras/default.yaml``).

Applied at the start of :func:`latent_flow.cli.train.run_training`, before any stage:

* ``extras.ignore_warnings=true``: Python warnings are not shown (``warnings.filterwarnings("ignore")``);
* ``extras.enforce_tags=true``: a run without ``tags=[...]`` is refused (no prompt: runs are often not
  interactive);
* ``extras.print_config=true``: the composed config is printed as a rich tree (one branch per group,
  resolved where it can be), on the first process only. Nothing is written into the run directory: the
  run's ``config.yaml`` is written at its first training step.

``tags=[...]`` (top level) label a run; they are part of the config, so they are recorded in
``config.yaml``, in every logger's hyper-parameters and as W&B run tags (``conf/logger/wandb.yaml``).
"""

from __future__ import annotations

import logging
import warnings
from typing import IO

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text
from rich.tree import Tree

from latent_flow.utils.distributed import distributed_rank

__all__ = ["PRINT_ORDER", "apply_extras", "config_tree"]

log = logging.getLogger(__name__)

#: the groups printed first (in this order); the other keys follow as they come, top-level values last
PRINT_ORDER = (
    "data",
    "condition",
    "backbone",
    "autoencoder",
    "path",
    "objective",
    "sampler",
    "optim",
    "ema",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "extras",
)


def _yaml(node, resolve: bool) -> str:
    try:
        return OmegaConf.to_yaml(node, resolve=resolve)
    except Exception:  # an interpolation that only resolves inside a Hydra app: shown as written
        return OmegaConf.to_yaml(node, resolve=False)


def config_tree(cfg: DictConfig, *, resolve: bool = True, highlight: bool = True) -> Tree:
    """The config as a rich :class:`~rich.tree.Tree`: a branch per group (its YAML; a group set to null, such as
    ``logger`` in a debug run, shows ``null``), then the top-level values (``task_name``, ``tags``, ...)."""
    tree = Tree("CONFIG", style="dim", guide_style="dim")

    def body(text: str):  # coloured YAML on a terminal; plain text (no padding to the width) in a file
        return Syntax(text, "yaml", word_wrap=True) if highlight else Text(text)

    groups = [k for k in PRINT_ORDER if k in cfg]
    groups += [k for k in cfg if k not in groups and isinstance(cfg._get_node(k), DictConfig)]
    for key in groups:
        node = cfg._get_node(key)
        text = _yaml(node, resolve) if isinstance(node, DictConfig) else "null\n"
        tree.add(str(key), style="bold", guide_style="dim").add(body(text.rstrip("\n")))
    rest = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in groups])
    if len(rest):
        tree.add("(top level)", style="bold", guide_style="dim").add(body(_yaml(rest, resolve).rstrip("\n")))
    return tree


def apply_extras(cfg: DictConfig, *, file: IO[str] | None = None) -> None:
    """Apply ``cfg.extras`` (module docstring); a config without ``extras`` is left alone."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        log.info("extras.ignore_warnings=true: Python warnings are not shown")
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ValueError(
            "extras.enforce_tags=true and this run has no tags: give some, e.g. tags=[baseline,vp] (recorded in "
            "config.yaml and every logger), or extras.enforce_tags=false"
        )
    if extras.get("print_config") and distributed_rank()[0] == 0:
        console = Console(file=file)
        if not console.is_terminal:  # a log file: long lines (paths) whole rather than wrapped at 80 columns
            console.width = max(console.width, 160)
        console.print(config_tree(cfg, highlight=console.is_terminal))
