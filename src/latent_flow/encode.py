"""Build the latent cache explicitly: ``python -m latent_flow.encode [data=...] [autoencoder=...]``.

``latent_flow.train`` does the same automatically as its first step; running it on
its own lets a cluster job encode once before many training runs. An interrupted
encoding resumes (finished shards are kept). Prints the cache directory and the
latent statistics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from latent_flow.runtime import CONFIG_DIR

__all__ = ["run_encode", "main"]

log = logging.getLogger(__name__)


def run_encode(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from latent_flow.data.latent_cache import LatentCache
    from latent_flow.train_autoencoder import ensure_autoencoder

    dataset = instantiate(cfg.data.dataset)
    autoencoder, spec = ensure_autoencoder(
        cfg.autoencoder, dataset, cache_dir=cfg.paths.cache_dir, output_dir=cfg.paths.output_dir
    )
    cache = LatentCache(
        cfg.paths.cache_dir,
        dataset,
        autoencoder,
        flip=cfg.data.flip,
        name=cfg.data.name,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
    )
    start = time.time()
    was_complete = cache.is_complete()
    cache.build(progress=True)
    seconds = time.time() - start
    meta = cache.meta()
    info = {
        "cache_dir": str(cache.root),
        "already_complete": was_complete,
        "num_items": meta.num_items,
        "num_views": meta.num_views,
        "latent_shape": list(meta.latent_shape),
        "mean": meta.mean,
        "std": meta.std,
        "seconds": round(seconds, 2),
        "images_per_second": None if was_complete else round(meta.num_items * meta.num_views / max(seconds, 1e-9), 1),
        "autoencoder": spec,
    }
    print(f"latent cache: {cache.root}")
    print(f"  {meta.num_items} items x {meta.num_views} view(s), latents {tuple(meta.latent_shape)}")
    print(f"  per-channel mean {[round(v, 4) for v in meta.mean]}, std {[round(v, 4) for v in meta.std]}")
    if not was_complete:
        print(f"  encoded in {seconds:.1f}s ({info['images_per_second']} images/s)")
    return info


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="encode")
def main(cfg: DictConfig) -> None:
    run_encode(cfg)


if __name__ == "__main__":
    main()
