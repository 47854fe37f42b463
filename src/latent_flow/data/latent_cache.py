"""On-disk latent cache: encode a dataset once, train on latents forever after.

Layout of one cache (``<cache_dir>/latents/<name>-<key>/``)::

    meta.json                    written last: complete flag, shapes, stats, provenance
    shard_00000.latents.npy      float32 (n, V, C, h, w) raw latents, V = 2 with flips
    shard_00000.labels.npy       int64 (n,)
    shard_00000.attributes.npy   int64 (n, A)            (when the dataset has attributes)

What spatial conditions need (``extras``, :func:`latent_flow.conditioning.cache_extras`)::

    shard_00000.semantic.npy        uint8 (n, H, W)      class-id maps at image resolution (semantic)
    shard_00000.masks.npy           uint8 (n, K, H, ceil(W/8)) bit-packed masks, 1 = known (inpaint)
    shard_00000.masked_latents.npy  float32 (n, K, V, C, h, w) raw latents of the masked images

For inpainting, ``K = mask_variants`` masks per image come from
:class:`~latent_flow.data.masks.MaskGenerator` (mask of item ``i``, variant ``k`` is a pure
function of ``(i, k)``, the generator settings and, for the ``part`` family, the item's class map);
the masked image is ``image * mask`` (holes set to 0, mid-grey) and is encoded like the image
(view 1 = the flipped masked image). Training picks one variant per access.

The key hashes the dataset fingerprint, the autoencoder fingerprint, the flip setting
and the extras (when there are any: caches without extras keep their keys), so changing
any of them selects a different cache. Shards are written
atomically (temporary file + rename) and existing shards are skipped, so an
interrupted encoding resumes where it stopped. Raw (unnormalised) latents are
stored; the per-channel mean/std measured over the whole cache (all views) are
in ``meta.json`` and applied when reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from latent_flow.autoencoders.base import Autoencoder, measure_latent_stats
from latent_flow.data.masks import MaskGenerator
from latent_flow.utils.distributed import DEFAULT_WAIT_TIMEOUT, wait_until
from latent_flow.utils.progress import progress_bar

__all__ = ["LatentCache", "LatentDataset", "build_cache_distributed", "cache_key", "CACHE_FORMAT_VERSION"]

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def cache_key(dataset_fingerprint: str, autoencoder_fingerprint: str, flip: bool, extras: dict | None = None) -> str:
    """Hash of everything that determines the cached latents (``extras`` only when non-empty)."""
    content = {
        "v": CACHE_FORMAT_VERSION,
        "data": dataset_fingerprint,
        "ae": autoencoder_fingerprint,
        "flip": bool(flip),
    }
    if extras:
        content["extras"] = extras
    payload = json.dumps(content, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


@dataclass
class CacheMeta:
    num_items: int
    num_views: int
    latent_shape: tuple[int, int, int]
    shard_size: int
    num_shards: int
    mean: list[float]
    std: list[float]
    has_attributes: bool
    info: dict
    extras: dict | None = None
    image_size: tuple[int, int] | None = None


def _check_extras(extras: dict | None) -> dict:
    extras = dict(extras or {})
    unknown = sorted(set(extras) - {"semantic", "masks", "mask_variants"})
    if unknown:
        raise ValueError(f"latent cache: unknown extras {unknown}; valid: semantic, masks, mask_variants")
    if "masks" in extras:
        extras["masks"] = dict(extras["masks"] or {})
        extras["mask_variants"] = int(extras.get("mask_variants", 4))
        if extras["mask_variants"] < 1:
            raise ValueError(f"mask_variants must be >= 1, got {extras['mask_variants']}")
    elif "mask_variants" in extras:
        raise ValueError("latent cache extras: mask_variants given without masks")
    if "semantic" in extras and not extras["semantic"]:
        del extras["semantic"]
    return extras


class _WithMasks(Dataset):
    """Adds ``"masks"`` (K, H, W) bool (1 = known) of item ``index``, variants 0..K-1, to each item.

    Drawing masks here (not in the encoding loop) lets the DataLoader's workers do it in parallel.
    Mask families drawn from the item's class map (``part``) get the item's ``"semantic"`` (unflipped:
    view 1 flips the mask and the map together when read).
    """

    def __init__(self, base: Dataset, generator, num_variants: int) -> None:
        self.base = base
        self.generator = generator
        self.num_variants = int(num_variants)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        index = int(item["index"])
        semantic = None
        if self.generator.needs_maps:
            if "semantic" not in item:
                name = type(getattr(self.base, "dataset", self.base)).__name__
                raise KeyError(
                    f"the inpainting masks {sorted(self.generator.families)} are drawn from each image's class map, "
                    f"but {name} items have no 'semantic' entry (emoji: data.dataset.part_maps=true)"
                )
            semantic = np.asarray(item["semantic"])
        masks = [self.generator(index, v, semantic) for v in range(self.num_variants)]
        item["masks"] = torch.from_numpy(np.stack(masks))
        return item


class LatentCache:
    """A (possibly not yet built) latent cache of ``dataset`` encoded by ``autoencoder``."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        dataset: Dataset,
        autoencoder: Autoencoder,
        *,
        flip: bool = False,
        name: str | None = None,
        shard_size: int = 8192,
        batch_size: int = 256,
        num_workers: int = 0,
        extras: dict | None = None,
    ) -> None:
        if not hasattr(dataset, "fingerprint"):
            raise TypeError(
                f"{type(dataset).__name__} has no fingerprint(): the latent cache needs one to key its content"
            )
        self.dataset = dataset
        self.autoencoder = autoencoder
        self.flip = bool(flip)
        self.shard_size = int(shard_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.extras = _check_extras(extras)
        self.key = cache_key(dataset.fingerprint(), autoencoder.fingerprint(), self.flip, self.extras)
        name = name or type(dataset).__name__.lower()
        self.root = Path(cache_dir) / "latents" / f"{name}-{self.key}"

    # ------------------------------------------------------------------ state
    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def is_complete(self) -> bool:
        if not self.meta_path.exists():
            return False
        meta = json.loads(self.meta_path.read_text())
        return bool(meta.get("complete")) and meta.get("format_version") == CACHE_FORMAT_VERSION

    def _shard_paths(self, shard: int) -> dict[str, Path]:
        stem = self.root / f"shard_{shard:05d}"
        return {
            "latents": stem.with_name(stem.name + ".latents.npy"),
            "labels": stem.with_name(stem.name + ".labels.npy"),
            "attributes": stem.with_name(stem.name + ".attributes.npy"),
            "semantic": stem.with_name(stem.name + ".semantic.npy"),
            "masks": stem.with_name(stem.name + ".masks.npy"),
            "masked_latents": stem.with_name(stem.name + ".masked_latents.npy"),
        }

    @property
    def num_shards(self) -> int:
        return (len(self.dataset) + self.shard_size - 1) // self.shard_size

    def shards_done(self) -> list[int]:
        return [s for s in range(self.num_shards) if self._shard_paths(s)["labels"].exists()]

    # ------------------------------------------------------------------ building
    @torch.no_grad()
    def encode_batch(self, images: Tensor) -> Tensor:
        """Raw latents of a batch, shape (B, V, C, h, w); view 1 is the horizontal flip."""
        device = self.autoencoder.latent_mean.device
        images = images.to(device)
        views = [self.autoencoder.encode_raw(images)]
        if self.flip:
            views.append(self.autoencoder.encode_raw(torch.flip(images, dims=[-1])))
        return torch.stack(views, dim=1).float().cpu()

    def mask_generator(self, resolution: int):
        return MaskGenerator(resolution, **self.extras["masks"])

    def _encode_extras(self, batch: dict, out: dict[str, list]) -> None:
        """Semantic maps and (mask, masked-image latent) variants of one batch into ``out``."""
        if "semantic" in self.extras:
            if "semantic" not in batch:
                raise KeyError(
                    f"the latent cache was asked to store semantic maps, but {type(self.dataset).__name__} "
                    "items have no 'semantic' entry (use a dataset with semantic maps, e.g. data=shapes, celebamask256, or emoji with data.dataset.part_maps=true)"
                )
            semantic = batch["semantic"].numpy()
            if semantic.min() < 0 or semantic.max() > 255:
                raise ValueError(
                    f"semantic ids must be in [0, 255] to be cached as uint8, got [{semantic.min()}, {semantic.max()}]"
                )
            out["semantic"].append(semantic.astype(np.uint8))
        if "masks" in self.extras:
            images = batch["image"]
            num_variants = self.extras["mask_variants"]
            masks = batch["masks"].numpy().astype(bool)  # (B, K, H, W), drawn in the loader's workers
            known = torch.from_numpy(masks).to(images.dtype)[:, :, None]  # (B, K, 1, H, W)
            # one encoder call per variant: the encoder never sees more than the image batch size
            latents = torch.stack([self.encode_batch(images * known[:, v]) for v in range(num_variants)], dim=1)
            out["masked_latents"].append(latents.numpy())  # (B, K, V, C, h, w)
            out["masks"].append(np.packbits(masks, axis=-1))

    def build(self, *, rank: int = 0, world_size: int = 1, progress: bool = True) -> Path:
        """Encode the shards this rank owns (shard % world_size == rank); rank 0 then writes meta.json.

        Already written shards are skipped, so an interrupted build resumes.
        """
        if self.is_complete():
            return self.root
        self.root.mkdir(parents=True, exist_ok=True)
        todo = [s for s in range(self.num_shards) if s % world_size == rank and s not in set(self.shards_done())]
        total_items = sum(min(self.shard_size, len(self.dataset) - s * self.shard_size) for s in todo)
        bar = None
        if progress and total_items:
            bar = progress_bar(total_items, f"encoding latents -> {self.root.name}", unit="img")
        start = time.time()
        for shard in todo:
            lo = shard * self.shard_size
            hi = min(len(self.dataset), lo + self.shard_size)
            subset = Subset(self.dataset, range(lo, hi))
            if "masks" in self.extras:
                resolution = int(self.dataset[lo]["image"].shape[-2])
                subset = _WithMasks(subset, self.mask_generator(resolution), self.extras["mask_variants"])
            loader = DataLoader(
                subset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                shuffle=False,
            )
            latents, labels, attributes = [], [], []
            extra: dict[str, list] = {"semantic": [], "masks": [], "masked_latents": []}
            for batch in loader:
                latents.append(self.encode_batch(batch["image"]).numpy())
                self._encode_extras(batch, extra)
                labels.append(batch["label"].numpy().astype(np.int64))
                if "attributes" in batch:
                    attributes.append(batch["attributes"].numpy().astype(np.int64))
                if bar is not None:
                    bar.update(len(batch["label"]))
            paths = self._shard_paths(shard)
            _atomic_save(paths["latents"], np.concatenate(latents))
            if attributes:
                _atomic_save(paths["attributes"], np.concatenate(attributes))
            for name, parts in extra.items():
                if parts:
                    _atomic_save(paths[name], np.concatenate(parts))
            _atomic_save(paths["labels"], np.concatenate(labels))  # written last: marks the shard done
        if bar is not None:
            bar.close()
        if todo:
            log.info("encoded %d images in %.1fs into %s", total_items, time.time() - start, self.root)
        if rank == 0 and len(self.shards_done()) == self.num_shards:
            self.write_meta()
        return self.root

    def write_meta(self) -> None:
        shards = [np.load(self._shard_paths(s)["latents"], mmap_mode="r") for s in range(self.num_shards)]
        num_views, channels, height, width = shards[0].shape[1:]
        mean, std = measure_latent_stats(torch.from_numpy(np.array(arr)).flatten(0, 1) for arr in shards)
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "complete": True,
            "num_items": int(sum(len(a) for a in shards)),
            "num_views": int(num_views),
            "latent_shape": [int(channels), int(height), int(width)],
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "has_attributes": self._shard_paths(0)["attributes"].exists(),
            "extras": self.extras,
            "image_size": self._image_size(),
            "info": {
                "dataset": type(self.dataset).__name__,
                "dataset_fingerprint": self.dataset.fingerprint(),
                "autoencoder": type(self.autoencoder).__name__,
                "autoencoder_fingerprint": self.autoencoder.fingerprint(),
                "flip": self.flip,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        }
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self.meta_path)

    def _image_size(self) -> list[int] | None:
        paths = self._shard_paths(0)
        if paths["semantic"].exists():
            return [int(v) for v in np.load(paths["semantic"], mmap_mode="r").shape[1:3]]
        if paths["masks"].exists():
            height = int(np.load(paths["masks"], mmap_mode="r").shape[2])
            return [height, int(self.dataset[0]["image"].shape[-1])]
        return None

    # ------------------------------------------------------------------ reading
    def meta(self) -> CacheMeta:
        if not self.is_complete():
            raise FileNotFoundError(
                f"latent cache {self.root} is missing or incomplete; build it with "
                "`python -m latent_flow.encode` (or let `latent_flow.train` build it)"
            )
        m = json.loads(self.meta_path.read_text())
        return CacheMeta(
            num_items=m["num_items"],
            num_views=m["num_views"],
            latent_shape=tuple(m["latent_shape"]),
            shard_size=m["shard_size"],
            num_shards=m["num_shards"],
            mean=m["mean"],
            std=m["std"],
            has_attributes=m["has_attributes"],
            info=m["info"],
            extras=m.get("extras") or {},
            image_size=tuple(m["image_size"]) if m.get("image_size") else None,
        )

    def dataset_view(
        self, *, random_flip: bool = True, indices: Sequence[int] | None = None, random_variant: bool = True
    ) -> LatentDataset:
        return LatentDataset(self, random_flip=random_flip, indices=indices, random_variant=random_variant)


