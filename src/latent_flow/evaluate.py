"""Sample and score a checkpoint (FID & co, resumable, multi-GPU): ``python -m latent_flow.evaluate ckpt_path=...``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.evaluate.run_evaluation` (options: ``conf/evaluate.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.evaluate import run_evaluation
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_evaluation"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
