"""Pretrained autoencoders: diffusers KL / tiny VAEs by local path, offline failures, TAESD-family files.

The real TAEF2 weights are found through ``LATENT_FLOW_TAEF2_DIR`` (tests using them skip when it
is unset); everything else uses tiny randomly initialised models written to ``tmp_path``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from latent_flow.autoencoders import autoencoder_names, load_autoencoder
from latent_flow.autoencoders.diffusers_kl import DiffusersKLAutoencoder, PretrainedWeightsNotFoundError
from latent_flow.autoencoders.taesd import DiffusersTinyAutoencoder, TinyAutoencoder
from latent_flow.data import ShapesDataset

diffusers = pytest.importorskip("diffusers")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "autoencoder"
TAEF2_ENV = "LATENT_FLOW_TAEF2_DIR"


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), over the whole batch."""
    mse = ((a - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / mse)


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# --------------------------------------------------------------- diffusers AutoencoderKL
def _tiny_kl(seed: int):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()


@pytest.fixture(scope="module")
def kl_dirs(tmp_path_factory):
    """Two random tiny AutoencoderKL saved with save_pretrained (seeds 0 and 1) + a copy of seed 0."""
    root = tmp_path_factory.mktemp("diffusers_kl")
    dirs = {}
    for name, seed in (("a", 0), ("b", 1), ("a_copy", 0)):
        _tiny_kl(seed).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def test_diffusers_kl_loads_local_dir_and_matches_diffusers(kl_dirs):
    ref = diffusers.AutoencoderKL.from_pretrained(kl_dirs["a"]).eval()
    ae = load_autoencoder({"name": "diffusers_kl", "pretrained": str(kl_dirs["a"])})
    assert isinstance(ae, DiffusersKLAutoencoder)
    assert ae.latent_channels == 4 and ae.downsample_factor == 2  # two blocks -> one downsampling
    assert ae.latent_shape(32) == (4, 16, 16)
    assert not ae.training and not ae.vae.training
    assert all(not p.requires_grad for p in ae.parameters())
    ae.train()
    assert not ae.vae.training  # frozen autoencoders stay in eval mode

    x = _images()
    with torch.no_grad():
        mean = ref.encode(x).latent_dist.mean
        raw = ae.encode_raw(x)
        assert raw.shape == (2, 4, 16, 16)
        # no scale given: the model config's (diffusers default 0.18215), no shift
        assert ae.scale == pytest.approx(ref.config.scaling_factor) and ae.shift == 0.0
        torch.testing.assert_close(raw, mean * ref.config.scaling_factor, rtol=1e-5, atol=1e-6)
        expected = ref.decode(mean).sample.clamp(-1, 1)
        torch.testing.assert_close(ae.decode_raw(raw), expected, rtol=1e-4, atol=1e-5)
        # normalised path: decode(encode(x)) is the diffusers reconstruction from the posterior mean
        ae.set_latent_stats(raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)))
        torch.testing.assert_close(ae.decode(ae.encode(x)), expected, rtol=1e-4, atol=1e-5)


def test_diffusers_kl_scale_and_shift_applied_exactly(kl_dirs):
    ref = diffusers.AutoencoderKL.from_pretrained(kl_dirs["a"]).eval()
    ae = load_autoencoder(
        {"name": "diffusers_kl", "pretrained": str(kl_dirs["a"]), "scaling_factor": 0.3611, "shift_factor": 0.1159}
    )
    x = _images(seed=3)
    with torch.no_grad():
        mean = ref.encode(x).latent_dist.mean
        raw = ae.encode_raw(x)
        torch.testing.assert_close(raw, (mean - 0.1159) * 0.3611, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            ae.decode_raw(raw), ref.decode(raw / 0.3611 + 0.1159).sample.clamp(-1, 1), rtol=1e-4, atol=1e-5
        )
    assert ae.config()["scaling_factor"] == 0.3611 and ae.config()["shift_factor"] == 0.1159


