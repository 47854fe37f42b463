"""Autoguidance (Karras et al. 2024): the guided velocity in closed form, routing, NFE, checks."""

from __future__ import annotations

import pytest
import torch

from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import CondOTScheduler, SchedulerOutput
from latent_flow.sampling.guidance import GUIDE_ROW, autoguidance
from latent_flow.sampling.solvers import EulerSolver, HeunSolver


def _main(x, t, c):
    return -x + c["label"].float()[:, None] + t[:, None]


def _guide(x, t, c):
    return -0.5 * x + 0.3 * c["label"].float()[:, None]


def test_autoguided_velocity_is_guide_plus_scale_times_the_difference():
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    cond = {"label": torch.tensor([0, 1, 2, 1, 0])}
    for scale in (0.0, 1.0, 2.5):
        v = autoguidance(_main, _guide, cond, scale)(x, t)
        expected = _guide(x, t, cond) + scale * (_main(x, t, cond) - _guide(x, t, cond))
        assert torch.allclose(v, expected, atol=1e-12)


def test_scale_one_is_the_main_model_alone_and_never_calls_the_guide():
    calls = []

    def guide(x, t, c):
        calls.append(len(x))
        return _guide(x, t, c)

    x, t = torch.randn(4, 3), torch.rand(4)
    cond = {"label": torch.tensor([0, 1, 2, 3])}
    velocity = autoguidance(_main, guide, cond, 1.0)
    assert torch.equal(velocity(x, t), _main(x, t, cond)) and calls == [] and velocity.guided_calls == 0


def test_interval_routes_rows_and_counts_the_guide_evaluations():
    rows = {"main": 0, "guide": 0}

    def main(x, t, c):
        rows["main"] += len(x)
        return _main(x, t, c)

    def guide(x, t, c):
        assert GUIDE_ROW not in c  # the marker never reaches a network
        rows["guide"] += len(x)
        return _guide(x, t, c)

    cond = {"label": torch.tensor([1, 2, 0, 1])}
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9, 0.2], dtype=torch.float64)
    velocity = autoguidance(main, guide, cond, 3.0, interval=(0.3, 1.0))
    v = velocity(x, t)
    inside = t >= 0.3
    full = _guide(x, t, cond) + 3.0 * (_main(x, t, cond) - _guide(x, t, cond))
    assert torch.allclose(v[inside], full[inside]) and torch.allclose(v[~inside], _main(x, t, cond)[~inside])
    assert rows == {"main": 4, "guide": 2} and velocity.model_calls == 1 and velocity.guided_calls == 1


def test_solver_nfe_and_guide_nfe_with_a_guide_equal_to_the_model_give_the_plain_samples():
    cond = {"label": torch.tensor([0, 1, 2])}
    x0 = torch.randn(3, 2, dtype=torch.float64)
    plain = HeunSolver(steps=4).sample(lambda x, t: _main(x, t, cond), x0)
    velocity = autoguidance(_main, _main, cond, 2.0)  # v_g + s (v - v_g) = v when the guide is the model
    guided = HeunSolver(steps=4).sample(velocity, x0)
    assert torch.allclose(guided.x, plain.x, atol=1e-12) and guided.nfe == plain.nfe == 8
    assert velocity.guided_calls == 8
    assert EulerSolver(steps=5).sample(autoguidance(_main, _guide, cond, 2.0), x0).nfe == 5


def _module(**overrides):
    from latent_flow.training.module import LatentFlowModule

    kwargs = dict(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=(4, 8, 8),
        num_classes=3,
        latent_stats={"mean": [0.0] * 4, "std": [1.0] * 4},
        autoencoder={"name": "identity"},
    )
    kwargs.update(overrides)
    return LatentFlowModule(**kwargs)


def test_check_guide_names_what_differs():
    from latent_flow.training.checkpoints import check_guide

    model = _module()
    check_guide(model, _module(backbone={"name": "DiT-XS/2"}, ema={"decay": 0.5}))  # another run of the same space
    with pytest.raises(ValueError, match="its latent shape is"):
        check_guide(model, _module(latent_shape=(4, 4, 4)))
    with pytest.raises(ValueError, match="its number of classes is 5"):
        check_guide(model, _module(num_classes=5))
    with pytest.raises(ValueError, match=r"its latent std \(normalisation\)"):
        check_guide(model, _module(latent_stats={"mean": [0.0] * 4, "std": [2.0] * 4}))
    with pytest.raises(ValueError, match="its condition is"):
        check_guide(model, _module(condition={"name": "none"}))


class _DataAtZero(CondOTScheduler):
    """CondOT written with the other time convention (t = 0 data, t = 1 noise), as another codebase's guide."""

    def __call__(self, t):
        out = super().__call__(1.0 - t)
        return SchedulerOutput(out.alpha_t, out.sigma_t, -out.d_alpha_t, -out.d_sigma_t)


def test_check_guide_refuses_a_guide_of_another_probability_path():
    from latent_flow.training.checkpoints import check_guide

    model = _module()
    # the same path spelled otherwise, or trained with other times: the same velocity field's path
    check_guide(model, _module(path={"scheduler": {"name": "condot", "sigma_min": 0.0}}))
    check_guide(model, _module(path={"scheduler": {"name": "condot"}, "time_sampler": {"name": "logit_normal"}}))
    with pytest.raises(ValueError, match=r"its probability path's scheduler .* is 'VPScheduler\(beta_min=0.1.*CondOT"):
        check_guide(model, _module(path={"scheduler": {"name": "vp"}}))
    with pytest.raises(ValueError, match=r"scheduler \(alpha_t, sigma_t differ by up to 0.01\).*sigma_min=0.01"):
        check_guide(model, _module(path={"scheduler": {"name": "condot", "sigma_min": 0.01}}))
    with pytest.raises(ValueError, match="its probability path's coupling is 'ot', the model's is 'independent'"):
        check_guide(model, _module(path={"scheduler": {"name": "condot"}, "coupling": "ot"}))
    reversed_guide = _module()
    reversed_guide.path = AffinePath(_DataAtZero())
    with pytest.raises(ValueError, match="time convention is 't = 0 data, t = 1 noise', the model's is 't = 0 noise"):
        check_guide(model, reversed_guide)


def test_sample_latents_with_a_guide_reports_guide_nfe_and_flowturbo_refuses_it():
    from latent_flow.flowturbo import build_flowturbo_solver

    model, guide = _module().eval(), _module().eval()
    result = model.sample_latents(
        HeunSolver(steps=2), indices=range(3), labels=torch.tensor([0, 1, 2]), cfg_scale=2.0, guide=guide
    )
    assert result.nfe == 4 and result.guide_nfe == 4 and torch.isfinite(result.x).all()
    solver = build_flowturbo_solver(model, schedule="H2")
    with pytest.raises(ValueError, match="does not support autoguidance"):
        model.sample_latents(solver, indices=range(2), labels=torch.tensor([0, 1]), cfg_scale=2.0, guide=guide)
