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


def _loss_and_its_rows(mf, batch, seed):
    """The flow-map loss of ``batch`` drawn with ``seed``, and its rows drawn again the same way: ``(loss, s, t,
    sample, cond)`` (the pairs, the path's sample at ``s``, the condition), for a reference computed apart."""
    loss = mf._loss(batch, use_ema=False, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    x_noise = torch.randn(batch["latent"].shape, generator=gen)
    s, t = mf.objective.pairs(batch["latent"].shape[0], "cpu", generator=gen)
    sample = mf.path.sample(x_noise, batch["latent"], s)
    return loss, s, t, sample, mf.condition.from_batch(batch)


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
    seen = []  # one call for the s = t rows, one for the jumping rows (the JVP's tangent)
    original = mf.objective.guided_velocity

    def spy(v, *, v_uncond, v_cond=None, guided=None):
        seen.append(guided.clone())
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
    guided = torch.cat(seen)
    assert len(seen) == 2 and guided.shape == (64,)  # every row once
    assert 10 < (~guided).sum() < 54  # about half dropped
    assert (labels_seen[0] == 3).all()  # the unconditional pass sees the null label
    mf.eval()  # no dropout outside training: every row is guided
    seen.clear()
    mf._loss(batch, use_ema=False, generator=torch.Generator().manual_seed(0))
    assert torch.cat(seen).all()


@pytest.mark.parametrize("target", ["jvp", "shortcut"])
def test_the_split_loss_is_the_whole_batch_loss(target):
    """The rows with s = t are flow matching (their target is the guided velocity, no JVP, no half jumps) and only
    the jumping rows pay for their targets: the split loss equals the loss of the targets computed on the whole
    batch at once (the JVP with tangent v~, or the half jumps, on every row)."""
    from latent_flow.flow.meanflow import flow_map_target, shortcut_average_velocity

    objective = {"name": "meanflow", "cfg_scale": 2.0, "distinct_fraction": 0.5, "target": target, "weight_power": 0.0}
    mf = _module(objective, seed=2)  # (plain squared error: the adaptive weight makes every row's loss about 1)
    _perturb(mf)
    mf.eval()  # no label dropout: reproducible rows
    batch = _batch(24, seed=3)
    loss, s, t, sample, cond = _loss_and_its_rows(mf, batch, seed=5)
    assert 0 < int((s < t).sum()) < 24
    null = {"label": torch.full_like(batch["label"], 3)}
    with torch.no_grad():
        v = 2.0 * sample.target - mf.velocity(sample.x_t, s, null)  # CFG 2 folded in, with the network's own v(null)

    def u_fn(z, a, b):
        return mf.flow_map(z, a, b, cond)

    if target == "jvp":
        out = flow_map_target(u_fn, sample.x_t, s, t, v)
        u, tgt = out.u, out.target
    else:
        u = u_fn(sample.x_t, s, t)
        tgt = torch.where((s < t)[:, None, None, None], shortcut_average_velocity(u_fn, sample.x_t, s, t), v)
    reference, mse = mf.objective.loss(u, tgt)
    assert torch.allclose(loss, reference, rtol=1e-5) and torch.allclose(mf._last_mse, mse, rtol=1e-5)
    # and a wrong target is told apart: the velocity alone on the jumping rows
    wrong, _ = mf.objective.loss(u, v)
    assert not torch.allclose(loss, wrong, rtol=1e-3)
    loss.backward()  # the gradient reaches the interval embedding through the jumping rows
    assert mf.backbone.h_embedder.mlp[2].weight.grad.abs().sum() > 0


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


@pytest.mark.parametrize("target", ["jvp", "shortcut"])
def test_flowmap_sampling_with_an_inpainting_condition(target):
    condition = {"name": "inpaint", "resolution": 16, "label_dropout": 0.1, "cond_dropout": 0.1}
    objective = {"name": "meanflow", "cfg_scale": 2.0, "distinct_fraction": 0.5, "target": target}
    mf = _module(objective, condition=condition, backbone="UNet-T", num_classes=0)
    _perturb(mf)
    assert mf.backbone.in_channels == 2 * LATENT[0] + 1
    mf.train()
    batch = {
        "latent": torch.randn(8, *LATENT),
        "masked_latent": torch.randn(8, *LATENT),
        "mask": (torch.rand(8, 1, 16, 16) > 0.5).float(),
    }
    loss = mf._loss(batch, use_ema=False, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    torch.randn(batch["latent"].shape, generator=gen)
    s, t = mf.objective.pairs(8, "cpu", generator=gen)
    assert 0 < int((s < t).sum()) < 8  # both kinds of rows, each with its own spatial condition rows
    assert torch.isfinite(loss)
    loss.backward()
    assert mf.backbone.h_embedder.mlp[2].weight.grad.abs().sum() > 0
    spatial = mf.condition.encode(torch.randn(2, *LATENT), torch.ones(2, 1, 16, 16))
    result = mf.sample_latents(build_solver("flowmap", steps=2), indices=[0, 1], spatial_cond=spatial, cfg_scale=1.5)
    assert result.nfe == 2 and result.model_rows == 8 and torch.isfinite(result.x).all()
    with pytest.raises(ValueError, match="spatial_cond"):
        mf.sample_latents(build_solver("flowmap", steps=1), indices=[0])


# ------------------------------------------------------------------ distillation (objective.velocity=teacher)
def _flow_checkpoint(tmp_path, *, ema_differs=True):
    """A perturbed flow whose EMA differs from its raw backbone (so the teacher's source is visible), saved."""
    flow = _module()
    _perturb(flow)
    if ema_differs:
        with torch.no_grad():
            for p in flow.backbone.parameters():
                p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "flow.ckpt"
    save_checkpoint_file({"state_dict": flow.state_dict(), "hyper_parameters": dict(flow.hparams)}, path)
    return flow, path


def test_the_teacher_is_the_flow_checkpoints_ema_network_frozen(tmp_path):
    flow, path = _flow_checkpoint(tmp_path)
    mf = _module({"name": "meanflow", "velocity": "teacher", "cfg_scale": 2.0}, seed=1)
    assert mf.teacher is not None and mf.teacher.h_embedder is None  # a flow network: no interval embedding
    report = mf.initialise_from(load_checkpoint(path))
    assert report["teacher"] and all(k.startswith("teacher.") for k in report["teacher"])
    assert not any(k.startswith("teacher.") for k in report["missing"])
    assert not any(p.requires_grad for p in mf.teacher.parameters())
    assert all(p.requires_grad for p in mf.backbone.parameters())
    mf.train()
    assert mf.backbone.training and not mf.teacher.training  # Lightning's train() leaves the teacher in eval
    flow.eval()
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(4, *LATENT, generator=g), torch.rand(4, generator=g)
    cond = {"label": torch.tensor([0, 1, 2, 3])}
    v_ema = flow.velocity(x, t, cond, use_ema=True)
    assert torch.equal(mf.teacher_velocity(x, t, cond), v_ema)  # the EMA network, not the raw backbone
    assert not torch.allclose(flow.velocity(x, t, cond, use_ema=False), v_ema)
    # the teacher travels in the checkpoint: a resumed or reloaded run distils from the same network
    ckpt = {"state_dict": mf.state_dict(), "hyper_parameters": dict(mf.hparams)}
    reloaded = flow_module_from_checkpoint(ckpt, path="distilled.ckpt")
    reloaded.eval()
    assert torch.equal(reloaded.teacher_velocity(x, t, cond), v_ema)


def test_distillation_targets_the_teachers_velocity(tmp_path):
    """At s = t the target is the velocity itself: with a teacher it is the teacher's, so a student that starts as
    the teacher (a converted flow, zero interval embedding) has zero residual there; the path's conditional
    velocity does not."""
    _, path = _flow_checkpoint(tmp_path, ema_differs=False)  # student (raw backbone) = teacher (EMA)

    def converted(velocity):
        mf = _module({"name": "meanflow", "velocity": velocity, "distinct_fraction": 0.0}, seed=1)
        mf.initialise_from(load_checkpoint(path))
        mf.eval()  # no label dropout: the rows are reproducible
        return mf

    batch, gen = _batch(16), lambda: torch.Generator().manual_seed(7)
    distilled = converted("teacher")
    distilled._loss(batch, use_ema=False, generator=gen())
    # zero up to float rounding (the JVP runs the explicit attention path, the teacher the fused kernel)
    assert distilled._last_mse.item() < 1e-9
    plain = converted("path")
    plain._loss(batch, use_ema=False, generator=gen())
    assert plain._last_mse.item() > 1e-3
    # with distinct pairs the target moves (t - s) d/ds u away from the start: a nonzero residual to learn
    distilled.objective.pairs.distinct_fraction = 1.0
    distilled._loss(batch, use_ema=False, generator=gen())
    assert distilled._last_mse.item() > 0


def test_distillation_guides_with_the_teachers_velocities(monkeypatch, tmp_path):
    _, path = _flow_checkpoint(tmp_path)
    mf = _module({"name": "meanflow", "velocity": "teacher", "cfg_scale": 3.0}, seed=1)
    mf.initialise_from(load_checkpoint(path))
    mf.eval()
    calls = []
    original = mf.teacher_velocity

    def spy(x, t, cond):
        calls.append(cond["label"].clone())
        return original(x, t, cond)

    monkeypatch.setattr(mf, "teacher_velocity", spy)
    monkeypatch.setattr(mf, "velocity", lambda *a, **k: pytest.fail("the student's own velocity is not used"))
    mf.objective.pairs.distinct_fraction = 0.5
    batch = _batch(16)
    gen = torch.Generator().manual_seed(0)
    mf._loss(batch, use_ema=False, generator=gen)
    gen = torch.Generator().manual_seed(0)
    torch.randn(batch["latent"].shape, generator=gen)  # the loss draws the noise first, then the pairs
    s, t = mf.objective.pairs(16, "cpu", generator=gen)
    flow_rows, jump_rows = (s == t).nonzero().squeeze(1), (s < t).nonzero().squeeze(1)
    assert 0 < len(jump_rows) < 16  # both kinds of rows: one conditional and one null call each
    assert len(calls) == 4 and (calls[1] == 3).all() and (calls[3] == 3).all()
    assert torch.equal(calls[0], batch["label"][flow_rows]) and torch.equal(calls[2], batch["label"][jump_rows])


def test_distillation_refuses_kappa_and_a_flow_map_teacher(tmp_path):
    with pytest.raises(ValueError, match="cfg_kappa"):
        _module({"name": "meanflow", "velocity": "teacher", "cfg_scale": 2.0, "cfg_kappa": 0.3})
    with pytest.raises(ValueError, match="objective.velocity must be one of"):
        _module({"name": "meanflow", "velocity": "oracle"})
    mf = _module({"name": "meanflow"})
    path = tmp_path / "mf.ckpt"
    save_checkpoint_file({"state_dict": mf.state_dict(), "hyper_parameters": dict(mf.hparams)}, path)
    student = _module({"name": "meanflow", "velocity": "teacher"}, seed=1)
    with pytest.raises(ValueError, match="distils a flow checkpoint"):
        student.initialise_from(load_checkpoint(path))


# ------------------------------------------------------------------ distillation along the teacher's ODE (target=ode)
def test_the_ode_target_is_the_teachers_guided_heun_jump(monkeypatch, tmp_path):
    """``objective.target=ode``: the target of a pair is the jump of the flow checkpoint's own guided sampler
    (``velocity_fn`` with CFG, EMA weights, stepped by ``HeunSolver``) divided by its length; rows whose label was
    dropped follow the unguided teacher; the student's loss is one ordinary forward (no JVP) and trains it."""
    flow, path = _flow_checkpoint(tmp_path)
    flow.eval()
    mf = _module(
        {"name": "meanflow", "velocity": "teacher", "target": "ode", "teacher_steps": 4, "cfg_scale": 2.5}, seed=1
    )
    mf.initialise_from(load_checkpoint(path))
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, *LATENT, generator=g)
    s, t = torch.tensor([0.0, 0.2, 0.5, 0.3]), torch.tensor([1.0, 0.6, 0.5, 0.8])
    cond = {"label": torch.tensor([0, 2, 1, 3])}  # the last row's label is the null label: no guidance
    target = mf.objective.ode_target(mf._teacher_row_velocity(cond), z, s, t)
    heun = build_solver("heun", steps=1)
    for i, steps in enumerate([4, 2, 0, 2]):
        row_cond = {"label": cond["label"][i : i + 1]}
        v = flow.velocity_fn(row_cond, cfg_scale=2.5 if i < 3 else 1.0, use_ema=True)
        x = z[i : i + 1]
        if steps == 0:  # s = t: the guided velocity itself
            expected = v(x, s[i : i + 1])
        else:
            h = (t[i] - s[i]).item() / steps
            for k in range(steps):
                x = heun.step(v, x, s[i].item() + k * h, s[i].item() + (k + 1) * h)
            expected = (x - z[i : i + 1]) / (t[i] - s[i])
        assert torch.allclose(target[i : i + 1], expected, atol=2e-5), i
    # training: the loss reaches the interval embedding, never the teacher
    mf.train()
    monkeypatch.setattr(torch.func, "jvp", lambda *a, **k: pytest.fail("target=ode takes no JVP"))
    loss = mf._loss(_batch(8), use_ema=False)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mf.backbone.h_embedder.parameters())
    assert all(p.grad is None for p in mf.teacher.parameters())


