"""Build the latent cache explicitly: ``python -m latent_flow.encode [data=...] [autoencoder=...]``.

``latent_flow.train`` does the same automatically as its first step; running it on
its own lets a cluster job encode once before many training runs. An interrupted
encoding resumes (finished shards are kept). Prints the cache directory and the
latent statistics.

Distributed encoding: under ``torchrun --nproc_per_node=N -m latent_flow.encode`` (or
``srun`` with N tasks) every rank encodes the shards ``shard % N == rank``; rank 0 waits for
all shards, measures the statistics and writes ``meta.json``; the other ranks wait for it.
Each rank prints its own progress; only rank 0 prints the summary. With several nodes the
cache directory must be on a file system shared by all nodes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig

from latent_flow.runtime import CONFIG_DIR

__all__ = ["run_encode", "main", "distributed_rank", "build_cache_distributed"]

log = logging.getLogger(__name__)

#: seconds a rank waits for the others' shards / meta.json *without any progress* before failing
DEFAULT_WAIT_TIMEOUT = float(os.environ.get("LATENT_FLOW_CACHE_WAIT_TIMEOUT", 1800))


def distributed_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(global_rank, world_size)`` of this process from the launcher's environment.

    ``RANK`` / ``WORLD_SIZE`` (torchrun), ``SLURM_PROCID`` / ``SLURM_NTASKS`` (srun), or
    ``LOCAL_RANK`` / ``WORLD_SIZE`` (Lightning's subprocess launcher, which sets no ``RANK``;
    single node). Without a world size this is a single process: ``(0, 1)``. Note that the
    first process of ``python -m latent_flow.train trainer=ddp`` has no ``WORLD_SIZE`` before
    ``trainer.fit`` (Lightning launches the other ranks then), so it builds the whole cache.
    """
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE"):  # torchrun / Lightning: authoritative, even inside a SLURM allocation
        if int(env["WORLD_SIZE"]) <= 1:
            return 0, 1
        world = int(env["WORLD_SIZE"])
        if env.get("RANK") is not None:
            rank = int(env["RANK"])
        elif env.get("NODE_RANK", "0") == "0" and env.get("LOCAL_RANK") is not None:
            rank = int(env["LOCAL_RANK"])
        else:  # a rank we cannot place: behave like a single process (safe, just redundant)
            return 0, 1
        return rank, world
    if env.get("SLURM_NTASKS") and env.get("SLURM_PROCID") is not None and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return 0, 1


def _wait(done, describe, *, timeout: float, poll: float, progress) -> None:
    """Poll ``done()`` until true; fail after ``timeout`` seconds without ``progress()`` changing."""
    last, since = progress(), time.monotonic()
    while not done():
        time.sleep(poll)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > timeout:
            raise TimeoutError(describe())


def build_cache_distributed(
    cache,
    rank: int = 0,
    world_size: int = 1,
    *,
    progress: bool = True,
    timeout: float | None = None,
    poll: float = 2.0,
) -> Path:
    """Build ``cache`` split over ranks: rank r encodes the shards ``shard % world_size == r``.

    Rank 0 then waits until every shard exists and writes ``meta.json`` (statistics over all
    shards); the other ranks wait until ``meta.json`` is complete. A rank that sees no
    progress for ``timeout`` seconds (default ``$LATENT_FLOW_CACHE_WAIT_TIMEOUT`` or 1800)
    raises ``TimeoutError`` naming the missing shards. ``world_size == 1`` is the plain build.
    """
    if world_size <= 1:
        return cache.build(progress=progress)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    timeout = DEFAULT_WAIT_TIMEOUT if timeout is None else float(timeout)
    if cache.is_complete():
        return cache.root
    cache.build(rank=rank, world_size=world_size, progress=progress)
    if progress:
        print(f"[rank {rank}/{world_size}] encoded shards {list(range(rank, cache.num_shards, world_size))} "
              f"of {cache.num_shards}", flush=True)
    count = lambda: len(cache.shards_done())  # noqa: E731
    if rank == 0:
        _wait(
            lambda: cache.is_complete() or count() == cache.num_shards,
            lambda: (
                f"rank 0 waited {timeout:.0f}s without progress for the shards of the other ranks in "
                f"{cache.root}: missing shards {sorted(set(range(cache.num_shards)) - set(cache.shards_done()))} "
                f"(did every rank start? is the cache directory shared by all nodes?)"
            ),
            timeout=timeout, poll=poll, progress=count,
        )
        if not cache.is_complete():
            cache._write_meta()
    else:
        _wait(
            cache.is_complete,
            lambda: (
                f"rank {rank} waited {timeout:.0f}s without progress for rank 0 to write {cache.meta_path} "
                f"({count()}/{cache.num_shards} shards present; did rank 0 fail? is the cache directory shared?)"
            ),
            timeout=timeout, poll=poll, progress=count,
        )
    return cache.root


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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="encode")
def main(cfg: DictConfig) -> None:
    run_encode(cfg)


if __name__ == "__main__":
    main()
