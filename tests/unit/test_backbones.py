"""Unit tests for the velocity backbones (DiT, UNet) and their shared embeddings.

Time convention: t in [0, 1], t = 0 noise, t = 1 data. Only tiny presets are run; large presets
are built on the meta device (no memory, no compute) to check parameter counts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from latent_flow.backbones import (
    BACKBONE_PRESETS,
    DIT_PRESETS,
    UNET_PRESETS,
    DiT,
    LabelEmbedder,
    UNet,
    build_backbone,
    dit_preset,
    sincos_pos_embed_2d,
    timestep_embedding,
    unet_preset,
)

TINY = ["DiT-XS/2", "DiT-XS/1", "UNet-T"]
NUM_CLASSES = 5
SIZE = 8


def _build(name: str, **kw) -> nn.Module:
    kw.setdefault("input_size", SIZE)
    kw.setdefault("in_channels", 4)
    return build_backbone(name, **kw)


def _perturb(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Add noise to every parameter so that zero-initialised layers produce non-zero outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def _inputs(batch: int = 6, channels: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, SIZE, SIZE, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return x, t, y


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- shapes and init


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("in_ch,out_ch", [(4, 4), (6, 4)])
def test_output_shape(name: str, in_ch: int, out_ch: int) -> None:
    model = _perturb(_build(name, in_channels=in_ch, out_channels=out_ch, num_classes=NUM_CLASSES))
    x, t, y = _inputs(channels=in_ch)
    out = model(x, t, y)
    assert out.shape == (x.shape[0], out_ch, SIZE, SIZE)
    assert torch.isfinite(out).all()
    assert model.in_channels == in_ch and model.out_channels == out_ch
    assert model.input_size == SIZE and model.num_classes == NUM_CLASSES


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("num_classes", [0, NUM_CLASSES])
def test_output_exactly_zero_at_init(name: str, num_classes: int) -> None:
    model = _build(name, in_channels=6, out_channels=4, num_classes=num_classes)
    x, t, y = _inputs(channels=6)
    out = model(x, t, y if num_classes else None)
    assert torch.equal(out, torch.zeros_like(out))


def test_dit_blocks_are_identity_at_init() -> None:
    model = _build("DiT-XS/2", num_classes=NUM_CLASSES)
    tokens = torch.randn(3, model.num_patches, model.hidden_size)
    c = torch.randn(3, model.hidden_size)
    for block in model.blocks:
        assert torch.equal(block(tokens, c), tokens)


def test_dit_pos_embed_is_fixed_buffer() -> None:
    model = _build("DiT-XS/2")
    assert "pos_embed" in dict(model.named_buffers())
    assert all("pos_embed" not in n for n, _ in model.named_parameters())
    assert torch.allclose(model.pos_embed[0], sincos_pos_embed_2d(model.hidden_size, model.grid_size))


@pytest.mark.parametrize("name", ["DiT-XS/1", "DiT-XS/2", "DiT-T/2"])
@pytest.mark.parametrize("channels", [3, 4, 7])
def test_patchify_unpatchify_round_trip(name: str, channels: int) -> None:
    model = _build(name)
    x = torch.randn(2, channels, SIZE, SIZE)
    tokens = model.patchify(x)
    p = model.patch_size
    assert tokens.shape == (2, (SIZE // p) ** 2, p * p * channels)
    assert torch.equal(model.unpatchify(tokens), x)


def test_patchify_matches_patch_embedding_order() -> None:
    """Token i of patchify covers the same pixels as token i of the stride-p patch conv."""
    model = _build("DiT-XS/2")
    x = torch.randn(2, 4, SIZE, SIZE)
    conv_tokens = model.x_embedder(x).flatten(2).transpose(1, 2)
    # The conv weight flattened as (p, p, C) per output unit equals a linear map on patchify tokens.
    w = model.x_embedder.weight.permute(0, 2, 3, 1).reshape(model.hidden_size, -1)
    lin_tokens = model.patchify(x) @ w.T + model.x_embedder.bias
    assert torch.allclose(conv_tokens, lin_tokens, atol=1e-5)


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("name", TINY)
def test_null_label_is_num_classes(name: str) -> None:
    model = _perturb(_build(name, num_classes=NUM_CLASSES)).eval()
    assert model.null_label == NUM_CLASSES
    assert model.y_embedder.embedding_table.num_embeddings == NUM_CLASSES + 1
    x, t, _ = _inputs()
    null = torch.full((x.shape[0],), NUM_CLASSES, dtype=torch.long)
    assert torch.equal(model(x, t, null), model(x, t, None))


@pytest.mark.parametrize("name", TINY)
def test_label_dropout_train_vs_eval(name: str) -> None:
    model = _perturb(_build(name, num_classes=NUM_CLASSES, class_dropout_prob=1.0))
    x, t, y = _inputs()
    model.eval()
    with torch.no_grad():
        uncond = model(x, t, None)
        cond_eval = model(x, t, y)
    assert not torch.allclose(cond_eval, uncond), "labels must matter in eval mode (no dropout)"
    model.train()
    with torch.no_grad():
        cond_train = model(x, t, y)
    assert torch.allclose(cond_train, uncond, atol=1e-6), "p=1 dropout in training must give the null output"


@pytest.mark.parametrize("name", ["DiT-XS/2", "UNet-T"])
def test_label_dropout_is_per_sample(name: str) -> None:
    model = _perturb(_build(name, num_classes=NUM_CLASSES, class_dropout_prob=0.5))
    x, t, y = _inputs(batch=32)
    model.eval()
    with torch.no_grad():
        uncond = model(x, t, None)
        cond = model(x, t, y)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(x, t, y)
    # Each sample is either the conditional or the unconditional prediction, both kinds occur.
    dropped = torch.isclose(out, uncond, atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(out, cond, atol=1e-5).flatten(1).all(1)
    assert torch.all(dropped ^ kept)
    assert dropped.any() and kept.any()


def test_label_embedder_drop_labels() -> None:
    emb = LabelEmbedder(10, 8, dropout_prob=0.3)
    y = torch.arange(10)
    assert torch.equal(emb.drop_labels(y, 0.0), y)
    assert torch.equal(emb.drop_labels(y, 1.0), torch.full_like(y, 10))
    force = torch.tensor([True, False] * 5)
    assert torch.equal(emb.drop_labels(y, 0.0, force_drop=force), torch.where(force, 10, y))
    out = emb(y, 10, "cpu", train=False, force_drop=force)
    assert torch.equal(out[force], emb.embedding_table.weight[10].expand(5, -1))
    assert torch.equal(emb(None, 3, "cpu", train=True), emb.embedding_table.weight[10].expand(3, -1))


@pytest.mark.parametrize("name", TINY)
def test_labels_rejected_when_unconditional(name: str) -> None:
    model = _build(name, num_classes=0)
    x, t, y = _inputs()
    assert model.null_label is None and model.y_embedder is None
    with pytest.raises(ValueError, match="num_classes=0"):
        model(x, t, y)
    model(x, t)  # y=None is fine


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize("name", TINY)
def test_time_is_continuous(name: str) -> None:
    model = _perturb(_build(name, num_classes=NUM_CLASSES)).eval()
    x, _, y = _inputs()
    with torch.no_grad():
        a = model(x, torch.full((x.shape[0],), 0.5), y)
        b = model(x, torch.full((x.shape[0],), 0.5001), y)
        c = model(x, torch.tensor(0.5), y)  # a 0-d time is broadcast over the batch
    assert not torch.allclose(a, b, atol=1e-7, rtol=0.0)
    assert torch.equal(a, c)


def test_timestep_embedding() -> None:
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (3, 16)
    assert torch.allclose(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    # t is scaled by 1000 before the sinusoid: the highest frequency is 1, so sin(1000 t).
    assert torch.isclose(emb[1, 8], torch.sin(torch.tensor(250.0)), atol=1e-4)
    assert timestep_embedding(t, 7).shape == (3, 7)
    with pytest.raises(ValueError):
        timestep_embedding(t[:, None], 8)


def test_sincos_pos_embed_2d() -> None:
    emb = sincos_pos_embed_2d(16, 3)
    assert emb.shape == (9, 16)
    # first half encodes the row, second half the column (row-major token order)
    assert torch.equal(emb[1, :8], emb[2, :8]) and not torch.equal(emb[1, 8:], emb[2, 8:])
    assert torch.equal(emb[1, 8:], emb[4, 8:]) and not torch.equal(emb[1, :8], emb[4, :8])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, 3)


# --------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("name,extra", [("DiT-XS/2", {}), ("UNet-T", {"dropout": 0.1})])
def test_grad_checkpointing_same_gradients(name: str, extra: dict) -> None:
    ref = _perturb(_build(name, num_classes=NUM_CLASSES, **extra)).train()
    ckpt = copy.deepcopy(ref)
    ckpt.grad_checkpointing = True
    x, t, y = _inputs()
    grads = []
    for model in (ref, ckpt):
        torch.manual_seed(123)  # same label / feature dropout draws in both runs
        loss = model(x, t, y).square().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n


# --------------------------------------------------------------------------- presets


# Parameter counts reported by the DiT paper (32x32x4 latents, 1000 classes, 8 output channels,
# frozen position embedding counted). Ours: 4 output channels and the position embedding is a buffer.
_DIT_PAPER_PARAMS = {"DiT-S/2": 33.0e6, "DiT-B/2": 130.5e6, "DiT-L/2": 458.0e6, "DiT-XL/2": 675.1e6}


def test_every_preset_constructs_with_expected_size() -> None:
    counts = {}
    with torch.device("meta"):
        for name in BACKBONE_PRESETS:
            model = build_backbone(name, input_size=32, in_channels=4, num_classes=1000)
            counts[name] = _num_params(model)
            assert isinstance(model, DiT if name.startswith("DiT") else UNet)
    for name, paper in _DIT_PAPER_PARAMS.items():
        assert abs(counts[name] - paper) / paper < 0.005, (name, counts[name])
    # patch size changes only the embedding / output projection
    for size in ("S", "B", "L", "XL"):
        assert abs(counts[f"DiT-{size}/8"] - counts[f"DiT-{size}/2"]) / counts[f"DiT-{size}/2"] < 0.01
    assert 0.2e6 < counts["DiT-XS/2"] < counts["DiT-T/2"] < 5e6 < counts["DiT-S/2"]
    unets = [counts[n] for n in ("UNet-T", "UNet-S", "UNet-B", "UNet-L")]
    assert 0.3e6 < counts["UNet-XS"] < unets[0]
    assert unets == sorted(unets)
    assert 0.3e6 < unets[0] < 3e6 and 100e6 < unets[3] < 600e6


def test_preset_tables_and_dispatch() -> None:
    assert set(BACKBONE_PRESETS) == set(DIT_PRESETS) | set(UNET_PRESETS)
    for size, depth, hidden, heads in [
        ("S", 12, 384, 6),
        ("B", 12, 768, 12),
        ("L", 24, 1024, 16),
        ("XL", 28, 1152, 16),
        ("T", 6, 128, 4),
        ("XS", 4, 64, 4),
    ]:
        cfg = DIT_PRESETS[f"DiT-{size}/2"]
        assert (cfg["depth"], cfg["hidden_size"], cfg["num_heads"]) == (depth, hidden, heads)
    assert {"DiT-T/1", "DiT-XS/1", "DiT-XL/8", "DiT-B/4"} <= set(DIT_PRESETS)
    model = build_backbone("DiT-T/2", input_size=8, in_channels=5, out_channels=4, depth=2)
    assert isinstance(model, DiT) and len(model.blocks) == 2 and model.in_channels == 5
    assert isinstance(unet_preset("UNet-T", input_size=8), UNet)
    assert dit_preset("DiT-XS/1", input_size=8).out_channels == 4


def test_invalid_preset_names() -> None:
    with pytest.raises(ValueError, match=r"DiT-Q/2.*DiT-S/2"):
        dit_preset("DiT-Q/2")
    with pytest.raises(ValueError, match=r"UNet-Z.*UNet-T"):
        unet_preset("UNet-Z")
    with pytest.raises(ValueError, match=r"ResNet.*DiT-B/2.*UNet-L"):
        build_backbone("ResNet")


def test_unknown_override_raises_type_error() -> None:
    with pytest.raises(TypeError):
        dit_preset("DiT-XS/2", input_size=8, num_clases=10)
    with pytest.raises(TypeError):
        unet_preset("UNet-T", input_size=8, chanel_mult=(1, 2))


def test_indivisible_input_size() -> None:
    with pytest.raises(ValueError, match=r"input_size 30 .*patch_size 4"):
        dit_preset("DiT-S/4", input_size=30)
    with pytest.raises(ValueError, match=r"input_size 6 .*divisible by 4"):
        unet_preset("UNet-S", input_size=6)
    dit = _build("DiT-XS/2")
    with pytest.raises(ValueError, match="8x8"):
        dit(torch.randn(1, 4, 10, 10), torch.rand(1))
    unet = unet_preset("UNet-S", input_size=8)
    with pytest.raises(ValueError, match=r"10x10 .*divisible by 4"):
        unet(torch.randn(1, 4, 10, 10), torch.rand(1))


def test_unet_invalid_attention_resolution() -> None:
    with pytest.raises(ValueError, match=r"\[8\].*\(1, 2\)"):
        unet_preset("UNet-T", input_size=8, attention_resolutions=(8,))


def test_unet_attention_placement() -> None:
    """attention_resolutions are downsampling factors relative to the input."""
    from latent_flow.backbones.unet import AttentionBlock

    model = unet_preset("UNet-S", input_size=16, attention_resolutions=(2,))
    seen = []

    def hook(module, args, output):
        seen.append(args[0].shape[-1])

    for m in model.modules():
        if isinstance(m, AttentionBlock):
            m.register_forward_hook(hook)
    model(torch.randn(1, 4, 16, 16), torch.rand(1))
    # 2 encoder + 3 decoder blocks at 8x8 (factor 2), plus the middle block at 4x4
    assert sorted(seen) == [4] + [8] * 5


def test_unet_patch_size_equals_a_unet_on_folded_input() -> None:
    """patch_size p = pixel_unshuffle -> a p=1 UNet with p*p times the channels -> pixel_shuffle."""
    torch.manual_seed(0)
    patched = unet_preset("UNet-T", input_size=16, in_channels=4, num_classes=NUM_CLASSES, patch_size=2)
    plain = unet_preset("UNet-T", input_size=8, in_channels=16, num_classes=NUM_CLASSES)
    for p in patched.out[-1].parameters():  # the zero-initialised output conv would hide any mismatch
        nn.init.normal_(p)
    plain.load_state_dict(patched.state_dict())  # same parameter shapes, by construction
    patched.eval(), plain.eval()
    x, t, y = torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([0, 1, 4])
    out = patched(x, t, y)
    assert out.shape == x.shape
    want = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), t, y), 2)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    # each output patch depends on its own input patch and its neighbours, not only on itself
    x2 = x.clone()
    x2[:, :, :2, :2] += 1.0
    changed = (patched(x2, t, y) - out).abs().amax(dim=(0, 1)) > 0
    assert changed[:2, :2].all() and changed.sum() > 4


def test_unet_patch_size_validation() -> None:
    with pytest.raises(ValueError, match=r"input_size 12 .*divisible by 8 .*patch_size=4"):
        unet_preset("UNet-T", input_size=12, patch_size=4)
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        unet_preset("UNet-T", input_size=8, patch_size=0)
    unet = unet_preset("UNet-T", input_size=16, patch_size=2)
    with pytest.raises(ValueError, match=r"10x10 .*divisible by 4"):
        unet(torch.randn(1, 4, 10, 10), torch.rand(1))


# --------------------------------------------------------------------------- features (a discriminator's trunk)


@pytest.mark.parametrize("name", TINY)
def test_features_are_what_the_forward_pass_computes_at_the_bottleneck(name: str) -> None:
    """``features`` is the middle block's output (UNet) or the last block's tokens as a map (DiT) of the very
    forward pass that gives the velocity, and a discriminator head turns it into one logit per sample."""
    from latent_flow.backbones.discriminator import FeatureDiscriminatorHead

    model = _perturb(_build(name, num_classes=NUM_CLASSES)).eval()
    x, t, y = _inputs()
    seen = {}
    inner = model.middle_block if isinstance(model, UNet) else model.blocks[-1]
    inner.register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    model(x, t, y)
    feats = model.features(x, t, y)
    assert feats.shape[:2] == (6, model.feature_channels)
    if isinstance(model, UNet):
        torch.testing.assert_close(feats, seen["out"])
    else:
        torch.testing.assert_close(feats.flatten(2).transpose(1, 2), seen["out"])
    head = FeatureDiscriminatorHead(model.feature_channels)
    logits = head(feats)
    assert logits.shape == (6,) and torch.isfinite(logits).all()
    torch.testing.assert_close(head(feats[:2]), logits[:2])  # per sample
    with pytest.raises(ValueError, match=r"expected features of shape \(B, "):
        head(feats[:, :1])
