"""Train a latent flow-matching model (or a FlowTurbo refiner): ``python -m latent_flow.train [+experiment=NAME]``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.train.run_training` (options: ``conf/train.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.run import CONFIG_DIR
from latent_flow.cli.train import run_training, sweep_value

__all__ = ["main", "run_training"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return sweep_value(cfg, run_training(cfg))


if __name__ == "__main__":
    main()
