"""LightningDataModules: images (autoencoder training) and cached latents (flow training)."""

from __future__ import annotations

import logging
import os
import warnings

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from latent_flow.autoencoders.base import Autoencoder
from latent_flow.data.latent_cache import LatentCache, LatentDataset, build_cache_distributed
from latent_flow.data.samplers import ResumableSampler
from latent_flow.utils.distributed import distributed_rank

__all__ = ["ImageDataModule", "LatentDataModule", "report_split", "split_indices"]

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


def report_split(num_train: int, num_val: int, val_fraction: float, batch_size: int) -> None:
    """Log the split's sizes; warn when there is no validation set (nothing logged as ``val/*``, so a
    checkpoint or early stop monitoring ``val/loss`` has nothing to watch) or fewer training items than
    one batch (each step then sees the whole training set)."""
    log.info("data: %d training / %d validation items (val_fraction=%s)", num_train, num_val, val_fraction)
    if num_val == 0:
        log.warning(
            "data: no validation set (val_fraction=%s of %d items): val/loss is not logged; set "
            "data.val_fraction > 0 to hold some items out",
            val_fraction,
            num_train,
        )
    if num_train < batch_size:
        log.warning(
            "data: %d training item(s), fewer than one batch of %d: every step sees the whole training set",
            num_train,
            batch_size,
        )


def _loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    drop_last: bool,
    *,
    sampler=None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        drop_last=drop_last and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=generator,
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
        report_split(len(self.train_idx), len(self.val_idx), val_fraction, batch_size)

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

    Resumable data order: the training loader draws with a
    :class:`~latent_flow.data.samplers.ResumableSampler` (a permutation per ``(seed, epoch)``, split
    over the DDP ranks, per-item flips / mask variants keyed by the position). :meth:`state_dict`
    (written into every checkpoint by Lightning) records the epoch and how many items of it were
    trained on (the trainer's finished batches x batch size x world size); :meth:`load_state_dict`
    makes the first epoch after a resume start there. Neither loader draws from torch's global
    RNG (their worker seeds come from their own generators), so the training noise does not depend
    on when loaders are created.
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
        self.train_sampler: ResumableSampler | None = None
        self._sampler_state: dict | None = None  # loaded from a checkpoint, applied to the next sampler

    @property
    def num_classes(self) -> int:
        return int(getattr(self.dataset, "num_classes", 0))

    def prepare_data(self) -> None:
        """Build the latent cache when missing, split over the ranks the launcher declares.

        Under torchrun / srun every rank calls this before the Trainer exists: each rank encodes
        its shards and waits for the complete cache (see :func:`latent_flow.data.latent_cache.build_cache_distributed`).
        Without a world size in the environment (a single process, or rank 0 of Lightning's own
        ``strategy=ddp`` launcher before ``trainer.fit``) the whole cache is built here.
        """
        if self.cache.is_complete():
            return
        rank, world_size = distributed_rank()
        log.info("building the latent cache %s (rank %d of %d)", self.cache.root, rank, world_size)
        build_cache_distributed(self.cache, rank, world_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        meta = self.cache.meta()
        train_idx, val_idx = split_indices(meta.num_items, self.val_fraction, self.seed)
        report_split(len(train_idx), len(val_idx), self.val_fraction, self.batch_size)
        self.train_set = self.cache.dataset_view(random_flip=True, indices=train_idx)
        self.val_set = self.cache.dataset_view(random_flip=False, indices=val_idx, random_variant=False)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.cache.meta().latent_shape)

    @property
    def latent_stats(self) -> dict[str, list[float]]:
        meta = self.cache.meta()
        return {"mean": list(meta.mean), "std": list(meta.std)}

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        rank, world = self._world()
        sampler = ResumableSampler(len(self.train_set), seed=self.seed, num_replicas=world, rank=rank)
        if self._sampler_state is not None:
            sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        self.train_sampler = sampler
        gen = torch.Generator().manual_seed(self.seed)  # worker base seeds: not from the global RNG
        return _loader(self.train_set, self.batch_size, self.num_workers, False, True, sampler=sampler, generator=gen)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("fit")
        gen = torch.Generator().manual_seed(self.seed + 1)
        return _loader(self.val_set, self.batch_size, self.num_workers, False, False, generator=gen)

    # ------------------------------------------------------------------ resumable data order
    def state_dict(self) -> dict:
        """``{"train_sampler": {epoch, consumed, ...}}`` at the moment a checkpoint is written (module docstring)."""
        trainer = getattr(self, "trainer", None)
        if self.train_sampler is None or trainer is None:
            return {}
        batches = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # finished in this epoch
        _, world = self._world()
        return {"train_sampler": self.train_sampler.state_dict(consumed=batches * self.batch_size * world)}

    def load_state_dict(self, state_dict: dict) -> None:
        state = state_dict.get("train_sampler")
        if state is None:
            return
        # Lightning warns that a mid-epoch resume of a plain DataLoader repeats data; this one resumes its position
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        if self.train_sampler is not None:
            self.train_sampler.load_state_dict(state)
        else:
            self._sampler_state = dict(state)
