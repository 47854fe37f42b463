"""The latent cache with spatial-condition extras: semantic maps, masks and masked-image latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_flow.autoencoders import IdentityAutoencoder
from latent_flow.data import ShapesDataset
from latent_flow.data.datamodule import LatentDataModule
from latent_flow.data.latent_cache import LatentCache, cache_key
from latent_flow.data.masks import MaskGenerator

MASKS = {"hole_min": 0.2, "hole_max": 0.4, "seed": 1}


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(num_samples=24, resolution=16, seed=0)


def test_keys_without_extras_are_unchanged():
    # caches of label / none runs keep their directories
    assert cache_key("d", "a", False) == cache_key("d", "a", False, {}) == cache_key("d", "a", False, None)
    keys = {
        cache_key("d", "a", False),
        cache_key("d", "a", False, {"semantic": True}),
        cache_key("d", "a", False, {"masks": MASKS, "mask_variants": 2}),
        cache_key("d", "a", False, {"masks": {**MASKS, "hole_max": 0.5}, "mask_variants": 2}),
        cache_key("d", "a", False, {"masks": MASKS, "mask_variants": 3}),
    }
    assert len(keys) == 5


def test_semantic_maps_are_cached_and_read_back(tmp_path, shapes):
    ae = IdentityAutoencoder(space_to_depth=2)
    cache = LatentCache(tmp_path, shapes, ae, extras={"semantic": True}, shard_size=10)
    cache.build(progress=False)
    assert (cache.root / "shard_00000.semantic.npy").exists()
    assert np.load(cache.root / "shard_00000.semantic.npy").dtype == np.uint8
    meta = json.loads(cache.meta_path.read_text())
    assert meta["extras"] == {"semantic": True} and meta["image_size"] == [16, 16]
    view = cache.dataset_view(random_flip=False)
    for i in (0, 13, 23):
        item = view[i]
        assert item["semantic"].dtype == torch.long and torch.equal(item["semantic"], shapes[i]["semantic"])
        assert item["latent"].shape == (12, 8, 8)


def test_masks_and_masked_latents(tmp_path, shapes):
    ae = IdentityAutoencoder(space_to_depth=1)
    cache = LatentCache(tmp_path, shapes, ae, extras={"masks": MASKS, "mask_variants": 3}, shard_size=10)
    cache.build(progress=False)
    view = cache.dataset_view(random_flip=False, random_variant=False)
    gen = MaskGenerator(16, **MASKS)
    stats = view.meta
    mean = torch.tensor(stats.mean).view(-1, 1, 1)
    std = torch.tensor(stats.std).view(-1, 1, 1)
    for i in (0, 11, 22):
        item = view[i]
        variant = i % 3  # fixed variant without random_variant
        known = torch.from_numpy(gen(i, variant)).float()
        assert item["mask"].shape == (1, 16, 16) and torch.equal(item["mask"][0], known)
        expected = (shapes[i]["image"] * known - mean) / std  # identity AE: latent = image
        torch.testing.assert_close(item["masked_latent"], expected)
    # training picks variants at random: over many accesses all of them appear
    train_view = cache.dataset_view(random_flip=False, random_variant=True)
    seen = {
        int(np.argmax([torch.equal(train_view[5]["mask"][0], torch.from_numpy(gen(5, v)).float()) for v in range(3)]))
        for _ in range(30)
    }
    assert seen == {0, 1, 2}


def test_flipped_views_flip_mask_and_map_too(tmp_path, shapes):
    ae = IdentityAutoencoder(space_to_depth=1)
    cache = LatentCache(tmp_path, shapes, ae, flip=True, extras={"masks": MASKS, "mask_variants": 1, "semantic": True})
    cache.build(progress=False)
    view = cache.dataset_view(random_flip=True, random_variant=False)
    mean = torch.tensor(view.meta.mean).view(-1, 1, 1)
    std = torch.tensor(view.meta.std).view(-1, 1, 1)
    flips = set()
    for _ in range(20):
        item = view[3]
        image = item["latent"] * std + mean
        flipped = not torch.allclose(image, shapes[3]["image"], atol=1e-5)
        flips.add(flipped)
        sem, mask = shapes[3]["semantic"], torch.from_numpy(MaskGenerator(16, **MASKS)(3, 0)).float()
        if flipped:
            sem, mask = sem.flip(-1), mask.flip(-1)
        assert torch.equal(item["semantic"], sem) and torch.equal(item["mask"][0], mask)
        torch.testing.assert_close(item["masked_latent"] * std + mean, image * item["mask"], atol=1e-5, rtol=0)
    assert flips == {True, False}


def test_datamodule_passes_extras_and_fixes_validation_variants(tmp_path, shapes):
    dm = LatentDataModule(
        shapes,
        IdentityAutoencoder(2),
        cache_dir=tmp_path,
        batch_size=4,
        val_fraction=0.25,
        cache_extras={"masks": MASKS, "mask_variants": 2},
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (4, 1, 16, 16) and batch["masked_latent"].shape == (4, 12, 8, 8)
    a = next(iter(dm.val_dataloader()))
    b = next(iter(dm.val_dataloader()))
    assert torch.equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="unknown extras"):
        LatentCache(tmp_path, shapes, IdentityAutoencoder(), extras={"edges": True})
