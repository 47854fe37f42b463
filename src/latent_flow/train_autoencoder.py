"""Train the framework's own KL autoencoder: ``python -m latent_flow.train_autoencoder [data=...]``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.train_autoencoder.run_autoencoder_training` (options: ``conf/train_autoencoder.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.run import CONFIG_DIR
from latent_flow.cli.train_autoencoder import run_autoencoder_training

__all__ = ["main", "run_autoencoder_training"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_autoencoder")
def main(cfg: DictConfig) -> None:
    run_autoencoder_training(cfg)


if __name__ == "__main__":
    main()