def test_diffusers_kl_fingerprint_follows_weights_not_path(kl_dirs):
    fa = load_autoencoder({"name": "diffusers_kl", "pretrained": str(kl_dirs["a"])}).fingerprint()
    fb = load_autoencoder({"name": "diffusers_kl", "pretrained": str(kl_dirs["b"])}).fingerprint()
    fa_copy = load_autoencoder({"name": "diffusers_kl", "pretrained": str(kl_dirs["a_copy"])}).fingerprint()
    fa_scaled = load_autoencoder(
        {"name": "diffusers_kl", "pretrained": str(kl_dirs["a"]), "scaling_factor": 0.5}
    ).fingerprint()
    assert fa != fb  # other weights
    assert fa == fa_copy  # same weights in another folder: the latent cache stays valid
    assert fa != fa_scaled  # other raw latent space


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "latent-flow-tests/no-such-vae"  # never in any cache
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        load_autoencoder({"name": "diffusers_kl", "pretrained": repo})
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"offline failure took {elapsed:.1f}s"  # measured ~1 s (first diffusers load), then ~0.01 s
    msg = str(info.value)
    assert f"huggingface-cli download {repo}" in msg and "--local-dir" in msg
    assert "autoencoder.pretrained=" in msg


def test_hub_id_local_files_only_and_missing_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsNotFoundError, match="autoencoder.pretrained=") as info:
        load_autoencoder(
            {
                "name": "diffusers_kl",
                "pretrained": "latent-flow-tests/no-such-flux",
                "subfolder": "vae",
                "local_files_only": True,
            }
        )
    assert time.monotonic() - start < 5.0
    assert "--include 'vae/*'" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_autoencoder({"name": "diffusers_kl", "pretrained": str(tmp_path / "missing")})
    with pytest.raises(PretrainedWeightsNotFoundError, match="download latent-flow-tests/no-such-taesd"):
        load_autoencoder(
            {"name": "diffusers_tiny", "pretrained": "latent-flow-tests/no-such-taesd", "local_files_only": True}
        )


