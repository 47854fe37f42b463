"""``objective=meanflow`` on the LatentFlowModule: the loss, label dropout and folded guidance, conversion of a
flow checkpoint (``init_from``), and sampling with ``sampler=flowmap`` for label and inpainting conditions."""

from __future__ import annotations

import pytest
import torch

from latent_flow.sampling import build_solver
from latent_flow.sampling.noise import noise_for_indices
from latent_flow.training.checkpoints import flow_module_from_checkpoint, load_checkpoint, save_checkpoint_file
from latent_flow.training.module import BackboneMismatchError, LatentFlowModule

LATENT = [2, 8, 8]


def _module(objective=None, *, condition=None, backbone="DiT-XS/2", seed=0, **extra):
    torch.manual_seed(seed)
    return LatentFlowModule(
        backbone={"name": backbone},
        condition=condition or {"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}, "time_sampler": {"name": "logit_normal", "mean": 0.0, "std": 1.0}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=LATENT,
        objective=objective,
        **{"num_classes": 3, **extra},
    )


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"latent": torch.randn(n, *LATENT, generator=g), "label": torch.randint(0, 3, (n,), generator=g)}


def _perturb(module, scale=0.05):
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(scale * torch.randn_like(p))
        module.ema.module.load_state_dict(module.backbone.state_dict())


def test_the_meanflow_module_builds_a_flow_map_without_backbone_label_dropout():
    flow = _module()
    mf = _module({"name": "meanflow", "cfg_scale": 2.0})
    assert not flow.is_flow_map and flow.backbone.h_embedder is None and flow.backbone.y_embedder.dropout_prob == 0.1
    assert mf.is_flow_map and mf.backbone.h_embedder is not None and mf.backbone.y_embedder.dropout_prob == 0.0
    assert mf._objective_label_dropout == 0.1 and mf.objective.cfg_scale == 2.0
    assert mf.hparams.objective["name"] == "meanflow" and flow.hparams.objective == {"name": "flow"}
    with pytest.raises(ValueError, match="unknown options"):
        _module({"name": "meanflow", "ratio": 0.5})
    with pytest.raises(ValueError, match="unknown objective"):
        _module({"name": "shortcut"})
    with pytest.raises(ValueError, match="CondOT"):
        LatentFlowModule(
            backbone={"name": "DiT-XS/2"},
            condition={"name": "none"},
            path={"scheduler": {"name": "vp"}},
            optim={"lr": 1e-3},
            ema=None,
            latent_shape=LATENT,
            objective={"name": "meanflow"},
        )
    with pytest.raises(ValueError, match="conditional"):
        _module({"name": "meanflow", "cfg_scale": 2.0}, condition={"name": "none"}, num_classes=0)


