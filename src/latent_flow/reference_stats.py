"""Reference statistics of a dataset split: ``python -m latent_flow.reference_stats data=... split=train``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.reference_stats.run_reference_stats` (options: ``conf/reference_stats.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.reference_stats import run_reference_stats
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_reference_stats"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="reference_stats")
def main(cfg: DictConfig) -> None:
    run_reference_stats(cfg)


if __name__ == "__main__":
    main()
