"""Build the latent cache explicitly: ``python -m latent_flow.encode [data=...] [autoencoder=...]``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.encode.run_encode` (options: ``conf/encode.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.encode import run_encode
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_encode"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="encode")
def main(cfg: DictConfig) -> None:
    run_encode(cfg)


if __name__ == "__main__":
    main()
