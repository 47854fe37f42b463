"""Build the latent cache explicitly (``python -m latent_flow.encode [data=...] [autoencoder=...]``).

``latent_flow.train`` does the same automatically as its first step; running it on
its own lets a cluster job encode once before many training runs. An interrupted
encoding resumes (finished shards are kept). Prints the cache directory and the
latent statistics.

Distributed encoding: under ``torchrun --nproc_per_node=N -m latent_flow.encode`` (or
``srun`` with N tasks) every rank encodes the shards ``shard % N == rank``; rank 0 waits for
all shards, measures the statistics and writes ``meta.json``; the other ranks wait for it
(:func:`latent_flow.data.latent_cache.build_cache_distributed`). Each rank prints its own
progress; only rank 0 prints the summary. With several nodes the cache directory must be on
a file system shared by all nodes.
"""

from __future__ import annotations

import time

from hydra.utils import instantiate
from omegaconf import DictConfig

from latent_flow.data.latent_cache import LatentCache, build_cache_distributed
from latent_flow.training.autoencoder import ensure_autoencoder
from latent_flow.utils.distributed import distributed_rank

__all__ = ["run_encode"]


def run_encode(cfg: DictConfig) -> dict:
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
    rank, world_size = distributed_rank()
    start = time.time()
    was_complete = cache.is_complete()
    build_cache_distributed(cache, rank, world_size, progress=True)
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
        "rank": rank,
        "world_size": world_size,
    }
    if rank != 0:
        return info
    print(f"latent cache: {cache.root}")
    print(f"  {meta.num_items} items x {meta.num_views} view(s), latents {tuple(meta.latent_shape)}")
    print(f"  per-channel mean {[round(v, 4) for v in meta.mean]}, std {[round(v, 4) for v in meta.std]}")
    if not was_complete:
        print(f"  encoded in {seconds:.1f}s ({info['images_per_second']} images/s)")
    return info
