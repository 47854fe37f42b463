"""The latent cache: cached latents equal fresh encodings, keys invalidate, builds resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from latent_flow.autoencoders import IdentityAutoencoder, KLAutoencoder
from latent_flow.data.datamodule import LatentDataModule, split_indices
from latent_flow.data.latent_cache import LatentCache


class TinyImages(Dataset):
    """Random images with labels; ``version`` changes the fingerprint (and the content)."""

    def __init__(self, n: int = 20, resolution: int = 8, version: int = 0) -> None:
        g = torch.Generator().manual_seed(version)
        self.images = torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1
        self.version = version
        self.num_classes = 3

    def fingerprint(self) -> str:
        return f"tiny-{len(self.images)}-{self.images.shape[-1]}-{self.version}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {
            "image": self.images[i],
            "label": torch.tensor(i % 3),
            "index": torch.tensor(i),
            "attributes": torch.tensor([i % 3, i % 2]),
        }


def _kl() -> KLAutoencoder:
    torch.manual_seed(0)
    ae = KLAutoencoder(latent_channels=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    return ae.freeze()


def test_cached_latents_equal_fresh_encodings(tmp_path):
    data, ae = TinyImages(), _kl()
    cache = LatentCache(tmp_path, data, ae, flip=True, shard_size=8, batch_size=6)
    cache.build(progress=False)
    meta = cache.meta()
    assert meta.num_items == 20 and meta.num_views == 2 and meta.num_shards == 3
    ae.set_latent_stats(torch.tensor(meta.mean), torch.tensor(meta.std))
    view = cache.dataset_view(random_flip=False)
    fresh = ae.encode(data.images)
    fresh_flip = ae.encode(torch.flip(data.images, dims=[-1]))
    for i in (0, 7, 8, 19):
        item = view[i]
        torch.testing.assert_close(item["latent"], fresh[i], rtol=1e-5, atol=1e-5)
        raw_flip = torch.from_numpy(view.raw_latent(i, view=1))
        torch.testing.assert_close(
            ae.encode_raw(torch.flip(data.images[i : i + 1], dims=[-1]))[0], raw_flip, rtol=1e-5, atol=1e-5
        )
        assert int(item["label"]) == i % 3 and torch.equal(item["attributes"], torch.tensor([i % 3, i % 2]))
    # normalised over all views: per-channel mean ~0, std ~1
    both = torch.cat([fresh, fresh_flip])
    assert both.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (both.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_key_changes_with_dataset_autoencoder_and_flip(tmp_path):
    ae = _kl()
    base = LatentCache(tmp_path, TinyImages(), ae).key
    assert LatentCache(tmp_path, TinyImages(version=1), ae).key != base
    assert LatentCache(tmp_path, TinyImages(), ae, flip=True).key != base
    other = _kl()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert LatentCache(tmp_path, TinyImages(), other).key != base
    assert LatentCache(tmp_path, TinyImages(), _kl()).key == base


def test_interrupted_build_resumes_without_redoing_shards(tmp_path, monkeypatch):
    data, ae = TinyImages(n=24), IdentityAutoencoder()
    cache = LatentCache(tmp_path, data, ae, shard_size=8, batch_size=8)
    calls = {"n": 0}
    original = cache.encode_batch

    def failing(images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(images)

    monkeypatch.setattr(cache, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        cache.build(progress=False)
    assert cache.shards_done() == [0] and not cache.is_complete()
    with pytest.raises(FileNotFoundError, match="latent_flow.encode"):
        cache.meta()
    calls["n"] = 10  # no more failures; count the batches the resumed build encodes
    cache.build(progress=False)
    assert calls["n"] == 12  # only shards 1 and 2 were encoded again
    assert cache.is_complete()
    meta = json.loads(cache.meta_path.read_text())
    assert meta["num_items"] == 24


def test_datamodule_reads_latents_not_images(tmp_path):
    data, ae = TinyImages(n=40), IdentityAutoencoder(space_to_depth=2)
    dm = LatentDataModule(data, ae, cache_dir=tmp_path, batch_size=8, val_fraction=0.1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.latent_shape == (12, 4, 4) and dm.num_classes == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["latent"].shape == (8, 12, 4, 4)
    assert len(dm.train_set) + len(dm.val_set) == 40
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)

    def boom(*args, **kwargs):
        raise AssertionError("the encoder ran during training")

    ae.encode_raw = boom  # the loaders must only touch the cache
    for batch in dm.train_dataloader():
        assert torch.isfinite(batch["latent"]).all()


def test_split_indices_deterministic_and_validated():
    a = split_indices(100, 0.1, seed=3)
    b = split_indices(100, 0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a[1]) == 10
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.5)