@pytest.mark.parametrize("start", ["teacher", "student"])
def test_ode_start_puts_the_pairs_off_the_path(tmp_path, start):
    """``objective.ode_start=teacher``: the student and the target start from the teacher's guided ODE state at ``s``
    integrated from the batch's noise; ``student``: from the student's own jump to ``s`` from that noise (the noise
    itself where ``s = 0``), not from the path's state; the loss is the regression of the student's jump from there
    on the teacher's jump."""
    _, path = _flow_checkpoint(tmp_path)
    objective = {"name": "meanflow", "velocity": "teacher", "target": "ode", "teacher_steps": 4, "cfg_scale": 2.0,
                 "weight_power": 0.0, "distinct_fraction": 0.75, "grid_fraction": 0.25}  # fmt: skip
    mfs = {}
    for kind in (start, "path"):
        mfs[kind] = _module({**objective, "ode_start": kind}, seed=1)
        mfs[kind].initialise_from(load_checkpoint(path))
        torch.manual_seed(3)
        _perturb(mfs[kind])  # (the same draws in both: a student whose jumps differ from the teacher's)
        mfs[kind].eval()  # no label dropout: reproducible rows
    mf = mfs[start]
    batch = _batch(16, seed=4)
    loss, s, t, sample, cond = _loss_and_its_rows(mf, batch, seed=9)
    assert (s == 0).any() and (s > 0.2).any()
    gen = torch.Generator().manual_seed(9)
    x_noise = torch.randn(batch["latent"].shape, generator=gen)
    teacher = mf._teacher_row_velocity(cond)
    if start == "teacher":
        z = mf.objective.trajectory_state(teacher, x_noise, s)
    else:
        z = mf.objective.student_state(lambda x, a, b: mf.flow_map(x, a, b, cond), x_noise, s)
    assert torch.equal(z[s == 0], x_noise[s == 0])
    assert not torch.allclose(z[s > 0.2], sample.x_t[s > 0.2], atol=1e-2)  # off the path's states
    with torch.no_grad():
        reference, _ = mf.objective.loss(mf.flow_map(z, s, t, cond), mf.objective.ode_target(teacher, z, s, t))
        from_path, _ = mf.objective.loss(
            mf.flow_map(sample.x_t, s, t, cond), mf.objective.ode_target(teacher, sample.x_t, s, t)
        )
    assert torch.allclose(loss, reference, rtol=1e-5)
    path_loss = mfs["path"]._loss(batch, use_ema=False, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(path_loss, from_path, rtol=1e-5) and not torch.allclose(loss, path_loss, rtol=1e-3)


def test_the_ode_target_with_an_inpainting_condition(tmp_path):
    """Spatial conditions travel row by row through the teacher's ODE: each row's jump is the flow's own guided
    Heun jump under that row's known region; a row whose condition is the null one follows the unguided teacher."""
    condition = {"name": "inpaint", "resolution": 16, "label_dropout": 0.0, "cond_dropout": 0.1}
    flow = _module(condition=condition, backbone="UNet-T", num_classes=0)
    _perturb(flow)
    path = tmp_path / "inpaint_flow.ckpt"
    save_checkpoint_file({"state_dict": flow.state_dict(), "hyper_parameters": dict(flow.hparams)}, path)
    flow.eval()
    objective = {"name": "meanflow", "velocity": "teacher", "target": "ode", "teacher_steps": 2, "cfg_scale": 2.0}
    mf = _module(objective, condition=condition, backbone="UNet-T", num_classes=0, seed=1)
    mf.initialise_from(load_checkpoint(path))
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    cond = mf.condition.encode(torch.randn(3, *LATENT, generator=g), mask)
    cond = {key: torch.cat([value[:2], torch.zeros_like(value[2:])]) for key, value in cond.items()}  # row 2: null
    z = torch.randn(3, *LATENT, generator=g)
    s, t = torch.tensor([0.0, 0.5, 0.0]), torch.tensor([1.0, 0.75, 1.0])
    target = mf.objective.ode_target(mf._teacher_row_velocity(cond), z, s, t)
    heun = build_solver("heun", steps=1)
    for i, steps in enumerate([2, 1, 2]):
        row = {key: value[i : i + 1] for key, value in cond.items()}
        v = flow.velocity_fn(row, cfg_scale=2.0 if i < 2 else 1.0, use_ema=True)
        x, h = z[i : i + 1], (t[i] - s[i]).item() / steps
        for k in range(steps):
            x = heun.step(v, x, s[i].item() + k * h, s[i].item() + (k + 1) * h)
        assert torch.allclose(target[i : i + 1], (x - z[i : i + 1]) / (t[i] - s[i]), atol=2e-5), i


def test_the_hybrid_shortcut_target_takes_the_teachers_ode_on_the_long_jumps(tmp_path):
    """``objective.shortcut_ode_from=0.5``: the jumps of at least 0.5 (here the 1- and 2-step grids') regress on the
    teacher's guided ODE, the shorter ones on the half jumps, the s = t rows on the teacher's guided velocity; the
    loss is that of those targets computed on the whole batch, and not the plain half jumps' loss."""
    from latent_flow.flow.meanflow import shortcut_average_velocity

    _, path = _flow_checkpoint(tmp_path)
    objective = {
        "name": "meanflow", "velocity": "teacher", "target": "shortcut", "cfg_scale": 2.0, "weight_power": 0.0,
        "distinct_fraction": 0.0, "grid_fraction": 0.7, "grid_steps": [1, 2, 4, 8], "teacher_steps": 2,
        "shortcut_ode_from": 0.5,
    }  # fmt: skip
    mf = _module(objective, seed=1)
    mf.initialise_from(load_checkpoint(path))
    _perturb(mf)  # the student is no longer the teacher (nor its own EMA's copy of it)
    mf.eval()  # no label dropout: reproducible rows
    loss, s, t, sample, cond = _loss_and_its_rows(mf, _batch(32, seed=4), seed=6)
    long, short = t - s >= 0.5 - 1e-6, (t > s) & (t - s < 0.5 - 1e-6)
    assert long.any() and short.any() and (s == t).any()
    with torch.no_grad():
        velocity = mf._target_velocity(sample.x_t, s, sample.target, cond, use_ema=False)
        ode = mf.objective.ode_target(mf._teacher_row_velocity(cond), sample.x_t, s, t)
        halves = shortcut_average_velocity(lambda z, a, b: mf.flow_map(z, a, b, cond), sample.x_t, s, t, 1 / 128)
    u = mf.flow_map(sample.x_t, s, t, cond)

    def rows(mask):
        return mask[:, None, None, None]

    target = torch.where(rows(long), ode, torch.where(rows(short), halves, velocity))
    reference, mse = mf.objective.loss(u, target)
    assert torch.allclose(loss, reference, rtol=1e-5) and torch.allclose(mf._last_mse, mse, rtol=1e-5)
    plain, _ = mf.objective.loss(u, torch.where(rows(t > s), halves, velocity))
    assert not torch.allclose(loss, plain, rtol=1e-3)  # the long rows' ODE targets are not their half jumps'


# ------------------------------------------------------------------ distribution matching (objective.dmd_weight)
DMD = {"name": "meanflow", "velocity": "teacher", "target": "ode", "cfg_scale": 2.0, "teacher_steps": 2}


def _dmd_module(path, weight=1.0, **options):
    mf = _module({**DMD, "dmd_weight": weight, **options}, seed=1)
    mf.initialise_from(load_checkpoint(path))
    return mf.train()


def test_distribution_matching_trains_the_student_and_the_fake_flow_apart(tmp_path):
    """The fake flow starts as the teacher; the DMD term's gradient reaches the student only (scaling with
    dmd_weight), the fake flow's flow-matching loss the fake only, the teacher neither."""
    _, path = _flow_checkpoint(tmp_path)

    def backward(weight):
        mf = _dmd_module(path, weight)
        for p, q in zip(mf.fake.parameters(), mf.teacher.parameters(), strict=True):
            assert torch.equal(p, q) and p.requires_grad and not q.requires_grad
        torch.manual_seed(3)
        terms = mf._distribution_matching_losses(_batch(6))
        assert set(terms) == {"dmd", "fake"}  # no adversarial terms unless objective.gan_weight > 0
        dmd, fake = terms["dmd"], terms["fake"]
        (weight * dmd + fake).backward()
        assert dmd.item() > 0 and fake.item() > 0  # guidance makes the teacher's data prediction differ at once
        assert all(p.grad is None for p in mf.teacher.parameters())
        return mf

    one, three = backward(1.0), backward(3.0)
    for p, q in zip(one.fake.parameters(), three.fake.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert any(p.grad.abs().sum() > 0 for p in one.fake.parameters())
    student = [(p.grad, q.grad) for p, q in zip(one.backbone.parameters(), three.backbone.parameters(), strict=True)]
    assert any(g1.abs().sum() > 0 for g1, _ in student)
    for g1, g3 in student:
        torch.testing.assert_close(g3, 3.0 * g1)


def test_the_student_samples_are_the_flowmap_samplers(tmp_path):
    """The samples DMD sees are ``sampler=flowmap``'s (online weights), with gradient through the last jump only."""
    _, path = _flow_checkpoint(tmp_path)
    mf = _dmd_module(path).eval()
    _perturb(mf)  # a nonzero interval embedding and equal online / EMA weights
    with torch.no_grad():
        for p in mf.backbone.h_embedder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        mf.ema.module.load_state_dict(mf.backbone.state_dict())
    labels = torch.tensor([0, 2, 1])
    noise = noise_for_indices([0, 1, 2], tuple(LATENT), seed=0)
    for steps in (1, 2):
        x = mf.student_samples(noise, {"label": labels}, steps)
        expected = mf.sample_latents(build_solver("flowmap", steps=steps), indices=[0, 1, 2], labels=labels).x
        torch.testing.assert_close(x.detach(), expected)
        x.sum().backward()
        grads = [p.grad for p in mf.backbone.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
        mf.zero_grad()
    # a model trained on shifted grids (objective.grid_shift) is matched on the grid it is sampled with
    mf.objective.pairs.grid_shift = 2.0
    x = mf.student_samples(noise, {"label": labels}, 2)
    shifted = build_solver("flowmap", steps=2, time_grid="shifted", shift=2.0)
    torch.testing.assert_close(x.detach(), mf.sample_latents(shifted, indices=[0, 1, 2], labels=labels).x)
    uniform = mf.sample_latents(build_solver("flowmap", steps=2), indices=[0, 1, 2], labels=labels).x
    assert not torch.allclose(x.detach(), uniform)


def _save_perturbed(module, part, path, scale=0.05):
    """``module`` saved to ``path`` as a checkpoint after moving the weights of its submodule ``part`` (so that a
    reload shows whether they came along)."""
    with torch.no_grad():
        for p in part.parameters():
            p.add_(scale * torch.randn_like(p))
    save_checkpoint_file({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_distribution_matching_goes_on_from_a_distilled_checkpoint(tmp_path):
    """init_from a distilled flow map: its teacher comes along (and its fake flow, if it has one); a run without
    distribution matching drops the fake flow, a run without a teacher drops both; refusals."""
    flow, path = _flow_checkpoint(tmp_path)
    flow.eval()
    first = _dmd_module(path)
    saved = _save_perturbed(first, first.fake, tmp_path / "dmd.ckpt")
    again = _dmd_module(saved)
    state = first.state_dict()
    for key, value in again.state_dict().items():
        if not key.startswith("ema.num_updates"):
            assert torch.equal(value, state[key]), key
    without_dmd = _module({**DMD, "dmd_weight": 0.0}, seed=2)
    without_dmd.initialise_from(load_checkpoint(saved))
    assert without_dmd.fake is None
    for p, q in zip(without_dmd.teacher.parameters(), first.teacher.parameters(), strict=True):
        assert torch.equal(p, q)
    plain = _module({"name": "meanflow"}, seed=2)
    plain.initialise_from(load_checkpoint(saved))
    assert plain.teacher is None
    for p, q in zip(plain.backbone.parameters(), first.backbone.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="objective.dmd_weight > 0 matches the student's samples to a teacher"):
        _module({"name": "meanflow", "dmd_weight": 1.0})
    with pytest.raises(ValueError, match=r"objective.dmd_times must be \[t_min, t_max\]"):
        _module({**DMD, "dmd_weight": 1.0, "dmd_times": [0.5, 0.2]})
    with pytest.raises(ValueError, match="objective.dmd_steps must be a non-empty list"):
        _module({**DMD, "dmd_weight": 1.0, "dmd_steps": []})


def test_the_fake_flow_gets_its_own_learning_rate(tmp_path):
    import lightning as L

    _, path = _flow_checkpoint(tmp_path)
    mf = _dmd_module(path, dmd_fake_lr_scale=4.0)
    mf.trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False)
    optimizer = mf.configure_optimizers()["optimizer"]
    student, fake = optimizer.param_groups
    assert student["lr"] == pytest.approx(1e-3) and fake["lr"] == pytest.approx(4e-3)
    assert {id(p) for p in fake["params"]} == {id(p) for p in mf.fake.parameters()}
    trainable = {id(p) for p in mf.parameters() if p.requires_grad}
    assert {id(p) for p in student["params"]} | {id(p) for p in fake["params"]} == trainable
    assert not {id(p) for p in mf.teacher.parameters()} & trainable
    with pytest.raises(ValueError, match="objective.dmd_fake_lr_scale must be > 0"):
        _module({**DMD, "dmd_weight": 1.0, "dmd_fake_lr_scale": 0.0})


# ------------------------------------------------------------------ DMD2's adversarial term (objective.gan_weight)
def _gan_module(path, **options):
    return _dmd_module(path, **{"gan_weight": 1.0, **options})


def test_the_adversarial_terms_reach_their_own_networks(tmp_path):
    """``gan_g`` moves the student only, with exactly the generator loss's gradient in the samples; ``gan_d``
    moves the discriminator (the fake flow's trunk and the head) only; the teacher gets nothing."""
    from latent_flow.flow.distribution_matching import discriminator_loss, generator_loss

    _, path = _flow_checkpoint(tmp_path)
    mf = _gan_module(path)
    batch = _batch(6)
    cond = mf.condition.from_batch(batch)
    x = torch.randn(6, *LATENT, requires_grad=True)

    def times():
        return 0.1 + 0.8 * torch.rand(6)

    torch.manual_seed(5)
    terms = mf._adversarial_losses(x, batch["latent"], cond, times)
    assert set(terms) == {"gan_g", "gan_d"}
    # the same draws again, the generator loss by hand, differentiated in x
    torch.manual_seed(5)
    x_ref = x.detach().clone().requires_grad_(True)
    fake_noise, t_fake = torch.randn(6, *LATENT), times()
    real_noise, t_real = torch.randn(6, *LATENT), times()
    fake_t = mf.path.sample(fake_noise, x_ref, t_fake).x_t
    real_t = mf.path.sample(real_noise, batch["latent"], t_real).x_t
    both = {"label": torch.cat([cond["label"], cond["label"]])}
    logits = mf.discriminator_logits(torch.cat([fake_t, real_t]), torch.cat([t_fake, t_real]), both)
    generator_loss(logits[:6]).backward(retain_graph=True)
    torch.testing.assert_close(terms["gan_g"].detach(), generator_loss(logits[:6]).detach())  # its value too
    torch.testing.assert_close(terms["gan_d"], discriminator_loss(logits[6:], logits[:6]))
    mf.zero_grad()
    terms["gan_g"].backward()
    assert x_ref.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, x_ref.grad)
    critic = list(mf.fake.parameters()) + list(mf.discriminator.parameters())
    assert all(p.grad is None or not p.grad.any() for p in critic)  # the generator's term leaves the critic alone

    # through the whole step: the generator term reaches the student, the discriminator's the critic
    torch.manual_seed(3)
    terms = mf._distribution_matching_losses(batch)
    mf.zero_grad()
    terms["gan_g"].backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mf.backbone.parameters())
    assert all(p.grad is None or not p.grad.any() for p in critic)
    mf.zero_grad()
    terms["gan_d"].backward()
    assert all(p.grad is None or not p.grad.any() for p in mf.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mf.fake.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mf.discriminator.parameters())
    assert all(p.grad is None for p in mf.teacher.parameters())


def test_the_adversarial_terms_join_the_training_loss_with_their_weights(tmp_path):
    import lightning as L

    _, path = _flow_checkpoint(tmp_path)
    losses = {}
    for weights in ((1.0, 0.01), (3.0, 0.01), (1.0, 0.5)):
        mf = _gan_module(path, gan_weight=weights[0], gan_discriminator_weight=weights[1])
        torch.manual_seed(11)
        loss, parts = mf.training_loss(_batch(6))
        assert {"train/gan_g", "train/gan_d", "train/dmd", "train/fake"} <= set(parts)
        losses[weights] = (loss.item(), {k: v.item() for k, v in parts.items()})
    # the same draws: the parts agree, and the totals differ by the weights' share of the terms
    (l1, p1), (l3, p3), (ld, pd) = losses[(1.0, 0.01)], losses[(3.0, 0.01)], losses[(1.0, 0.5)]
    assert p1 == pytest.approx(p3) and p1 == pytest.approx(pd)
    assert ld - l1 == pytest.approx(0.49 * p1["train/gan_d"], rel=1e-4)
    assert l3 - l1 == pytest.approx(2.0 * p1["train/gan_g"], rel=1e-4)
    # the discriminator sees noise levels in gan_times
    mf = _gan_module(path, gan_times=[0.6, 0.9])
    seen = []
    logits = mf.discriminator_logits
    mf.discriminator_logits = lambda x_t, t, cond: seen.append(t) or logits(x_t, t, cond)
    mf._distribution_matching_losses(_batch(6))
    assert len(seen) == 1 and seen[0].shape == (12,) and bool(((seen[0] >= 0.6) & (seen[0] <= 0.9)).all())
    # the head trains with the fake flow's learning rate
    mf.trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False)
    student, critic = mf.configure_optimizers()["optimizer"].param_groups
    assert {id(p) for p in critic["params"]} == {id(p) for p in [*mf.fake.parameters(), *mf.discriminator.parameters()]}
    assert not {id(p) for p in student["params"]} & {id(p) for p in critic["params"]}


def test_the_discriminator_is_kept_in_checkpoints_and_dropped_by_runs_without_it(tmp_path):
    _, path = _flow_checkpoint(tmp_path)
    first = _gan_module(path)
    saved = _save_perturbed(first, first.discriminator, tmp_path / "gan.ckpt", scale=0.1)
    again = _gan_module(saved)
    for p, q in zip(again.discriminator.parameters(), first.discriminator.parameters(), strict=True):
        assert torch.equal(p, q)
    dmd_only = _dmd_module(saved)  # distribution matching without the adversarial term
    assert dmd_only.discriminator is None
    for p, q in zip(dmd_only.fake.parameters(), first.fake.parameters(), strict=True):
        assert torch.equal(p, q)
    fresh = _gan_module(path)  # from a flow: a new head, the fake flow the teacher
    assert not torch.equal(fresh.discriminator.linear.weight, first.discriminator.linear.weight)
    with pytest.raises(ValueError, match="objective.gan_weight > 0 puts its discriminator on distribution matching"):
        _module({**DMD, "gan_weight": 1.0})
    with pytest.raises(ValueError, match=r"objective.gan_times must be \[t_min, t_max\]"):
        _module({**DMD, "dmd_weight": 1.0, "gan_weight": 1.0, "gan_times": [0.5, 1.0]})
    with pytest.raises(ValueError, match="objective.gan_weight must be >= 0"):
        _module({**DMD, "dmd_weight": 1.0, "gan_weight": -1.0})
    with pytest.raises(ValueError, match="this model has no discriminator"):
        dmd_only.discriminator_logits(torch.zeros(1, *LATENT), torch.ones(1), {"label": torch.zeros(1).long()})
