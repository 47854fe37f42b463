"""Train latent attribute classifiers: ``python -m latent_flow.train_classifier flow_ckpt_path=...``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.train_classifier.run_classifier_training` (options: ``conf/train_classifier.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.run import CONFIG_DIR
from latent_flow.cli.train_classifier import run_classifier_training

__all__ = ["main", "run_classifier_training"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    run_classifier_training(cfg)


if __name__ == "__main__":
    main()
