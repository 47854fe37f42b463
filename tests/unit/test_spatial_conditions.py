"""Spatial condition encoders (inpaint, semantic): shapes, null conditions, dropout, training of the map encoder."""

from __future__ import annotations

import pytest
import torch

from latent_flow.conditioning import (
    InpaintCondition,
    SemanticCondition,
    build_condition,
    cache_extras,
    check_condition_data,
    mask_to_latent,
)
from latent_flow.training.module import LatentFlowModule

LATENT = (4, 8, 8)


def _inpaint(**kw):
    return build_condition("inpaint", latent_shape=LATENT, resolution=32, **kw)


def _semantic(**kw):
    return build_condition("semantic", latent_shape=LATENT, resolution=32, num_semantic_classes=6, **kw)


def _inpaint_batch(b=4):
    mask = torch.ones(b, 1, 32, 32)
    mask[:, :, 8:24, 4:20] = 0
    return {"masked_latent": torch.randn(b, *LATENT), "mask": mask, "label": torch.arange(b) % 3}


def _semantic_batch(b=4):
    sem = torch.zeros(b, 32, 32, dtype=torch.long)
    sem[:, 4:20, 6:22] = (torch.arange(b) % 5 + 1).view(b, 1, 1)
    return {"semantic": sem, "label": torch.arange(b) % 3}


def test_inpaint_shapes_channels_and_null():
    cond_enc = _inpaint()
    assert isinstance(cond_enc, InpaintCondition) and cond_enc.spatial_channels == 5 and not cond_enc.uses_label
    cond = cond_enc.from_batch(_inpaint_batch())
    assert set(cond) == {"masked_latent", "mask"}
    assert cond["mask"].shape == (4, 1, 8, 8)
    # area resize: a latent cell covering 4x4 pixels of which k are known has value k / 16
    assert cond["mask"][0, 0, 2, 1].item() == 0.0 and cond["mask"][0, 0, 0, 0].item() == 1.0
    assert cond["mask"][0, 0, 2, 0].item() == 1.0  # columns 0-3 known
    x_in, label = cond_enc.network_inputs(torch.randn(4, *LATENT), cond)
    assert x_in.shape == (4, 9, 8, 8) and label is None
    assert torch.equal(x_in[:, 4:8], cond["masked_latent"]) and torch.equal(x_in[:, 8:], cond["mask"])
    null = cond_enc.null(cond)
    assert set(null) == set(cond) and all(float(v.abs().sum()) == 0 for v in null.values())
    assert mask_to_latent(torch.ones(2, 1, 8, 8), (8, 8)).shape == (2, 1, 8, 8)


def test_semantic_shapes_and_learned_null():
    cond_enc = _semantic(embed_channels=3)
    assert isinstance(cond_enc, SemanticCondition) and cond_enc.spatial_channels == 3
    assert sum(1 for m in cond_enc.encoder.net if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)) == 2  # 32 -> 8
    cond = cond_enc.from_batch(_semantic_batch())
    x_in, label = cond_enc.network_inputs(torch.randn(4, *LATENT), cond)
    assert x_in.shape == (4, 7, 8, 8) and label is None
    null = cond_enc.null(cond)
    assert (null["semantic"] == 6).all()  # the extra null id
    emb_null = cond_enc.embed(null["semantic"])
    emb = cond_enc.embed(cond["semantic"])
    assert emb_null.shape == emb.shape and not torch.allclose(emb_null, emb)


def test_label_and_spatial_combined():
    for enc in (_inpaint(use_label=True, num_classes=5), _semantic(use_label=True, num_classes=5)):
        batch = _inpaint_batch() if isinstance(enc, InpaintCondition) else _semantic_batch()
        cond = enc.from_batch(batch)
        assert enc.uses_label and torch.equal(cond["label"], batch["label"])
        _, label = enc.network_inputs(torch.randn(4, *LATENT), cond)
        assert torch.equal(label, batch["label"])
        assert (enc.null(cond)["label"] == 5).all()
    module = LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition={
            "name": "semantic",
            "use_label": True,
            "label_dropout": 0.2,
            "resolution": 32,
            "num_semantic_classes": 6,
        },
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema=None,
        latent_shape=LATENT,
        num_classes=5,
    )
    assert module.backbone.num_classes == 5 and module.condition.spatial_channels == 4


