"""Sequential attribute editing (LACE): ``python -m latent_flow.edit ckpt_path=... classifier_ckpt_path=... input=...``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.edit.run_edit` (options: ``conf/edit.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.edit import run_edit
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_edit"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="edit")
def main(cfg: DictConfig) -> None:
    run_edit(cfg)


if __name__ == "__main__":
    main()
