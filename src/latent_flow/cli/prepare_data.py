"""Prepare a dataset that is built from installed packages: ``python -m latent_flow.prepare_data emoji ...``.

The first argument names the dataset (``emoji``; the Hydra form ``dataset=emoji`` works too), the
rest are Hydra overrides of ``conf/prepare_data.yaml``::

    python -m latent_flow.prepare_data emoji sources=[openmoji] resolution=64
    python -m latent_flow.prepare_data emoji sources=[noto,twemoji] npm_dir=~/.cache/latent_flow/npm
    python -m latent_flow.prepare_data emoji sources=[openmoji] resolution=128 background=[0,0,0] out_dir=data/emoji_black

Renders once into ``out_dir/<source>/<resolution>/`` (see :mod:`latent_flow.data.emoji`); running it
again resumes and keeps what is there. Prints one summary line per source (counts per group and
split, skipped items, seconds) and writes them to ``prepare_data.json`` in the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from latent_flow.data.emoji import prepare_emoji, summary_table
from latent_flow.utils.config import to_plain
from latent_flow.utils.io import write_json

__all__ = ["DATASETS", "positional_dataset", "run_prepare_data"]

log = logging.getLogger(__name__)

#: datasets this entry point prepares
DATASETS = ("emoji",)


def run_prepare_data(cfg: DictConfig) -> dict:
    """Prepare ``cfg.dataset``; returns ``{source: summary}``."""
    if cfg.dataset not in DATASETS:
        raise ValueError(
            f"unknown dataset {cfg.dataset!r} for latent_flow.prepare_data; available: {', '.join(DATASETS)}"
        )

    sources = cfg.sources
    sources = [sources] if isinstance(sources, str) else list(sources)
    background = cfg.background if isinstance(cfg.background, str) else list(cfg.background)
    source_paths = to_plain(cfg.source_paths) if cfg.get("source_paths") else None
    summaries = prepare_emoji(
        cfg.out_dir,
        sources,
        int(cfg.resolution),
        background,
        val_fraction=float(cfg.val_fraction),
        split_by=str(cfg.split_by),
        source_paths=source_paths,
        npm_dir=cfg.get("npm_dir"),
        emoji_test=cfg.get("emoji_test"),
        progress=bool(cfg.progress),
        part_maps=bool(cfg.get("part_maps", False)),
    )
    print(summary_table(summaries))
    print(f"prepared in {Path(cfg.out_dir).expanduser()}: use data=emoji data.dataset.root={cfg.out_dir} "
          f"data.dataset.sources=[{','.join(sources)}] data.dataset.resolution={int(cfg.resolution)}"
          + (" data.dataset.part_maps=true" if cfg.get("part_maps") else ""))  # fmt: skip
    compact = {name: {k: v for k, v in s.items() if k != "skipped_items"} for name, s in summaries.items()}
    write_json(Path(cfg.paths.output_dir) / "prepare_data.json", compact)
    return summaries


def positional_dataset(argv: list[str]) -> list[str]:
    """``prepare_data emoji k=v ...`` -> ``prepare_data dataset=emoji k=v ...`` (Hydra has no positionals)."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        return [argv[0], f"dataset={argv[1]}", *argv[2:]]
    return argv