def test_condition_dropout_replaces_whole_samples_by_the_null():
    torch.manual_seed(0)
    enc = _inpaint(cond_dropout=0.5)
    cond = enc.from_batch(_inpaint_batch(400))
    enc.train()
    dropped = enc.train_dropout(cond)
    is_null = dropped["masked_latent"].flatten(1).abs().sum(1) == 0
    assert torch.equal(is_null, dropped["mask"].flatten(1).sum(1) == 0)  # both parts dropped together
    assert 0.4 < is_null.float().mean() < 0.6
    kept = ~is_null
    assert torch.equal(dropped["masked_latent"][kept], cond["masked_latent"][kept])
    enc.eval()
    assert enc.train_dropout(cond) is cond  # no dropout outside training
    sem = _semantic(cond_dropout=0.3).train()
    out = sem.train_dropout(sem.from_batch(_semantic_batch(400)))["semantic"]
    all_null = (out == 6).flatten(1).all(1)
    any_null = (out == 6).flatten(1).any(1)
    assert torch.equal(all_null, any_null) and 0.2 < all_null.float().mean() < 0.4


def test_semantic_encoder_trains_with_the_backbone():
    module = LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition={"name": "semantic", "resolution": 32, "num_semantic_classes": 6},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-2},
        ema={"decay": 0.9, "warmup": False},
        latent_shape=LATENT,
    )
    enc_params = dict(module.condition.named_parameters())
    assert enc_params and all(p.requires_grad for p in enc_params.values())
    # the encoder is part of what the optimizer steps (configure_optimizers uses module.parameters())
    assert {id(p) for p in enc_params.values()} <= {id(p) for p in module.parameters() if p.requires_grad}
    before = {k: v.detach().clone() for k, v in enc_params.items()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    batch = {"latent": torch.randn(4, *LATENT), **_semantic_batch()}
    module.train()
    # the UNet's output convolution starts at zero (ADM), so upstream gradients appear from the 2nd step on
    for _ in range(2):
        opt.zero_grad()
        module._loss(batch, use_ema=False).backward()
        opt.step()
    opt.zero_grad()
    module._loss(batch, use_ema=False).backward()
    for name, p in enc_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    opt.step()
    for name, p in enc_params.items():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    # the EMA copy of the encoder follows (and sampling with use_ema uses it)
    ema_before = [p.clone() for p in module.condition_ema.module.parameters()]
    module.condition_ema.update(module.condition)
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, module.condition_ema.module.parameters()))
    module.eval()
    x, t = torch.randn(2, *LATENT), torch.rand(2)
    cond = module.condition.from_batch(_semantic_batch(2))
    assert not torch.allclose(module.velocity(x, t, cond, use_ema=True), module.velocity(x, t, cond, use_ema=False))


def test_ddp_parameter_checksum_covers_the_map_encoder_and_its_ema():
    module = LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition={"name": "semantic", "resolution": 32, "num_semantic_classes": 6},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-2},
        ema={"decay": 0.9, "warmup": False},
        latent_shape=LATENT,
    )
    before = module.parameter_checksum()
    with torch.no_grad():  # a rank whose map encoder drifted must be caught, not only a drifted backbone
        next(module.condition.parameters()).add_(0.5)
    after = module.parameter_checksum()
    assert after[0] != before[0] and after[1] == before[1]
    with torch.no_grad():
        next(module.condition_ema.module.parameters()).add_(0.5)
    assert module.parameter_checksum()[1] != before[1]


