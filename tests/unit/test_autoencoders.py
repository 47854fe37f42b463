"""Unit tests for latent_flow.autoencoders (CPU, a few seconds each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latent_flow.autoencoders import (
    Autoencoder,
    IdentityAutoencoder,
    KLAutoencoder,
    build_autoencoder,
    load_autoencoder,
    load_kl_autoencoder,
    measure_latent_stats,
    save_autoencoder,
)
from latent_flow.training.autoencoder import AutoencoderModule


def synthetic_images(n: int, res: int = 32, seed: int = 0) -> torch.Tensor:
    """Coloured rectangles / discs on gradient backgrounds, (n, 3, res, res) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / (res - 1)
    out = np.empty((n, 3, res, res), np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
        img = c0[:, None, None] * (1 - xx) + c1[:, None, None] * xx
        for _ in range(rng.integers(1, 3)):
            col = rng.uniform(-1, 1, 3)[:, None, None]
            cx, cy, s = *rng.uniform(0.2, 0.8, 2), rng.uniform(0.1, 0.25)
            if rng.random() < 0.5:
                mask = (np.abs(xx - cx) < s) & (np.abs(yy - cy) < s)
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < s**2
            img = np.where(mask[None], col, img)
        out[i] = img
    return torch.from_numpy(out)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_kl(**overrides) -> KLAutoencoder:
    opts = dict(latent_channels=4, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1)
    opts.update(overrides)
    return KLAutoencoder(**opts)


# ---------------------------------------------------------------- identity
@pytest.mark.parametrize("factor", [1, 2])
def test_identity_round_trip_exact(factor: int) -> None:
    ae = IdentityAutoencoder(space_to_depth=factor)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    raw = ae.encode_raw(images)
    assert raw.shape == (3, 3 * factor**2, 16 // factor, 16 // factor)
    assert ae.latent_channels == 3 * factor**2 and ae.downsample_factor == factor
    assert ae.latent_shape(16) == tuple(raw.shape[1:])
    assert torch.equal(ae.decode(ae.encode(images)), images)
    assert torch.equal(ae.decode_raw(raw), images)
    assert len(list(ae.parameters())) == 0


def test_identity_fingerprint_stable_and_depends_on_factor() -> None:
    fp1 = IdentityAutoencoder(1).fingerprint()
    assert fp1 == IdentityAutoencoder(1).fingerprint()
    assert fp1 != IdentityAutoencoder(2).fingerprint()
    assert len(fp1) == 40


def test_identity_rejects_bad_factor() -> None:
    with pytest.raises(ValueError, match="space_to_depth"):
        IdentityAutoencoder(0)


# ---------------------------------------------------------------------- KL
@pytest.mark.parametrize(("mult", "factor"), [((1, 2, 2), 4), ((1, 2), 2), ((1,), 1)])
def test_kl_shapes_and_factor(mult: tuple[int, ...], factor: int) -> None:
    ae = small_kl(channel_mult=mult)
    assert ae.downsample_factor == factor
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean, logvar = ae.encode_distribution(images)
    assert mean.shape == logvar.shape == (2, 4, 16 // factor, 16 // factor)
    assert float(logvar.min()) >= -30 and float(logvar.max()) <= 20
    assert torch.equal(ae.encode_raw(images), mean)
    out = ae.decode(ae.encode(images))
    assert out.shape == images.shape
    assert float(out.abs().max()) <= 1.0
    assert ae.latent_shape((16, 32)) == (4, 16 // factor, 32 // factor)


def test_kl_default_quick_start_geometry() -> None:
    ae = KLAutoencoder()
    assert ae.downsample_factor == 4 and ae.latent_channels == 4
    assert ae.latent_shape(32) == (4, 8, 8)


def test_decode_raw_clamps_but_unclamped_does_not() -> None:
    ae = small_kl()
    with torch.no_grad():
        ae.decoder[-1].bias.fill_(5.0)
    z = torch.zeros(1, 4, 4, 4)
    assert float(ae.decode_unclamped(z).min()) > 1.0
    assert torch.all(ae.decode_raw(z) == 1.0)


# ----------------------------------------------------- latent statistics
def test_normalisation_from_measured_stats() -> None:
    ae = small_kl().freeze()
    images = synthetic_images(32, res=16)
    raw = ae.encode_raw(images)
    mean, std = measure_latent_stats(raw)
    assert mean.shape == std.shape == (4,)
    assert not ae.has_latent_stats
    ae.set_latent_stats(mean, std)
    assert ae.has_latent_stats
    z = ae.encode(images)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)
    # decode undoes the normalisation
    assert torch.allclose(ae.decode(z), ae.decode_raw(raw), atol=1e-5)


def test_measure_latent_stats_streaming_matches_one_shot_with_offset() -> None:
    x = torch.randn(40, 3, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 0.01, 3.0]).view(1, 3, 1, 1)
    x = (x + torch.tensor([1000.0, -50.0, 0.0]).view(1, 3, 1, 1)).float()
    ref = x.double().transpose(0, 1).reshape(3, -1)
    mean_s, std_s = measure_latent_stats(iter(x.split(7)))
    mean_1, std_1 = measure_latent_stats(x)
    assert torch.allclose(mean_s, ref.mean(1).float(), rtol=1e-6)
    assert torch.allclose(std_s, ref.std(1, unbiased=False).float(), rtol=1e-4)
    assert torch.allclose(mean_s, mean_1) and torch.allclose(std_s, std_1, rtol=1e-5)
    with pytest.raises(ValueError, match="no latents"):
        measure_latent_stats([])


def test_set_latent_stats_validation() -> None:
    ae = IdentityAutoencoder()
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        ae.set_latent_stats(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="std must be > 0"):
        ae.set_latent_stats(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        ae.set_latent_stats(torch.tensor([0.0, float("nan"), 0.0]), torch.ones(3))
    assert not ae.has_latent_stats
    ae.set_latent_stats(torch.zeros(3), torch.full((3,), 0.5))
    assert ae.has_latent_stats
    assert "latent_mean" in ae.state_dict() and "latent_std" in ae.state_dict()


# ------------------------------------------------------------------ frozen
def test_frozen_params_and_eval_mode_survive_train() -> None:
    ae = small_kl().freeze()
    assert ae.is_frozen
    assert all(not p.requires_grad for p in ae.parameters())
    holder = nn.ModuleDict({"ae": ae, "head": nn.Linear(2, 2)})
    holder.train()  # what Lightning does around fitting
    assert holder["head"].training
    assert not any(m.training for m in ae.modules())
    ae.train(True)
    assert not any(m.training for m in ae.modules())
    ae.unfreeze().train()
    assert ae.training and all(p.requires_grad for p in ae.parameters())


def test_frozen_forward_creates_no_param_grads() -> None:
    ae = small_kl().freeze()
    images = torch.rand(2, 3, 16, 16, requires_grad=True) * 2 - 1
    assert not ae.encode(images).requires_grad  # encode runs under no_grad
    latents = torch.randn(2, 4, 4, 4, requires_grad=True)
    assert not ae.decode(latents).requires_grad
    out = ae.decode_with_grad(latents)
    out.square().mean().backward()
    assert latents.grad is not None and float(latents.grad.abs().sum()) > 0
    assert all(p.grad is None for p in ae.parameters())


# ------------------------------------------------------------- fingerprint
def test_fingerprint_tracks_weights_not_stats() -> None:
    ae = small_kl()
    fp = ae.fingerprint()
    assert fp == ae.fingerprint()
    twin = small_kl()
    twin.load_state_dict(ae.state_dict())
    assert twin.fingerprint() == fp
    ae.set_latent_stats(torch.ones(4), torch.full((4,), 2.0))
    assert ae.fingerprint() == fp  # stats are measured from the latents this keys
    with torch.no_grad():
        next(ae.parameters()).view(-1)[0] += 1e-3
    assert ae.fingerprint() != fp
    assert small_kl(latent_channels=8).fingerprint() != fp


# ------------------------------------------------------------ checkpoints
def test_save_load_round_trip(tmp_path) -> None:
    ae = small_kl()
    images = synthetic_images(4, res=16)
    ae.set_latent_stats(torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([1.0, 2.0, 0.5, 1.5]))
    path = save_autoencoder(ae, tmp_path / "sub" / "ae.pt")
    payload = torch.load(path, weights_only=True)
    assert {"class", "config", "state_dict", "format_version"} <= set(payload)

    loaded = load_kl_autoencoder(path)
    assert loaded.config() == ae.config() and loaded.has_latent_stats
    assert loaded.fingerprint() == ae.fingerprint()
    ae.eval()
    assert torch.equal(loaded.encode(images), ae.encode(images))
    z = ae.encode(images)
    assert torch.equal(loaded.decode(z), ae.decode(z))

    frozen = load_autoencoder("kl", ckpt_path=path)
    assert frozen.is_frozen and not frozen.training
    same = load_autoencoder({"name": "kl", "ckpt_path": str(path), "channel_mult": [1, 2, 2]})
    assert torch.equal(same.encode(images), ae.encode(images))


def test_load_from_omegaconf_config(tmp_path) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    path = save_autoencoder(small_kl(), tmp_path / "ae.pt")
    cfg = omegaconf.OmegaConf.create({"name": "kl", "ckpt_path": str(path), "channel_mult": [1, 2, 2]})
    assert load_autoencoder(cfg).is_frozen
    ident = build_autoencoder(omegaconf.OmegaConf.create({"name": "identity", "space_to_depth": 2}))
    assert ident.latent_channels == 12


def test_config_mismatch_and_wrong_class(tmp_path) -> None:
    path = save_autoencoder(small_kl(), tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"latent_channels: requested 8 but checkpoint has 4"):
        load_autoencoder("kl", ckpt_path=path, latent_channels=8)
    with pytest.raises(ValueError, match="unknown option"):
        load_kl_autoencoder(path, latent_chanels=4)
    other = save_autoencoder(IdentityAutoencoder(2), tmp_path / "id.pt")
    with pytest.raises(ValueError, match="holds a IdentityAutoencoder, not a KLAutoencoder"):
        load_kl_autoencoder(other)


def test_missing_checkpoint_message(tmp_path) -> None:
    missing = tmp_path / "nope" / "ae.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_autoencoder("kl", ckpt_path=missing)
    assert str(missing) in str(info.value)
    assert "python -m latent_flow.train_autoencoder" in str(info.value)


def test_build_and_load_dispatch() -> None:
    assert isinstance(build_autoencoder({"name": "identity", "space_to_depth": 2}), IdentityAutoencoder)
    kl = build_autoencoder({"name": "kl", "base_channels": 8})
    assert isinstance(kl, KLAutoencoder) and isinstance(kl, Autoencoder) and not kl.is_frozen
    assert load_autoencoder("identity").is_frozen
    with pytest.raises(ValueError, match="unknown autoencoder 'vq'"):
        build_autoencoder({"name": "vq"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['base_channel'\]"):
        build_autoencoder({"name": "kl", "base_channel": 8})
    with pytest.raises(ValueError, match="needs trained weights"):
        load_autoencoder("kl")
    assert load_autoencoder("kl", allow_random_weights=True, base_channels=8).is_frozen


# ------------------------------------------------------------ input checks
def test_wrong_inputs_have_clear_messages() -> None:
    ae = small_kl()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*got shape \(2, 1, 32, 32\)"):
        ae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"30x30.*downsample factor 4"):
        ae.encode(torch.zeros(2, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\).*got shape \(2, 3, 8, 8\)"):
        ae.decode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="downsample factor 4"):
        ae.latent_shape(18)


# ------------------------------------------------------- AutoencoderModule
def test_autoencoder_module_loss_decreases() -> None:
    module = AutoencoderModule(base_channels=8, channel_mult=(1, 2, 2), lr=2e-3)
    opt = module.configure_optimizers()
    images = synthetic_images(16, res=16)
    losses = []
    for _ in range(30):
        out = module.compute_losses(images)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert set(out) >= {"rec", "kl", "loss"}
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_autoencoder_module_fit_logs_and_exports(tmp_path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    images = synthetic_images(16, res=16)
    items = [{"image": img, "label": torch.tensor(0), "index": torch.tensor(i)} for i, img in enumerate(images)]
    loader = DataLoader(items, batch_size=8)
    export = tmp_path / "kl.pt"
    module = AutoencoderModule(base_channels=8, export_path=export)
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader, loader)
    for key in ("train/rec", "train/kl", "train/loss", "val/psnr"):
        assert key in trainer.callback_metrics, key
    assert export.is_file()
    ae = load_autoencoder("kl", ckpt_path=export)
    assert ae.config() == module.autoencoder.config()
    assert torch.equal(ae.encode(images), module.autoencoder.eval().encode(images))
