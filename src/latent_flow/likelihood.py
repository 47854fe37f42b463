"""NLL / bits per dimension of held-out data: ``python -m latent_flow.likelihood ckpt_path=...``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.likelihood.run_likelihood` (options: ``conf/likelihood.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.likelihood import run_likelihood
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_likelihood"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="likelihood")
def main(cfg: DictConfig) -> None:
    run_likelihood(cfg)


if __name__ == "__main__":
    main()