def test_parameter_free_conditions_have_no_ema_copy():
    module = LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition={"name": "inpaint", "resolution": 32},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=LATENT,
    )
    assert module.condition_ema is None
    assert not any(k.startswith("condition") for k in module.state_dict())


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown options \\['bogus'\\]"):
        _inpaint(bogus=1)
    with pytest.raises(ValueError, match="num_semantic_classes"):
        build_condition("semantic", latent_shape=LATENT, resolution=32, num_semantic_classes=None)
    with pytest.raises(ValueError, match="power-of-two multiple"):
        build_condition("semantic", latent_shape=LATENT, resolution=24, num_semantic_classes=6)
    with pytest.raises(ValueError, match="use_label=true needs a dataset with class labels"):
        _inpaint(use_label=True, num_classes=0)
    with pytest.raises(ValueError, match="unknown condition 'sketch'"):
        build_condition("sketch")
    bad = _semantic_batch()
    bad["semantic"][0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"class ids \[9\] outside \[0, 5\]"):
        _semantic().from_batch(bad)
    with pytest.raises(KeyError, match="no \\['masked_latent', 'mask'\\]"):
        _inpaint().from_batch({"label": torch.zeros(2)})

    class NoMaps:
        pass

    class FewMaps:
        semantic_classes = ("background", "a")

    with pytest.raises(ValueError, match="has none"):
        check_condition_data({"name": "semantic", "num_semantic_classes": 6}, NoMaps())
    with pytest.raises(ValueError, match="num_semantic_classes=2"):
        check_condition_data({"name": "semantic", "num_semantic_classes": 6}, FewMaps())


def test_cache_extras():
    assert cache_extras({"name": "label"}) == {} and cache_extras({"name": "none"}) == {}
    assert cache_extras({"name": "semantic"}) == {"semantic": True}
    assert cache_extras({"name": "inpaint", "masks": {"hole_min": 0.2}, "mask_variants": 2}) == {
        "masks": {"hole_min": 0.2},
        "mask_variants": 2,
    }


@pytest.mark.parametrize("name", ["inpaint", "semantic"])
def test_spatial_label_models_train_the_joint_null_at_the_configured_rate(name):
    """What the networks see while training (20k draws): CFG's null (map *and* label null) at rate cond_dropout."""
    p_cond, p_label, n, chunk = 0.1, 0.1, 20_000, 2_000
    options = {"resolution": 32, "cond_dropout": p_cond, "use_label": True, "label_dropout": p_label}
    options.update({"num_semantic_classes": 6} if name == "semantic" else {"masks": {}, "mask_variants": 2})
    module = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": name, **options},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema=None,
        latent_shape=LATENT,
        num_classes=5,
    ).train()
    seen_labels, spatial_null = [], []
    module.backbone.y_embedder.embedding_table.register_forward_hook(
        lambda m, args, out: seen_labels.append(args[0].clone())  # the labels after any dropout
    )
    network_inputs = module.condition.network_inputs

    def spy(x_t, cond):
        if name == "inpaint":
            spatial_null.append(cond["mask"].flatten(1).sum(1) == 0)
        else:
            spatial_null.append((cond["semantic"] == 6).flatten(1).all(1))
        return network_inputs(x_t, cond)

    module.condition.network_inputs = spy
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(n // chunk):
            batch = _inpaint_batch(chunk) if name == "inpaint" else _semantic_batch(chunk)
            batch["label"] = torch.arange(chunk) % 5
            module._loss({"latent": torch.randn(chunk, *LATENT), **batch}, use_ema=False)
    label_null = torch.cat(seen_labels) == 5
    spatial = torch.cat(spatial_null)
    assert label_null.shape == spatial.shape == (n,)
    both = (label_null & spatial).float().mean().item()
    se = (p_cond * (1 - p_cond) / n) ** 0.5
    assert abs(both - p_cond) < 4 * se, f"P(both null) = {both:.4f}, configured {p_cond}"
    assert abs(spatial.float().mean().item() - p_cond) < 4 * se  # the map is only ever dropped with the label
    assert not bool((spatial & ~label_null).any())
    p_label_total = p_cond + (1 - p_cond) * p_label  # + the label alone among the rest
    se_l = (p_label_total * (1 - p_label_total) / n) ** 0.5
    assert abs(label_null.float().mean().item() - p_label_total) < 4 * se_l
    module.eval()  # no dropout at all outside training
    with torch.no_grad():
        batch = _inpaint_batch(64) if name == "inpaint" else _semantic_batch(64)
        module._loss({"latent": torch.randn(64, *LATENT), **batch}, use_ema=False)
    assert not bool((seen_labels[-1] == 5).any()) and not bool(spatial_null[-1].any())


def test_label_only_models_keep_the_backbone_label_dropout():
    module = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.3},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema=None,
        latent_shape=LATENT,
        num_classes=5,
    )
    assert module.backbone.y_embedder.dropout_prob == 0.3
