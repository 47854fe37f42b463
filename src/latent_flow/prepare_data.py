"""Render / install a dataset once: ``python -m latent_flow.prepare_data emoji sources=[openmoji] resolution=64``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.prepare_data.run_prepare_data` (options: ``conf/prepare_data.yaml``).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from latent_flow.cli.prepare_data import positional_dataset, run_prepare_data
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_prepare_data"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    run_prepare_data(cfg)


if __name__ == "__main__":
    sys.argv = positional_dataset(sys.argv)  # `prepare_data emoji ...`: Hydra has no positionals
    main()
