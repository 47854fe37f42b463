"""LightningDataModules: images (autoencoder training) and cached latents (flow training)."""

from __future__ import annotations

import logging
import os

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from latent_flow.autoencoders.base import Autoencoder
from latent_flow.data.latent_cache import LatentCache, LatentDataset

__all__ = ["ImageDataModule", "LatentDataModule", "split_indices"]

log = logging.getLogger(__name__)


def split_indices(num_items: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic train/validation split of ``range(num_items)``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(num_items)
    num_val = int(round(num_items * val_fraction))
    if val_fraction > 0 and num_val == 0:
        num_val = 1
    return np.sort(perm[num_val:]), np.sort(perm[:num_val])


def _loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class ImageDataModule(L.LightningDataModule):
    """Images straight from a dataset (used to train the autoencoder)."""

    def __init__(
        self, dataset: Dataset, *, batch_size: int = 64, num_workers: int = 0, val_fraction: float = 0.02, seed: int = 0
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_idx, self.val_idx = split_indices(len(dataset), val_fraction, seed)

    def train_dataloader(self) -> DataLoader:
        return _loader(Subset(self.dataset, self.train_idx), self.batch_size, self.num_workers, True, True)

    def val_dataloader(self) -> DataLoader:
        return _loader(Subset(self.dataset, self.val_idx), self.batch_size, self.num_workers, False, False)


class LatentDataModule(L.LightningDataModule):
    """Cached latents of ``dataset`` under ``autoencoder``: the encoder never runs during training.

    ``prepare_data`` builds the cache when it is missing (resuming a partial one);
    ``setup`` memory-maps it. ``latent_shape``, ``latent_stats`` and ``num_classes``
    are available after ``setup``. ``cache_extras`` (from
    :func:`latent_flow.conditioning.cache_extras` of the condition config) adds what spatial
    conditions need to the cache: semantic maps and / or masks with masked-image latents.
    """

    def __init__(
        self,
        dataset: Dataset,
        autoencoder: Autoencoder,
        *,
        cache_dir: str | os.PathLike,
        name: str | None = None,
        flip: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.02,
        seed: int = 0,
        shard_size: int = 8192,
        encode_batch_size: int = 256,
        cache_extras: dict | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.autoencoder = autoencoder
        self.cache = LatentCache(
            cache_dir,
            dataset,
            autoencoder,
            flip=flip,
            name=name,
            shard_size=shard_size,
            batch_size=encode_batch_size,
            num_workers=num_workers,
            extras=cache_extras,
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_set: LatentDataset | None = None
        self.val_set: LatentDataset | None = None

    @property
    def num_classes(self) -> int:
        return int(getattr(self.dataset, "num_classes", 0))

    def prepare_data(self) -> None:
        """Build the latent cache when missing, split over the ranks the launcher declares.

        Under torchrun / srun every rank calls this before the Trainer exists: each rank encodes
        its shards and waits for the complete cache (see ``latent_flow.encode.build_cache_distributed``).
        Without a world size in the environment (a single process, or rank 0 of Lightning's own
        ``strategy=ddp`` launcher before ``trainer.fit``) the whole cache is built here.
        """
        if self.cache.is_complete():
            return
        from latent_flow.encode import build_cache_distributed, distributed_rank

        rank, world_size = distributed_rank()
        log.info("building the latent cache %s (rank %d of %d)", self.cache.root, rank, world_size)
        build_cache_distributed(self.cache, rank, world_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        meta = self.cache.meta()
        train_idx, val_idx = split_indices(meta.num_items, self.val_fraction, self.seed)
        self.train_set = self.cache.dataset_view(random_flip=True, indices=train_idx)
        self.val_set = self.cache.dataset_view(random_flip=False, indices=val_idx, random_variant=False)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.cache.meta().latent_shape)

    @property
    def latent_stats(self) -> dict[str, list[float]]:
        meta = self.cache.meta()
        return {"mean": list(meta.mean), "std": list(meta.std)}

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return _loader(self.train_set, self.batch_size, self.num_workers, True, True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("fit")
        return _loader(self.val_set, self.batch_size, self.num_workers, False, False)
