"""FlowTurbo: schedules, second order of the pseudo corrector, zero refiner, exact NFE, compile once."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from latent_flow.conditioning import LabelCondition, NoCondition
from latent_flow.flowturbo import (
    FlowTurboSolver,
    Schedule,
    TurboNetworks,
    VelocityRefiner,
    parse_schedule,
    refiner_spec,
)
from latent_flow.flowturbo.refiner import parameter_count
from latent_flow.flowturbo.sampler import refine_step

# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "text, expected",
    [("H1P5R3", (1, 5, 3)), ("H8P9R5", (8, 9, 5)), ("h2r1", (2, 0, 1)), ("P4", (0, 4, 0)), ("H12", (12, 0, 0))],
)
def test_schedule_parses(text, expected):
    s = parse_schedule(text)
    assert (s.heun, s.pseudo, s.refine) == expected
    assert s.steps == sum(expected)
    assert parse_schedule(str(s)) == s


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty FlowTurbo schedule"),
        ("   ", "empty FlowTurbo schedule"),
        ("P2H1", "blocks must come in the order H, P, R"),
        ("H1H2", "blocks must come in the order H, P, R"),
        ("R1P1", "blocks must come in the order H, P, R"),
        ("H0", "step counts must be >= 1"),
        ("H1P0R2", "step counts must be >= 1"),
        ("X3", "unknown block 'X'"),
        ("H1P", "block 'P' in FlowTurbo schedule 'H1P' has no step count"),
        ("H1-P2", "unexpected character '-'"),
    ],
)
def test_schedule_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_schedule(text)


def test_expected_nfe():
    assert Schedule(1, 5, 3).expected_nfe() == (7, 6)
    assert Schedule(0, 3, 0).expected_nfe() == (4, 0)  # one initial velocity evaluation
    assert Schedule(0, 0, 2).expected_nfe() == (1, 4)


# ----------------------------------------------------------------------------- toy networks


class LinearField(nn.Module):
    """``v(x, t) = lam * x + 2 t``: solution ``x(t) = (x0 + 2/lam^2) e^{lam t} - 2t/lam - 2/lam^2``."""

    def __init__(self, lam: float = -1.5) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x, t, y=None):
        return self.lam * x + 2.0 * t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

    def exact(self, x0, t: float):
        lam = self.lam
        return (x0 + 2 / lam**2) * math.exp(lam * t) - 2 * t / lam - 2 / lam**2


def _toy_nets(refiner=None):
    return TurboNetworks(LinearField(), refiner, NoCondition())


@pytest.mark.parametrize("heun", [1, 0, 2])
def test_pseudo_corrector_is_second_order(heun):
    nets = _toy_nets()
    x0 = torch.linspace(-2, 2, 5, dtype=torch.float64).reshape(5, 1)
    exact = nets.base.exact(x0, 1.0)
    errors = []
    for n in (8, 16, 32, 64):
        schedule = (f"H{heun}" if heun else "") + f"P{n - heun}"
        errors.append((FlowTurboSolver(schedule, nets).integrate(x0).x - exact).abs().max().item())
    ratios = [a / b for a, b in itertools.pairwise(errors)]
    assert all(3.5 < r < 4.6 for r in ratios), (errors, ratios)  # halving h divides the error by ~4


def test_heun_block_matches_the_project_heun_solver():
    from latent_flow.sampling import HeunSolver

    nets = _toy_nets()
    x0 = torch.randn(4, 3, dtype=torch.float64)
    ours = FlowTurboSolver("H6", nets).integrate(x0)
    ref = HeunSolver(6).sample(lambda x, t: nets.base(x, t), x0)
    assert torch.allclose(ours.x, ref.x, atol=1e-12)
    assert ours.base_nfe == ref.nfe == 12 and ours.refiner_nfe == 0


# ----------------------------------------------------------------------------- refiner


def _hparams(backbone: str, channels: int = 4, size: int = 8, classes: int = 3) -> dict:
    return {
        "backbone": {"name": backbone},
        "latent_shape": [channels, size, size],
        "condition": {"name": "label", "label_dropout": 0.1},
        "num_classes": classes,
    }


@pytest.mark.parametrize("backbone", ["DiT-XS/2", "UNet-T"])
def test_refiner_shape_channels_and_zero_output(backbone):
    from latent_flow.backbones import build_backbone

    spec = refiner_spec(_hparams(backbone))
    assert spec["in_channels"] == 2 * 4  # latent + previous velocity
    refiner = VelocityRefiner(spec)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    out = refiner(x, v, torch.rand(2), torch.tensor([0, 3]))  # 3 = null label
    assert out.shape == v.shape and torch.count_nonzero(out) == 0
    base = build_backbone(backbone, input_size=8, in_channels=4, out_channels=4, num_classes=3)
    assert parameter_count(refiner) < parameter_count(base)


def test_refiner_parameter_share_of_large_bases():
    from latent_flow.backbones import build_backbone

    hp = _hparams("DiT-XL/2", size=32, classes=1000)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        share = parameter_count(VelocityRefiner(refiner_spec(hp))) / parameter_count(
            build_backbone("DiT-XL/2", input_size=32, in_channels=4, out_channels=4, num_classes=1000)
        )
    assert 0.03 < share < 0.06  # the paper's ~4-5% for its XL model


def test_refiner_rejects_other_backbones():
    with pytest.raises(ValueError, match="refiners for DiT-\\* and UNet-\\*"):
        refiner_spec(_hparams("ResNet-50"))


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_zero_refiner_step_carries_the_velocity(scale):
    spec = refiner_spec(_hparams("UNet-T"))
    nets = TurboNetworks(LinearField(), VelocityRefiner(spec), LabelCondition(3))
    b = 3
    x = torch.randn(b, 4, 8, 8)
    rows = b if scale == 1.0 else 2 * b
    carried = torch.randn(rows, 4, 8, 8)
    labels = torch.tensor([0, 1, 2])
    cond = {"label": labels if scale == 1.0 else torch.cat([labels, torch.full_like(labels, 3)])}
    t, t_next = torch.full((b,), 0.5), torch.full((b,), 0.625)
    x_next, carried_next = refine_step(nets, x, carried, t, t_next, cond, scale)
    guided = carried if scale == 1.0 else carried[b:] + scale * (carried[:b] - carried[b:])
    assert torch.allclose(x_next, x + 0.125 * guided, atol=1e-6)
    assert torch.equal(carried_next, carried)


def test_zero_refiner_schedule_equals_heun_then_constant_velocity():
    spec = refiner_spec({**_hparams("UNet-T"), "condition": {"name": "none"}, "num_classes": 0})
    nets = TurboNetworks(LinearField(), VelocityRefiner(spec), NoCondition())
    x0 = torch.randn(2, 4, 8, 8)
    out = FlowTurboSolver("H1R3", nets).integrate(x0)
    # by hand: one Heun step on [0, 1/4], then three steps carrying d' = v(x~, 1/4)
    f = nets.base
    d = f(x0, torch.zeros(2))
    x_pred = x0 + 0.25 * d
    d2 = f(x_pred, torch.full((2,), 0.25))
    x1 = x0 + 0.125 * (d + d2)
    assert torch.allclose(out.x, x1 + 0.75 * d2, atol=1e-5)
    assert (out.base_nfe, out.refiner_nfe) == (2, 6)


# ----------------------------------------------------------------------------- NFE counts


def _counted_nets(backbone: str = "DiT-XS/2", hooks: bool = True, **overrides):
    from latent_flow.backbones import build_backbone

    base = build_backbone(backbone, input_size=8, in_channels=4, out_channels=4, num_classes=3, **overrides).eval()
    refiner = VelocityRefiner(refiner_spec(_hparams(backbone))).eval()
    calls = {"base": 0, "refiner": 0}
    if hooks:
        base.register_forward_hook(lambda *a: calls.__setitem__("base", calls["base"] + 1))
        refiner.register_forward_hook(lambda *a: calls.__setitem__("refiner", calls["refiner"] + 1))
    return TurboNetworks(base, refiner, LabelCondition(3)), calls


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("schedule", ["H1P5R3", "H2", "P3", "R2", "H1R2", "P2R1", "H3P1"])
def test_nfe_counts_are_exact(schedule, scale):
    nets, calls = _counted_nets()
    labels = torch.tensor([0, 2])
    out = FlowTurboSolver(schedule, nets).integrate(
        torch.randn(2, 4, 8, 8), {"label": labels}, {"label": torch.full_like(labels, 3)}, scale
    )
    assert (
        (out.base_nfe, out.refiner_nfe) == (calls["base"], calls["refiner"]) == parse_schedule(schedule).expected_nfe()
    )
    assert out.nfe == out.base_nfe
    assert torch.isfinite(out.x).all()


def test_guided_velocity_input_is_required_for_sample():
    nets, _ = _counted_nets()
    with pytest.raises(TypeError, match="guided velocity"):
        FlowTurboSolver("H1", nets).sample(lambda x, t: x, torch.randn(1, 4, 8, 8))


def test_refiner_steps_need_a_refiner():
    with pytest.raises(ValueError, match="no refiner was given"):
        FlowTurboSolver("H1R1", _toy_nets())


# ----------------------------------------------------------------------------- compile once


def test_compile_each_block_type_once_and_reuse_it():
    import torch._dynamo

    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    nets, _ = _counted_nets(hooks=False, depth=1)  # a real DiT (one block: cheap to trace)
    solver = FlowTurboSolver("H2P3R2", nets, compile=True, compile_backend=counting_backend)
    labels = torch.tensor([0, 1])
    args = ({"label": labels}, {"label": torch.full_like(labels, 3)}, 1.5)
    x0 = torch.randn(2, 4, 8, 8)
    eager = FlowTurboSolver("H2P3R2", nets).integrate(x0, *args)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = solver.integrate(x0, *args)
        assert len(graphs) == 3  # one graph per block type (H, P, R), whatever the number of steps
        assert set(solver._compiled) == {"H", "P", "R"}
        second = solver.integrate(torch.randn(2, 4, 8, 8), *args)  # new noise, same shapes: no recompilation
        # another schedule (other step sizes and step counts) on the same networks reuses the graphs
        other = FlowTurboSolver("H1P4R1", nets, compile=True, compile_backend=counting_backend)
        other.integrate(x0, *args)
    assert len(graphs) == 3
    assert torch.allclose(first.x, eager.x, atol=1e-5)
    assert (second.base_nfe, second.refiner_nfe) == (7, 4)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- refiner training loss


def _tiny_base():
    from latent_flow.training.module import LatentFlowModule

    return LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[4, 8, 8],
        num_classes=3,
    )


def test_refiner_loss_uses_one_label_drop_for_all_three_calls_and_clamps_time():
    from latent_flow.flowturbo import RefinerModule

    base = _tiny_base()
    module = RefinerModule(
        base_ckpt_path="unused.ckpt",
        optim={"lr": 1e-3},
        base_model=base,
        label_dropout=0.5,
        time_offset={"min": 0.05, "max": 0.5},
    )
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    velocity = base.velocity

    def spy(x, t, cond, *, use_ema=False):
        assert use_ema  # the refiner is trained against the base's EMA weights
        seen.append((cond["label"].clone(), t.clone()))
        return velocity(x, t, cond, use_ema=use_ema)

    base.velocity = spy
    refiner_labels = []
    module.refiner.register_forward_hook(lambda m, args, out: refiner_labels.append(args[3].clone()))
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1] * 8)
    out = module.refiner_loss({"latent": torch.randn(64, 4, 8, 8), "label": labels})
    (y0, t0), (y1, t1) = seen
    assert torch.equal(y0, y1) and torch.equal(y0, refiner_labels[0])
    dropped = y0 == 3
    assert 0 < dropped.sum() < 64 and torch.equal(y0[~dropped], labels[~dropped])
    assert (t1 <= 1.0).all() and (t1 > t0).all() and ((t1 - t0) <= 0.5 + 1e-6).all()
    assert (((t1 - t0) >= 0.05 - 1e-6) | (t1 == 1.0)).all()  # dt >= min unless clamped
    assert (t1 == 1.0).any()  # some t + dt were clamped at 1
    # a zero refiner gives exactly the loss of carrying v0
    assert torch.allclose(out["loss"], out["loss_carry"])
    out["loss"].backward()
    assert any(p.grad is not None for p in module.refiner.parameters())
    assert all(p.grad is None for p in base.parameters())


def test_refiner_options_are_validated():
    from latent_flow.flowturbo import RefinerModule

    with pytest.raises(ValueError, match="0 <= min < max <= 1"):
        RefinerModule(base_ckpt_path="x", optim={"lr": 1e-3}, base_model=_tiny_base(), time_offset={"max": 1.5})
    with pytest.raises(ValueError, match="unknown refiner option"):
        RefinerModule(base_ckpt_path="x", optim={"lr": 1e-3}, base_model=_tiny_base(), refiner={"depth": 2})


def test_inpainting_base_refiner_sees_the_spatial_channels_and_samples():
    from latent_flow.flowturbo import RefinerModule, base_network
    from latent_flow.training.module import LatentFlowModule

    base = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={
            "name": "inpaint",
            "resolution": 32,
            "masks": {},
            "mask_variants": 2,
            "cond_dropout": 0.1,
            "use_label": True,
            "label_dropout": 0.1,
        },
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[4, 8, 8],
        num_classes=3,
    )
    module = RefinerModule(base_ckpt_path="unused.ckpt", optim={"lr": 1e-3}, base_model=base)
    assert module.hparams.refiner_spec["in_channels"] == 2 * 4 + base.condition.spatial_channels
    b = 4
    batch = {
        "latent": torch.randn(b, 4, 8, 8),
        "label": torch.tensor([0, 1, 2, 0]),
        "masked_latent": torch.randn(b, 4, 8, 8),
        "mask": (torch.rand(b, 1, 32, 32) > 0.5).float(),
    }
    assert torch.isfinite(module.refiner_loss(batch)["loss"])
    cond = base.condition.from_batch(batch)
    solver = FlowTurboSolver("H1P1R1", TurboNetworks(base_network(base), module.refiner, base.condition))
    spatial = {k: v for k, v in cond.items() if k != "label"}
    result = base.sample_latents(solver, indices=range(b), labels=batch["label"], cfg_scale=2.0, spatial_cond=spatial)
    assert result.x.shape == (b, 4, 8, 8) and (result.base_nfe, result.refiner_nfe) == (3, 2)


# ----------------------------------------------------------------------------- EMA base: backbone + condition encoder

_CONDITIONS = {
    "label": {"name": "label", "label_dropout": 0.1},
    "semantic": {"name": "semantic", "resolution": 32, "num_semantic_classes": 4, "cond_dropout": 0.1},
    "semantic_label": {
        "name": "semantic",
        "resolution": 32,
        "num_semantic_classes": 4,
        "cond_dropout": 0.1,
        "use_label": True,
        "label_dropout": 0.1,
    },
    "inpaint_label": {
        "name": "inpaint",
        "resolution": 32,
        "masks": {},
        "mask_variants": 2,
        "cond_dropout": 0.1,
        "use_label": True,
        "label_dropout": 0.1,
    },
}


def _perturbed_base(kind: str, seed: int = 0):
    """A base whose EMA copies (backbone and, when trainable, condition encoder) differ from the raw weights."""
    from latent_flow.training.module import LatentFlowModule

    torch.manual_seed(seed)
    model = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition=_CONDITIONS[kind],
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[4, 8, 8],
        num_classes=3,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emas = [model.ema.module] + ([model.condition_ema.module] if model.condition_ema is not None else [])
        for module in emas:  # DiT's zero-initialised output layers too: the velocity is not identically 0
            for p in module.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _spatial_inputs(model, b: int):
    gen = torch.Generator().manual_seed(5)
    if model.condition.spatial_keys == ("semantic",):
        return {"semantic": torch.randint(0, 4, (b, 32, 32), generator=gen)}
    mask = (torch.rand(b, 1, 32, 32, generator=gen) > 0.5).float()
    return model.condition.encode(torch.randn(b, 4, 8, 8, generator=gen), mask)


@pytest.mark.parametrize("kind", list(_CONDITIONS))
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_heun_only_flowturbo_equals_heun_for_every_condition(kind, scale):
    """H-only FlowTurbo is Heun on the same networks that ``model.velocity(use_ema=True)`` calls."""
    from latent_flow.flowturbo import build_flowturbo_solver
    from latent_flow.sampling import HeunSolver

    model = _perturbed_base(kind)
    if model.condition_ema is not None:  # the EMA encoder differs from the raw one
        raw = dict(model.condition.named_parameters())
        assert any(not torch.equal(raw[k], p) for k, p in model.condition_ema.module.named_parameters())
    b = 3
    spatial = _spatial_inputs(model, b) if model.condition.spatial_channels else None
    labels = torch.tensor([0, 1, 2]) if model.condition.uses_label else None
    kwargs = dict(indices=range(b), labels=labels, cfg_scale=scale, spatial_cond=spatial, seed=3)
    ours = model.sample_latents(build_flowturbo_solver(model, schedule="H6"), **kwargs)
    ref = model.sample_latents(HeunSolver(6), **kwargs)
    assert ref.x.abs().max() > 0.1 and ours.nfe == ref.nfe == 12
    diff = (ours.x - ref.x).abs().max().item()
    # float32 rounding only (the two solvers order their sums differently); a wrong network gives O(1)
    assert diff <= 1e-5 * (1 + ref.x.abs().max().item()), f"{kind}: FlowTurbo H6 differs from Heun(6) by {diff}"


def test_refiner_base_hash_covers_the_condition_encoder_ema(tmp_path):
    from latent_flow.flowturbo import RefinerBaseMismatchError, RefinerModule, load_refiner
    from latent_flow.flowturbo.module import base_weights_hash

    base = _perturbed_base("semantic")
    module = RefinerModule(base_ckpt_path="unused.ckpt", optim={"lr": 1e-3}, base_model=base)
    assert module.hparams.base_hash == base_weights_hash(base)
    ckpt = tmp_path / "refiner.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    assert load_refiner(ckpt, base) is not None  # the same base: accepted
    with torch.no_grad():  # only the EMA condition encoder changes; the backbone is untouched
        next(base.condition_ema.module.parameters()).add_(1e-3)
    with pytest.raises(RefinerBaseMismatchError, match="weights hash"):
        load_refiner(ckpt, base)
    # the raw (non-EMA) encoder is not what FlowTurbo runs with an EMA base: changing it keeps the hash
    digest = base_weights_hash(base)
    with torch.no_grad():
        next(base.condition.parameters()).add_(1.0)
    assert base_weights_hash(base) == digest
    # label models (no trainable condition) keep the hash of the backbone alone (old refiners stay valid)
    from latent_flow.flowturbo import base_network, weights_hash

    label = _perturbed_base("label")
    assert base_weights_hash(label) == weights_hash(base_network(label))


def test_refiner_training_inputs_use_the_ema_condition_encoder():
    """The refiner sees the map through the same (EMA) encoder as the base calls of its targets and of sampling."""
    from latent_flow.flowturbo import RefinerModule

    base = _perturbed_base("semantic")
    module = RefinerModule(base_ckpt_path="unused.ckpt", optim={"lr": 1e-3}, base_model=base, label_dropout=0.0)
    seen = []
    module.refiner.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    batch = {"latent": torch.randn(2, 4, 8, 8), "semantic": torch.randint(0, 4, (2, 32, 32))}
    module.refiner_loss(batch, generator=torch.Generator().manual_seed(0))
    emb = base.condition_ema.module.embed(batch["semantic"])
    assert torch.allclose(seen[0][:, 4:8], emb)  # x_in = [x', emb(map)]
