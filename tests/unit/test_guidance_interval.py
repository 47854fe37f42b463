"""Classifier-free guidance restricted to a time interval (t = 0 noise, t = 1 data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latent_flow.sampling import EulerSolver, HeunSolver, check_guidance_interval, classifier_free_guidance


class CondNet(nn.Module):
    """``v(x, t | y)`` with a label embedding (null class = 4); records the rows of every call."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(dim, dim)
        self.emb = nn.Embedding(5, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        return torch.tanh(self.lin(x)) * (1 + t[:, None]) + self.emb(cond["y"]) * t[:, None]


def _inputs(batch: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 6, generator=g)
    cond = {"y": torch.tensor([0, 1, 2, 3, 1][:batch])}
    null = {"y": torch.full((batch,), 4)}
    return x, cond, null


@pytest.mark.parametrize("solver", [EulerSolver(steps=7), HeunSolver(steps=5)])
def test_full_interval_is_plain_cfg_bit_for_bit(solver) -> None:
    net = CondNet()
    x, cond, null = _inputs()
    plain = classifier_free_guidance(net, cond, null, 2.5)
    full = classifier_free_guidance(net, cond, null, 2.5, interval=[0.0, 1.0])
    a, b = solver.sample(plain, x), solver.sample(full, x)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    assert plain.forward_samples == full.forward_samples == 2 * 5 * a.nfe


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0)])
def test_empty_interval_is_the_conditional_velocity(interval) -> None:
    net = CondNet()
    x, cond, null = _inputs()
    solver = HeunSolver(steps=4)
    cond_only = solver.sample(classifier_free_guidance(net, cond, null, 1.0), x)
    net.calls.clear()
    empty = classifier_free_guidance(net, cond, null, 3.0, interval=interval)
    out = solver.sample(empty, x)
    assert torch.equal(out.x, cond_only.x)
    assert net.calls == [5] * 8 and empty.forward_samples == 5 * 8 and empty.guided_calls == 0


def test_model_rows_are_b_outside_and_2b_inside() -> None:
    net = CondNet()
    x, cond, null = _inputs()
    v = classifier_free_guidance(net, cond, null, 2.0, interval=[0.3, 0.7])
    r = EulerSolver(steps=10).sample(v, x)  # times 0, 0.1, ..., 0.9: guided at 0.3, 0.4, 0.5, 0.6
    assert r.nfe == 10 == v.model_calls
    assert net.calls == [5, 5, 5, 10, 10, 10, 10, 5, 5, 5]
    assert v.forward_samples == 6 * 5 + 4 * 10 and v.guided_calls == 4
    # the right end is closed at t = 1 only: Heun's last evaluation (t = 1) is guided with [0.5, 1]
    net.calls.clear()
    v = classifier_free_guidance(net, cond, null, 2.0, interval=[0.5, 1.0])
    HeunSolver(steps=2).sample(v, x)  # evaluations at 0, 0.5 | 0.5, 1
    assert net.calls == [5, 10, 10, 10]


def test_guided_steps_equal_plain_cfg_and_outside_steps_the_conditional_velocity() -> None:
    net = CondNet()
    x, cond, null = _inputs()
    t_in, t_out = torch.full((5,), 0.4), torch.full((5,), 0.8)
    v = classifier_free_guidance(net, cond, null, 2.0, interval=[0.3, 0.7])
    torch.testing.assert_close(v(x, t_in), classifier_free_guidance(net, cond, null, 2.0)(x, t_in), rtol=0, atol=0)
    torch.testing.assert_close(v(x, t_out), net(x, t_out, cond), rtol=0, atol=0)


def test_rows_at_different_times_are_guided_row_by_row_in_one_call() -> None:
    net = CondNet()
    x, cond, null = _inputs()
    t = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.7])  # inside [0.3, 0.7): rows 1 and 3
    v = classifier_free_guidance(net, cond, null, 2.0, interval=[0.3, 0.7])
    out = v(x, t)
    assert net.calls == [5 + 2] and v.forward_samples == 7 and v.model_calls == 1
    v_c, v_u = net(x, t, cond), net(x, t, null)
    inside = torch.tensor([False, True, False, True, False])
    ref = torch.where(inside[:, None], v_u + 2.0 * (v_c - v_u), v_c)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    "bad", [(0.7, 0.3), (-0.1, 0.5), (0.2, 1.5), (0.5,), (0.1, 0.2, 0.3), "ab", (float("nan"), 1.0), 3]
)
def test_invalid_intervals_raise(bad) -> None:
    net = CondNet()
    _, cond, null = _inputs()
    with pytest.raises(ValueError, match="invalid guidance interval"):
        classifier_free_guidance(net, cond, null, 2.0, interval=bad)
    with pytest.raises(ValueError, match="invalid guidance interval"):
        check_guidance_interval(bad)


def test_interval_through_the_model_and_flowturbo_refuses_it() -> None:
    from latent_flow.flowturbo import FlowTurboSolver, TurboNetworks, base_network
    from latent_flow.training.module import LatentFlowModule

    torch.manual_seed(0)
    model = LatentFlowModule(
        backbone={"name": "DiT-XS/2"},
        condition={"name": "label", "label_dropout": 0.1},
        path={"scheduler": {"name": "condot"}},
        optim={"lr": 1e-3},
        ema={"decay": 0.9},
        latent_shape=[4, 8, 8],
        num_classes=3,
    )
    labels = torch.tensor([0, 1, 2])
    solver = HeunSolver(steps=3)
    plain = model.sample_latents(solver, indices=range(3), labels=labels, cfg_scale=2.0)
    full = model.sample_latents(solver, indices=range(3), labels=labels, cfg_scale=2.0, cfg_interval=[0.0, 1.0])
    assert torch.equal(plain.x, full.x)
    cond = model.sample_latents(solver, indices=range(3), labels=labels, cfg_scale=1.0)
    empty = model.sample_latents(solver, indices=range(3), labels=labels, cfg_scale=2.0, cfg_interval=[0.2, 0.2])
    assert torch.equal(cond.x, empty.x)
    with pytest.raises(ValueError, match="invalid guidance interval"):
        model.sample_latents(solver, indices=range(3), labels=labels, cfg_scale=2.0, cfg_interval=[0.9, 0.1])
    turbo = FlowTurboSolver("H1P2", TurboNetworks(base_network(model), None, model.condition))
    with pytest.raises(ValueError, match="flowturbo does not support a guidance interval"):
        model.sample_latents(turbo, indices=range(3), labels=labels, cfg_scale=2.0, cfg_interval=[0.0, 0.7])
    # a full interval is plain CFG there too
    model.sample_latents(turbo, indices=range(3), labels=labels, cfg_scale=2.0, cfg_interval=[0.0, 1.0])