def test_the_meanflow_loss_trains_the_interval_embedding():
    mf = _module({"name": "meanflow", "distinct_fraction": 1.0, "cfg_scale": 2.0})
    _perturb(mf)
    mf.train()
    loss = mf._loss(_batch(), use_ema=False)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 < loss.item() <= 1.0  # w d / (d + eps) < 1 per sample
    assert torch.isfinite(mf._last_mse) and mf._last_mse > 0
    loss.backward()
    grad = mf.backbone.h_embedder.mlp[2].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # validation draws are fixed by the generator, and in eval mode nothing is dropped
    mf.eval()
    a = mf._loss(_batch(), use_ema=True, generator=torch.Generator().manual_seed(3))
    b = mf._loss(_batch(), use_ema=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_the_objective_drops_labels_and_guides_only_the_kept_rows(monkeypatch):
    """Label dropout happens in the objective (the backbone has none); the dropped rows get the unguided target."""
    mf = _module({"name": "meanflow", "cfg_scale": 3.0})
    mf.train()
    seen = {}
    original = mf.objective.guided_velocity

    def spy(v, *, v_uncond, v_cond=None, guided=None):
        seen["guided"] = guided.clone()
        return original(v, v_uncond=v_uncond, v_cond=v_cond, guided=guided)

    labels_seen = []
    original_velocity = mf.velocity

    def velocity_spy(x, t, cond, *, use_ema=False):
        labels_seen.append(cond["label"].clone())
        return original_velocity(x, t, cond, use_ema=use_ema)

    monkeypatch.setattr(mf.objective, "guided_velocity", spy)
    monkeypatch.setattr(mf, "velocity", velocity_spy)
    mf._objective_label_dropout = 0.5
    torch.manual_seed(0)
    batch = _batch(64)
    mf._loss(batch, use_ema=False)
    guided = seen["guided"]
    assert 10 < (~guided).sum() < 54  # about half dropped
    assert (labels_seen[0] == 3).all()  # the unconditional pass sees the null label
    mf.eval()  # no dropout outside training: every row is guided
    mf._loss(batch, use_ema=False, generator=torch.Generator().manual_seed(0))
    assert seen["guided"].all()


def test_a_converted_flow_checkpoint_is_the_flow_model(tmp_path):
    """``init_from``: a flow checkpoint (written and read through the verifying checkpoint files) loads into a
    flow-map module whose average velocity is the flow's velocity for every interval, EMA included."""
    flow = _module()
    _perturb(flow)
    path = tmp_path / "flow.ckpt"
    save_checkpoint_file({"state_dict": flow.state_dict(), "hyper_parameters": dict(flow.hparams)}, path)
    mf = _module({"name": "meanflow"}, seed=1)
    report = mf.initialise_from(load_checkpoint(path))
    assert report["missing"] and all(".h_embedder." in k for k in report["missing"])
    assert int(mf.ema.num_updates) == 0
    mf.eval()
    flow.eval()
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(4, *LATENT, generator=g), torch.rand(4, generator=g) * 0.5
    cond = {"label": torch.tensor([0, 1, 2, 3])}
    for use_ema in (False, True):
        v = flow.velocity(x, t, cond, use_ema=use_ema)
        assert torch.equal(mf.velocity(x, t, cond, use_ema=use_ema), v)
        assert torch.equal(mf.flow_map(x, t, t + 0.5, cond, use_ema=use_ema), v)
    # other runs' weights are refused with the key that differs
    other = _module(backbone="UNet-T")
    save_checkpoint_file({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, path)
    with pytest.raises(BackboneMismatchError, match="backbone"):
        mf.initialise_from(load_checkpoint(path))
    # a flow-map checkpoint cannot resume as a flow (or back): the objective is named
    ckpt = {"state_dict": mf.state_dict(), "hyper_parameters": dict(mf.hparams)}
    with pytest.raises(BackboneMismatchError, match="init_from"):
        flow.on_load_checkpoint(ckpt)
    assert flow_module_from_checkpoint(ckpt, path="mf.ckpt").is_flow_map


def test_flowmap_sampling_counts_its_evaluations():
    mf = _module({"name": "meanflow"})
    _perturb(mf)
    labels = torch.tensor([0, 1, 2])
    for steps in (1, 2, 4):
        result = mf.sample_latents(build_solver("flowmap", steps=steps), indices=[0, 1, 2], labels=labels)
        assert result.nfe == steps and result.model_rows == 3 * steps and result.x.shape == (3, *LATENT)
        assert torch.isfinite(result.x).all()
    guided = mf.sample_latents(build_solver("flowmap", steps=2), indices=[0, 1, 2], labels=labels, cfg_scale=2.0)
    assert guided.nfe == 2 and guided.model_rows == 12  # [cond; null] in one call per step
    # same noise per index: one step of the flow map is x0 + u(x0, 0, 1)
    one = mf.sample_latents(build_solver("flowmap", steps=1), indices=[5], labels=labels[:1])
    x0 = noise_for_indices([5], tuple(LATENT), seed=0)
    mf.eval()
    with torch.no_grad():
        expected = x0 + mf.flow_map(x0, torch.zeros(1), torch.ones(1), {"label": labels[:1]}, use_ema=True)
    assert torch.allclose(one.x, expected, atol=1e-6)
    # an ODE solver samples the flow map's instantaneous velocity (t_end = t)
    heun = mf.sample_latents(build_solver("heun", steps=2), indices=[0, 1, 2], labels=labels)
    assert heun.nfe == 4
    flow = _module()
    with pytest.raises(ValueError, match="objective=meanflow"):
        flow.sample_latents(build_solver("flowmap", steps=1), indices=[0], labels=labels[:1])


def test_flowmap_sampling_with_an_inpainting_condition():
    condition = {"name": "inpaint", "resolution": 16, "label_dropout": 0.1, "cond_dropout": 0.1}
    mf = _module({"name": "meanflow", "cfg_scale": 2.0}, condition=condition, backbone="UNet-T", num_classes=0)
    _perturb(mf)
    assert mf.backbone.in_channels == 2 * LATENT[0] + 1
    mf.train()
    loss = mf._loss(
        {
            "latent": torch.randn(4, *LATENT),
            "masked_latent": torch.randn(4, *LATENT),
            "mask": (torch.rand(4, 1, 16, 16) > 0.5).float(),
        },
        use_ema=False,
    )
    assert torch.isfinite(loss)
    spatial = mf.condition.encode(torch.randn(2, *LATENT), torch.ones(2, 1, 16, 16))
    result = mf.sample_latents(build_solver("flowmap", steps=2), indices=[0, 1], spatial_cond=spatial, cfg_scale=1.5)
    assert result.nfe == 2 and result.model_rows == 8 and torch.isfinite(result.x).all()
    with pytest.raises(ValueError, match="spatial_cond"):
        mf.sample_latents(build_solver("flowmap", steps=1), indices=[0])
