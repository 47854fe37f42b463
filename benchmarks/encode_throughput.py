"""Latent-cache encoding throughput (images/s): what `python -m latent_flow.encode` spends per image.

Times ``LatentCache.build`` (dataset items -> autoencoder.encode_raw -> shards on disk -> meta.json)
into a temporary cache directory, for

  kl    : the quick-start KL autoencoder config (conf/autoencoder/kl_shapes.yaml), freshly
          initialised (untrained weights encode at the same speed as trained ones);
  taef2 : the real TAEF2 weights (``--taef2-dir``, the folder of taef2_encoder.pth /
          taef2_decoder.pth), when ``latent_flow.autoencoders.taesd.TinyAutoencoder`` imports.

    .venv/bin/python benchmarks/encode_throughput.py                          # kl, 64 px, 512 images
    .venv/bin/python benchmarks/encode_throughput.py --resolution 256 --num-images 256 --device cuda
    .venv/bin/python benchmarks/encode_throughput.py --processes 2            # 2 ranks, aggregate images/s
    .venv/bin/python benchmarks/encode_throughput.py --taef2-dir /path/to/taef2

``--processes N`` starts N processes (multiprocessing spawn) that split the shards as the ranks of a
distributed encode do (``latent_flow.encode.build_cache_distributed``: shard % N == rank, rank 0
writes meta.json) and reports the aggregate throughput (all images / wall-clock time from a common
start to the complete cache). Threads are divided between the processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import Dataset


class RandomImages(Dataset):
    """Pre-generated random images in [-1, 1] (isolates the autoencoder from data loading)."""

    def __init__(self, num_images: int, resolution: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(num_images, 3, resolution, resolution, generator=g) * 2 - 1

    def fingerprint(self) -> str:
        return f"bench-random-{len(self.images)}-{self.images.shape[-1]}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {"image": self.images[i], "label": torch.tensor(0), "index": torch.tensor(i)}


def build_dataset(kind: str, num_images: int, resolution: int) -> Dataset:
    if kind == "shapes":
        from latent_flow.data import ShapesDataset

        return ShapesDataset(num_samples=num_images, resolution=resolution)
    return RandomImages(num_images, resolution)


def build_autoencoder(name: str, taef2_dir: str | None):
    if name == "kl":
        import yaml

        from latent_flow.autoencoders import KLAutoencoder

        conf = os.path.join(os.path.dirname(__file__), "..", "conf", "autoencoder", "kl_shapes.yaml")
        with open(conf) as f:
            cfg = yaml.safe_load(f)["config"]
        torch.manual_seed(0)  # same weights (and cache key) in every process
        return KLAutoencoder(**cfg).freeze()
    from latent_flow.autoencoders.taesd import TinyAutoencoder

    return TinyAutoencoder(
        os.path.join(taef2_dir, "taef2_encoder.pth"), os.path.join(taef2_dir, "taef2_decoder.pth"), 32, "gn"
    ).freeze()


def _worker(rank: int, world: int, args: argparse.Namespace, name: str, root: str, barrier, results) -> None:
    from latent_flow.data.latent_cache import LatentCache, build_cache_distributed

    torch.set_num_threads(max(1, args.threads // world))
    dataset = build_dataset(args.data, args.num_images, args.resolution)
    ae = build_autoencoder(name, args.taef2_dir).to(args.device)
    cache = LatentCache(root, dataset, ae, shard_size=args.shard_size, batch_size=args.batch_size)
    if args.device.startswith("cuda"):  # warm-up (cuDNN autotuning, lazy init) outside the timing
        cache.encode_batch(torch.zeros(min(args.batch_size, 4), 3, args.resolution, args.resolution))
        torch.cuda.synchronize()
    barrier.wait()
    start = time.perf_counter()
    build_cache_distributed(cache, rank, world, progress=False, timeout=600, poll=0.05)
    results.put((rank, time.perf_counter() - start, ae.latent_channels))


def run(name: str, args: argparse.Namespace) -> None:
    world = max(1, args.processes)
    with tempfile.TemporaryDirectory(prefix="encode_bench_") as root:
        if world == 1:
            from latent_flow.data.latent_cache import LatentCache

            torch.set_num_threads(args.threads)
            dataset = build_dataset(args.data, args.num_images, args.resolution)
            ae = build_autoencoder(name, args.taef2_dir).to(args.device)
            cache = LatentCache(root, dataset, ae, shard_size=args.shard_size, batch_size=args.batch_size)
            if args.device.startswith("cuda"):
                cache.encode_batch(torch.zeros(min(args.batch_size, 4), 3, args.resolution, args.resolution))
                torch.cuda.synchronize()
            start = time.perf_counter()
            cache.build(progress=False)
            seconds = time.perf_counter() - start
        else:
            ctx = mp.get_context("spawn")
            barrier, results = ctx.Barrier(world), ctx.Queue()
            procs = [
                ctx.Process(target=_worker, args=(r, world, args, name, root, barrier, results)) for r in range(world)
            ]
            for p in procs:
                p.start()
            times = {}
            for _ in procs:
                rank, secs, _channels = results.get(timeout=900)
                times[rank] = secs
            for p in procs:
                p.join()
            if any(p.exitcode for p in procs):
                sys.exit(f"a benchmark process failed: exit codes {[p.exitcode for p in procs]}")
            seconds = max(times.values())
        import json
        import pathlib

        from latent_flow.data.latent_cache import LatentCache  # noqa: F401  (meta check below)

        meta = json.loads(next(pathlib.Path(root).glob("latents/*/meta.json")).read_text())
    n = meta["num_items"]
    shape = tuple(meta["latent_shape"])
    print(
        f"{name:5s} {args.resolution}px -> latents {shape}: {n} images, {world} process(es), "
        f"{args.threads} thread(s), {args.device}: {seconds:.2f}s, {n / seconds:.1f} images/s"
        + (f" (aggregate; {n / seconds / world:.1f} images/s per process)" if world > 1 else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    parser.add_argument("--shard-size", type=int, default=128, help="images per shard (the unit split over ranks)")
    parser.add_argument(
        "--data",
        choices=["random", "shapes"],
        default="random",
        help="random: pre-generated tensors (encoder only); shapes: render ShapesDataset items too",
    )
    parser.add_argument("--processes", type=int, default=1, help="ranks, as separate processes (spawn)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads in all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--taef2-dir",
        default=os.environ.get("LATENT_FLOW_TAEF2_DIR"),
        help="folder of taef2_encoder.pth / taef2_decoder.pth (also benchmarks TAEF2)",
    )
    parser.add_argument("--skip-kl", action="store_true", help="only the TAEF2 benchmark")
    args = parser.parse_args()
    if args.processes > 1 and args.device.startswith("cuda") and torch.cuda.device_count() > 1:
        print("note: all processes use", args.device, "(one device); use torchrun + latent_flow.encode for one per GPU")

    if not args.skip_kl:
        run("kl", args)
    if args.taef2_dir:
        try:
            from latent_flow.autoencoders.taesd import TinyAutoencoder  # noqa: F401
        except ImportError as e:
            print(f"taef2: skipped, latent_flow.autoencoders.taesd.TinyAutoencoder does not import ({e})")
            return
        missing = [
            f for f in ("taef2_encoder.pth", "taef2_decoder.pth") if not os.path.isfile(os.path.join(args.taef2_dir, f))
        ]
        if missing:
            print(f"taef2: skipped, {missing} not found in {args.taef2_dir}")
            return
        run("taef2", args)
    else:
        print("taef2: skipped (pass --taef2-dir or set LATENT_FLOW_TAEF2_DIR to benchmark the real TAEF2 weights)")


if __name__ == "__main__":
    main()