# ------------------------------------------------------------------ TAESD family (own)
def _save_pth(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({k: v.to(torch.float16) for k, v in state.items()}, path)  # like the original files
    return path


def test_plain_taesd_roundtrip_through_registry(tmp_path):
    torch.manual_seed(0)
    fresh = TinyAutoencoder(None, None, latent_channels=4)
    enc, dec = fresh.export_state_dicts()
    assert "1.conv.4.weight" in enc and "2.bias" not in enc and "0.weight" not in dec  # layout of the .pth files
    enc_path = _save_pth(enc, tmp_path / "taesd_encoder.pth")
    dec_path = _save_pth(dec, tmp_path / "taesd_decoder.pth")
    ae = load_autoencoder(
        {"name": "taesd", "encoder_path": str(enc_path), "decoder_path": str(dec_path), "latent_channels": 4}
    )
    assert isinstance(ae, TinyAutoencoder) and not ae.training
    assert all(not p.requires_grad for p in ae.parameters())
    enc2, dec2 = ae.export_state_dicts()
    for ref, got in ((enc, enc2), (dec, dec2)):
        assert ref.keys() == got.keys()
        for k in ref:
            assert got[k].dtype == torch.float32
            torch.testing.assert_close(got[k], ref[k].to(torch.float16).to(torch.float32))
    x = _images(2, 32)
    z = ae.encode(x)
    assert z.shape == (2, 4, 4, 4) and ae.latent_shape(32) == (4, 4, 4)
    y = ae.decode(z)
    assert y.shape == (2, 3, 32, 32) and y.min() >= -1 and y.max() <= 1
    # fingerprint: weights, not paths
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in (enc_path, dec_path):
        (moved / p.name).write_bytes(p.read_bytes())
    same = TinyAutoencoder(moved / enc_path.name, moved / dec_path.name, 4)
    assert same.fingerprint() == ae.fingerprint()
    assert TinyAutoencoder(None, None, 4).fingerprint() != ae.fingerprint()


def test_taesd_clear_errors(tmp_path):
    torch.manual_seed(0)
    enc16, dec16 = TinyAutoencoder(None, None, latent_channels=16).export_state_dicts()
    enc_path = _save_pth(enc16, tmp_path / "taef1_encoder.pth")
    dec_path = _save_pth(dec16, tmp_path / "taef1_decoder.pth")
    with pytest.raises(ValueError) as info:
        TinyAutoencoder(enc_path, dec_path, latent_channels=4)
    msg = str(info.value)
    assert "taef1_encoder.pth" in msg and "'14.weight'" in msg
    assert "(4, 64, 3, 3)" in msg and "(16, 64, 3, 3)" in msg
    with pytest.raises(FileNotFoundError) as info:
        TinyAutoencoder(tmp_path / "nope_encoder.pth", dec_path, latent_channels=16)
    assert "nope_encoder.pth" in str(info.value) and "madebyollin/taesd" in str(info.value)
    with pytest.raises(ValueError, match="variant"):
        TinyAutoencoder(None, None, 4, variant="xl")  # type: ignore[arg-type]


# ------------------------------------------------------------- diffusers AutoencoderTiny
def _to_ours(diffusers_state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """diffusers AutoencoderTiny keys -> the original .pth layout (the decoder's Clamp is index 0 there)."""
    enc, dec = {}, {}
    for key, value in diffusers_state.items():
        part, _, rest = key.split(".", 2)
        index, _, tail = rest.partition(".")
        if part == "encoder":
            enc[f"{index}.{tail}"] = value
        else:
            dec[f"{int(index) + 1}.{tail}"] = value
    return enc, dec


def test_diffusers_tiny_by_path_and_same_maths_as_ours(tmp_path):
    torch.manual_seed(0)
    model = diffusers.AutoencoderTiny(latent_channels=4).eval()  # plain TAESD layout, random weights
    # fp16-representable weights, like the original .pth files, so both loaders see identical values
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    model.save_pretrained(tmp_path / "tiny")
    ae = load_autoencoder({"name": "diffusers_tiny", "pretrained": str(tmp_path / "tiny")})
    assert isinstance(ae, DiffusersTinyAutoencoder) and not ae.training
    assert all(not p.requires_grad for p in ae.parameters())
    assert ae.latent_channels == 4 and ae.downsample_factor == 8
    x = _images(1, 16, seed=5)
    with torch.no_grad():
        raw = ae.encode_raw(x)
        torch.testing.assert_close(raw, model.encode(x).latents)
        assert raw.shape == (1, 4, 2, 2)
        y = ae.decode_raw(raw)
        torch.testing.assert_close(y, model.decode(raw).sample.clamp(-1, 1))
        # our own implementation with the same weights computes the same latents / images
        enc, dec = _to_ours(model.state_dict())
        ours = TinyAutoencoder(_save_pth(enc, tmp_path / "e.pth"), _save_pth(dec, tmp_path / "d.pth"), 4)
        torch.testing.assert_close(ours.encode_raw(x), raw, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.decode_raw(raw), y, rtol=1e-4, atol=1e-4)
    assert ours.fingerprint() != ae.fingerprint()  # different classes, even with the same weights


# ------------------------------------------------------------------- real TAEF2 weights
@pytest.fixture(scope="module")
def taef2():
    root = os.environ.get(TAEF2_ENV)
    if not root:
        pytest.skip(f"{TAEF2_ENV} is not set (folder with taef2_encoder.pth / taef2_decoder.pth)")
    root_path = Path(root)
    return load_autoencoder(
        {
            "name": "taesd",
            "encoder_path": str(root_path / "taef2_encoder.pth"),
            "decoder_path": str(root_path / "taef2_decoder.pth"),
            "latent_channels": 32,
            "variant": "gn",
        }
    )


def _shapes_batch(n: int, resolution: int) -> torch.Tensor:
    data = ShapesDataset(num_samples=n, resolution=resolution)
    return torch.stack([data[i]["image"] for i in range(n)])


#: measured: 33.1 dB over 8 shapes images at 128 px (30.2 dB at 64 px), CPU float32
TAEF2_SHAPES_PSNR_MIN = 30.0


def test_taef2_reconstructs_shapes(taef2):
    assert taef2.latent_channels == 32 and taef2.downsample_factor == 8
    x = _shapes_batch(8, 128)
    with torch.no_grad():
        raw = taef2.encode_raw(x)
        assert raw.shape == (8, 32, 16, 16)
        assert 0.4 < raw.std().item() < 1.2 and abs(raw.mean().item()) < 0.2  # README: std ~0.75, mean ~0
        y = taef2.decode_raw(raw)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert _psnr(y, x) > TAEF2_SHAPES_PSNR_MIN


def test_taef2_smooth_natural_like_image(taef2):
    # smooth colour gradients + a soft disc + low-frequency texture, 64x64
    h = torch.linspace(0, 1, 64)
    yy, xx = torch.meshgrid(h, h, indexing="ij")
    disc = torch.sigmoid((0.3 - ((xx - 0.6) ** 2 + (yy - 0.4) ** 2).sqrt()) * 40)
    texture = 0.1 * torch.sin(12 * xx + 3 * yy) * torch.cos(9 * yy)
    img = torch.stack([0.2 + 0.6 * xx + 0.3 * disc, 0.3 + 0.4 * yy - 0.2 * disc, 0.5 + texture + 0.2 * disc])
    x = (img.clamp(0, 1) * 2 - 1).unsqueeze(0)
    with torch.no_grad():
        y = taef2.reconstruct(x)
    assert _psnr(y, x) > 30.0  # measured 33.5 dB


def test_taef2_wrong_variant_is_named(taef2):
    root = Path(os.environ[TAEF2_ENV])
    with pytest.raises(ValueError, match="variant='gn'"):
        TinyAutoencoder(root / "taef2_encoder.pth", root / "taef2_decoder.pth", 32, variant="plain")


def test_latent_cache_normalises_taef2_latents(tmp_path, taef2):
    from latent_flow.data.latent_cache import LatentCache

    cache = LatentCache(tmp_path, ShapesDataset(num_samples=16, resolution=64), taef2, batch_size=16)
    cache.build(progress=False)
    meta = cache.meta()
    assert meta.latent_shape == (32, 8, 8) or tuple(meta.latent_shape) == (32, 8, 8)
    view = cache.dataset_view(random_flip=False)
    latents = torch.stack([view[i]["latent"] for i in range(len(view))])
    mean = latents.mean(dim=(0, 2, 3))
    std = latents.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(32), atol=1e-3, rtol=0)
    torch.testing.assert_close(std, torch.ones(32), atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------ configs
NEW_CONFIGS = {
    "sd_vae_ft_ema": ("diffusers_kl", DiffusersKLAutoencoder),
    "sd_vae_ft_mse": ("diffusers_kl", DiffusersKLAutoencoder),
    "sdxl_vae": ("diffusers_kl", DiffusersKLAutoencoder),
    "flux_vae": ("diffusers_kl", DiffusersKLAutoencoder),
    "taesd": ("taesd", TinyAutoencoder),
    "taef1": ("taesd", TinyAutoencoder),
    "taef2": ("taesd", TinyAutoencoder),
}


@pytest.mark.parametrize("config_name", sorted(NEW_CONFIGS))
def test_configs_resolve_to_registered_options(config_name, monkeypatch):
    import inspect

    monkeypatch.setenv(TAEF2_ENV, "/weights/taef2")
    raw = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": "/data"}, "autoencoder": raw})
    ae_cfg = OmegaConf.to_container(cfg.autoencoder, resolve=True)
    name, cls = NEW_CONFIGS[config_name]
    assert ae_cfg["name"] == name and name in autoencoder_names()
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(ae_cfg) - {"name"} <= allowed
    if config_name == "taef2":
        assert ae_cfg["encoder_path"] == "/weights/taef2/taef2_encoder.pth" and ae_cfg["variant"] == "gn"
    if config_name == "flux_vae":
        assert (ae_cfg["subfolder"], ae_cfg["scaling_factor"], ae_cfg["shift_factor"]) == ("vae", 0.3611, 0.1159)
