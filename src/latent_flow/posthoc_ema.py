"""Post-hoc EMA: ``python -m latent_flow.posthoc_ema ckpt_path=RUN/checkpoints/last.ckpt sigma_rel=0.08``.

A thin Hydra wrapper: the work is
:func:`latent_flow.cli.posthoc_ema.run_posthoc_ema` (options: ``conf/posthoc_ema.yaml``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from latent_flow.cli.posthoc_ema import run_posthoc_ema
from latent_flow.cli.run import CONFIG_DIR

__all__ = ["main", "run_posthoc_ema"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="posthoc_ema")
def main(cfg: DictConfig) -> None:
    run_posthoc_ema(cfg)


if __name__ == "__main__":
    main()
