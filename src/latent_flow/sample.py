"""Sample from a trained model: ``python -m latent_flow.sample ckpt_path=... num_samples=64 sampler=heun``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.sample.run_sampling` (options: ``conf/sample.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.run import CONFIG_DIR
from latent_flow.cli.sample import run_sampling

__all__ = ["main", "run_sampling"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    run_sampling(cfg)


if __name__ == "__main__":
    main()