class LatentDataset(Dataset):
    """Normalised latents read (memory-mapped) from a complete cache.

    Items: ``{"latent": (C, h, w), "label": (), "index": ()}`` (+ ``"attributes"``), and with the
    cache's extras ``"semantic"`` (H, W) long and / or ``"mask"`` (1, H, W) float (1 = known) with
    ``"masked_latent"`` (C, h, w) (normalised like the latents).
    With flips cached and ``random_flip=True`` each access picks one of the two views (the
    semantic map and mask are flipped with it). With ``random_variant=True`` each access picks
    one of the cached masks; otherwise item ``i`` uses variant ``i % K`` (fixed validation).
    The key of an access is ``i`` (the choices then come from torch's global RNG) or
    ``(i, draw_key)`` as :class:`~latent_flow.data.samplers.ResumableSampler` yields them (the
    choices are then a function of ``draw_key``: independent of the global RNG, of prefetching and
    of worker processes, so a resumed run makes the same ones).
    """

    def __init__(
        self,
        cache: LatentCache,
        *,
        random_flip: bool = True,
        indices: Sequence[int] | None = None,
        random_variant: bool = True,
    ) -> None:
        self.meta = cache.meta()
        self.random_flip = random_flip and self.meta.num_views > 1
        paths = [cache._shard_paths(s) for s in range(self.meta.num_shards)]
        self._latents = [np.load(p["latents"], mmap_mode="r") for p in paths]
        self._labels = np.concatenate([np.load(p["labels"]) for p in paths])
        self._attributes = (
            np.concatenate([np.load(p["attributes"]) for p in paths]) if self.meta.has_attributes else None
        )
        extras = self.meta.extras or {}
        self._semantic = [np.load(p["semantic"], mmap_mode="r") for p in paths] if extras.get("semantic") else None
        has_masks = "masks" in extras
        self._masks = [np.load(p["masks"], mmap_mode="r") for p in paths] if has_masks else None
        self._masked = [np.load(p["masked_latents"], mmap_mode="r") for p in paths] if has_masks else None
        self.num_variants = int(extras.get("mask_variants", 0))
        self.random_variant = random_variant
        self.indices = np.arange(self.meta.num_items) if indices is None else np.asarray(indices, dtype=np.int64)
        shape = (-1, 1, 1)
        self._mean = torch.tensor(self.meta.mean, dtype=torch.float32).view(shape)
        self._std = torch.tensor(self.meta.std, dtype=torch.float32).view(shape)

    def __len__(self) -> int:
        return len(self.indices)

    def raw_latent(self, index: int, view: int = 0) -> np.ndarray:
        shard, offset = divmod(int(index), self.meta.shard_size)
        return np.asarray(self._latents[shard][offset, view])

    def _choices(self, key: int | None, index: int) -> tuple[int, int]:
        """``(view, mask variant)`` of one access: from ``key`` when given, else from the global RNG."""
        if key is not None:
            key = int(key)
            view = key % self.meta.num_views if self.random_flip else 0
            variant = (key >> 20) % self.num_variants if (self.num_variants and self.random_variant) else None
        else:
            view = int(torch.randint(self.meta.num_views, ())) if self.random_flip else 0
            variant = int(torch.randint(self.num_variants, ())) if (self.num_variants and self.random_variant) else None
        if variant is None and self.num_variants:
            variant = index % self.num_variants
        return view, (variant or 0)

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Tensor]:
        i, key = i if isinstance(i, tuple) else (i, None)
        index = int(self.indices[i])
        view, variant = self._choices(key, index)
        latent = (torch.from_numpy(self.raw_latent(index, view).copy()) - self._mean) / self._std
        item = {
            "latent": latent,
            "label": torch.tensor(self._labels[index], dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self._attributes is not None:
            item["attributes"] = torch.from_numpy(self._attributes[index].copy())
        shard, offset = divmod(index, self.meta.shard_size)
        if self._semantic is not None:
            semantic = np.asarray(self._semantic[shard][offset])
            if view == 1:
                semantic = semantic[:, ::-1]
            item["semantic"] = torch.from_numpy(semantic.astype(np.int64))
        if self._masks is not None:
            width = self.meta.image_size[1]
            mask = np.unpackbits(np.asarray(self._masks[shard][offset, variant]), axis=-1, count=width)
            if view == 1:
                mask = mask[:, ::-1]
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
            masked = torch.from_numpy(np.array(self._masked[shard][offset, variant, view]))
            item["masked_latent"] = (masked - self._mean) / self._std
        return item


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
        print(
            f"[rank {rank}/{world_size}] encoded shards {list(range(rank, cache.num_shards, world_size))} "
            f"of {cache.num_shards}",
            flush=True,
        )
    count = lambda: len(cache.shards_done())  # noqa: E731
    if rank == 0:
        wait_until(
            lambda: cache.is_complete() or count() == cache.num_shards,
            lambda: (
                f"rank 0 waited {timeout:.0f}s without progress for the shards of the other ranks in "
                f"{cache.root}: missing shards {sorted(set(range(cache.num_shards)) - set(cache.shards_done()))} "
                f"(did every rank start? is the cache directory shared by all nodes?)"
            ),
            timeout=timeout,
            poll=poll,
            progress=count,
        )
        if not cache.is_complete():
            cache.write_meta()
    else:
        wait_until(
            cache.is_complete,
            lambda: (
                f"rank {rank} waited {timeout:.0f}s without progress for rank 0 to write {cache.meta_path} "
                f"({count()}/{cache.num_shards} shards present; did rank 0 fail? is the cache directory shared?)"
            ),
            timeout=timeout,
            poll=poll,
            progress=count,
        )
    return cache.root
