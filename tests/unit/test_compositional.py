"""Energy composition, guidance weighting and guided sampling (t = 0 noise, t = 1 data).

The toy problem is a 2-D Gaussian mixture whose CondOT flow velocity and class posterior
p(k | x_t, t) are known in closed form: the unconditional flow guided by the exact classifier must
put its samples on the requested components.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_flow.compositional.classifier import (
    AttributeSpec,
    LatentAttributeClassifier,
)
from latent_flow.compositional.editing import reverse_time
from latent_flow.compositional.energy import ComposedEnergy, compose_energy, softcap
from latent_flow.compositional.expression import And, parse
from latent_flow.compositional.guidance import (
    EnergyGuidedVelocity,
    GuidanceSettings,
    guidance_weight,
    score_to_velocity_factor,
)
from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import CondOTScheduler, VPScheduler
from latent_flow.sampling.solvers import build_solver


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    specs = [
        AttributeSpec("shape", values=["circle", "square", "triangle"]),
        AttributeSpec("color", values=["red", "green", "blue", "cyan"]),
        AttributeSpec("size", values=["small", "large"]),
        AttributeSpec("hue", kind="continuous", sigma=0.5),
    ]
    clf = LatentAttributeClassifier((2, 4, 4), specs, width=8, depth=1, time_dim=16).double().eval()
    return clf


def _x(seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)


def _grad(fn, x, t):
    x = x.clone().requires_grad_(True)
    e = fn(x, t)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


def test_composed_energy_and_gradient_match_the_written_formula(classifier):
    cap = 3.0
    text = "2*shape=triangle & (color=red | color=blue@3) & !(size=small) & hue=0.7"
    energy = ComposedEnergy(text, classifier, not_cap=cap)

    def written(x, t):
        out = classifier(x, t)
        e_shape = -F.log_softmax(out["shape"], -1)[:, 2]
        e_red = -F.log_softmax(out["color"], -1)[:, 0]
        e_blue = -F.log_softmax(out["color"], -1)[:, 2]
        e_small = -F.log_softmax(out["size"], -1)[:, 0]
        e_hue = (out["hue"] - 0.7) ** 2 / (2 * 0.5**2)
        e_or = -torch.log(0.25 * torch.exp(-e_red) + 0.75 * torch.exp(-e_blue))
        e_not = -(cap - F.softplus(cap - e_small))
        return 2 * e_shape + e_or + e_not + e_hue

    x, t = _x()
    e1, g1 = _grad(energy, x, t)
    e2, g2 = _grad(written, x, t)
    torch.testing.assert_close(e1, e2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)
    # and the autograd gradient is the true derivative (central differences along a direction)
    d = torch.randn_like(x)
    h = 1e-6
    fd = (energy(x + h * d, t) - energy(x - h * d, t)) / (2 * h)
    torch.testing.assert_close((g1 * d).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-7)


def test_and_of_one_term_is_that_term_and_weights_scale(classifier):
    x, t = _x()
    single = ComposedEnergy("color=green", classifier)(x, t)
    out = classifier(x, t)
    torch.testing.assert_close(single, -F.log_softmax(out["color"], -1)[:, 1])
    wrapped = And((parse("color=green"),))
    torch.testing.assert_close(
        compose_energy(wrapped, lambda tm: classifier.term_energy(out, tm.attribute, tm.value)), single
    )
    torch.testing.assert_close(ComposedEnergy("3*color=green", classifier)(x, t), 3 * single)
    # OR of a condition with itself is the condition (mixture weights are normalised)
    torch.testing.assert_close(ComposedEnergy("color=green | color=green@5", classifier)(x, t), single)


def test_not_flips_the_guidance_direction(classifier):
    x, t = _x(seed=3, n=4)
    cap = 50.0  # far above the energies here: NOT is the plain negation
    path = AffinePath(CondOTScheduler())
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    settings = GuidanceSettings(scale=1.5, max_weight=100.0)
    pos = EnergyGuidedVelocity(zero, ComposedEnergy("size=large", classifier, not_cap=cap), path, settings)
    neg = EnergyGuidedVelocity(zero, ComposedEnergy("!(size=large)", classifier, not_cap=cap), path, settings)
    v_pos, v_neg = pos(x, t), neg(x, t)
    _, g = _grad(ComposedEnergy("size=large", classifier), x, t)
    e = ComposedEnergy("size=large", classifier)(x, t)
    # exact: grad(-softcap(E)) = -sigmoid(cap - E) grad E
    factor = torch.sigmoid(cap - e).view(-1, 1, 1, 1)
    torch.testing.assert_close(v_neg, -factor * v_pos)
    cos = F.cosine_similarity(v_pos.flatten(1), v_neg.flatten(1))
    assert torch.all(cos < -0.999)
    w = ((1 - t) / t).clamp(max=100.0).view(-1, 1, 1, 1)
    torch.testing.assert_close(v_pos, -1.5 * w * g)  # v - lambda w(t) grad E with v = 0


def test_guided_sampling_refuses_flowturbo_and_builds_the_others():
    from latent_flow.compositional.sampling import guided_solver

    with pytest.raises(ValueError, match=r"refiner steps skip the base model.*euler\|heun\|midpoint\|dopri5"):
        guided_solver("flowturbo", schedule="H1P5R3")
    assert guided_solver("heun", steps=4).steps == 4


def test_softcap_is_a_smooth_min():
    e = torch.tensor([0.0, 1.0, 4.0, 10.0, 100.0])
    s = softcap(e, 5.0)
    assert torch.all(s <= torch.minimum(e, torch.tensor(5.0)) + 1e-6)
    assert s[1] == pytest.approx(1.0, abs=0.02) and s[-1] == pytest.approx(5.0, abs=1e-6)


def test_guidance_weight_condot_and_vp():
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.9, 1.0], dtype=torch.float64)
    x = torch.zeros(len(t), 3)
    condot = AffinePath(CondOTScheduler())
    torch.testing.assert_close(score_to_velocity_factor(condot, t, x), (1 - t) / t)
    w = guidance_weight(condot, t, x.double(), GuidanceSettings(max_weight=10.0))
    torch.testing.assert_close(w, ((1 - t) / t).clamp(max=10.0))
    w = guidance_weight(condot, t, x.double(), GuidanceSettings(t_min=0.2, t_max=0.6))
    assert w[:2].tolist() == [0.0, 0.0] and w[-2:].tolist() == [0.0, 0.0] and w[3] == pytest.approx(1.0)
    vp = VPScheduler()
    s = 1 - t[:-1]
    torch.testing.assert_close(
        score_to_velocity_factor(AffinePath(vp), t[:-1], x[:-1]), 0.5 * (vp.beta_min + (vp.beta_max - vp.beta_min) * s)
    )
    with pytest.raises(ValueError, match="t_min <= t_max"):
        GuidanceSettings(t_min=0.7, t_max=0.2)


# ---------------------------------------------------------------------------------- 2-D toy
MEANS = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]], dtype=torch.float64)
NAMES = ["east", "west", "north", "south"]
S = 0.3


def _toy_velocity_and_logits(x: torch.Tensor, t: torch.Tensor):
    """Exact CondOT marginal velocity of the mixture and log-posteriors log p(k | x_t, t) (up to a constant)."""
    t = t.view(-1, 1)
    var = t**2 * S**2 + (1 - t) ** 2  # (B, 1)
    diff = x[:, None, :] - t[:, :, None] * MEANS[None]  # (B, K, 2)
    logits = -(diff**2).sum(-1) / (2 * var) - math.log(1.0)  # equal weights, same variance across k
    r = torch.softmax(logits, dim=1)
    v_k = MEANS[None] + ((t * S**2 - (1 - t)) / var)[:, :, None] * diff
    return (r[:, :, None] * v_k).sum(1), logits


class _ToyClassifier(nn.Module):
    """The exact class posterior of the toy mixture, with the classifier interface."""

    def __init__(self):
        super().__init__()
        self.specs = {"region": AttributeSpec("region", values=NAMES)}
        self.dummy = nn.Parameter(torch.zeros(()))

    attribute_values = property(lambda self: {"region": NAMES})
    continuous = property(lambda self: [])
    term_energy = LatentAttributeClassifier.term_energy

    def forward(self, x, t):
        return {"region": _toy_velocity_and_logits(x, t)[1]}


def _toy_sample(expression: str, solver_name: str, n: int = 256, scale: float = 1.0, **opts):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    energy = ComposedEnergy(expression, _ToyClassifier())
    vf = EnergyGuidedVelocity(
        lambda x, t: _toy_velocity_and_logits(x, t)[0],
        energy,
        AffinePath(CondOTScheduler()),
        GuidanceSettings(scale=scale, max_weight=50.0),
    )
    result = build_solver(solver_name, **opts).sample(vf, x0)
    region = torch.cdist(result.x, MEANS).argmin(1)
    return result, vf, region


@pytest.mark.parametrize(
    "solver, opts",
    [
        ("euler", {"steps": 40}),
        ("heun", {"steps": 20}),
        ("midpoint", {"steps": 20}),
        ("dopri5", {"atol": 1e-4, "rtol": 1e-4}),
    ],
)
def test_toy_guided_samples_land_in_the_requested_region(solver, opts):
    result, vf, region = _toy_sample("region=north", solver, **opts)
    assert (region == 2).float().mean() > 0.97
    assert vf.calls == result.nfe and 0 < vf.grad_evals <= result.nfe
    if solver != "dopri5":
        assert result.nfe == build_solver(solver, **opts).expected_nfe


def test_toy_unguided_is_balanced_and_or_not_requests():
    _, _, region = _toy_sample("region=north", "heun", scale=0.0, steps=20)
    counts = torch.bincount(region, minlength=4).double() / len(region)
    assert torch.all(counts > 0.15)  # no guidance: every component
    _, _, region = _toy_sample("region=west | region=south", "heun", steps=20)
    assert torch.isin(region, torch.tensor([1, 3])).float().mean() > 0.95
    assert (region == 1).float().mean() > 0.3 and (region == 3).float().mean() > 0.3
    _, _, region = _toy_sample("!(region=east)", "heun", steps=20, scale=2.0)
    assert (region == 0).float().mean() < 0.03
    # three capped NOTs leave mostly the fourth region (NOT cannot pull committed samples back out)
    _, _, region = _toy_sample("!(region=east) & !(region=west) & !(region=north)", "heun", steps=20, scale=2.0)
    assert (region == 3).float().mean() > 0.5 and (region == 3).float().mean() > 2 * counts[3]


def test_reverse_time_inverts_the_toy_flow():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    v = lambda x, t: _toy_velocity_and_logits(x, t)[0]  # noqa: E731
    solver = build_solver("heun", steps=100)
    x1 = solver.sample(v, x0).x
    back = solver.sample(reverse_time(v), x1).x
    assert (back - x0).abs().max() < 1e-2


def test_classifier_for_another_path_or_latent_space_is_refused():
    from types import SimpleNamespace

    from latent_flow.compositional.sampling import check_compatible

    model = SimpleNamespace(
        latent_shape=(4, 8, 8),
        hparams={
            "path": {"scheduler": {"name": "condot", "sigma_min": 0.0}},
            "latent_stats": {"mean": [0.0] * 4, "std": [1.0] * 4},
        },
    )
    ok = {
        "latent_shape": [4, 8, 8],
        "scheduler": {"name": "condot", "sigma_min": 0.0},
        "latent_stats": {"mean": [0.0] * 4, "std": [1.0] * 4},
    }
    check_compatible(model, ok)
    with pytest.raises(ValueError, match="path scheduler"):
        check_compatible(model, {**ok, "scheduler": {"name": "vp", "beta_min": 0.1, "beta_max": 20.0}})
    with pytest.raises(ValueError, match=r"latents \[4, 16, 16\]"):
        check_compatible(model, {**ok, "latent_shape": [4, 16, 16]})
    with pytest.raises(ValueError, match="normalised with"):
        check_compatible(model, {**ok, "latent_stats": {"mean": [0.5] * 4, "std": [1.0] * 4}})


def test_classifier_checkpoint_round_trip_and_heads(tmp_path, classifier):
    from latent_flow.compositional.classifier import load_classifier

    path = classifier.save(tmp_path / "c.pt", {"note": 1})
    loaded, meta = load_classifier(path)
    x, t = _x()
    out_a, out_b = classifier(x, t), loaded.double()(x, t)
    for k in out_a:
        torch.testing.assert_close(out_a[k], out_b[k])
    assert meta == {"note": 1} and out_a["shape"].shape == (3, 3) and out_a["hue"].shape == (3,)
    with pytest.raises(FileNotFoundError, match="classifier_ckpt_path"):
        load_classifier(tmp_path / "missing.pt")


def test_energy_guidance_on_top_of_label_cfg(classifier):
    """Guidance adds -lambda w(t) grad E to whatever the (CFG-)guided base velocity returns; one model call per NFE."""
    from latent_flow.sampling.guidance import classifier_free_guidance

    calls = []

    def model_fn(x, t, cond):
        calls.append(x.shape[0])
        return cond["label"].double().view(-1, 1, 1, 1) * torch.ones_like(x)  # v_c = label, v_u = null label

    cond, null = {"label": torch.tensor([1, 2, 0])}, {"label": torch.tensor([5, 5, 5])}
    base = classifier_free_guidance(model_fn, cond, null, scale=2.0)
    energy = ComposedEnergy("color=red & !(size=small)", classifier)
    vf = EnergyGuidedVelocity(base, energy, AffinePath(CondOTScheduler()), GuidanceSettings(scale=3.0))
    x, t = _x(n=3)
    v = vf(x, t)
    expected_base = 5 + 2.0 * (cond["label"].double() - 5)
    _, g = _grad(energy, x, t)
    w = ((1 - t) / t).clamp(max=10.0)
    torch.testing.assert_close(v, expected_base.view(-1, 1, 1, 1) - 3.0 * w.view(-1, 1, 1, 1) * g)
    assert calls == [6] and base.model_calls == 1 and vf.calls == 1 and vf.grad_evals == 1
