"""Backbones as flow maps: the second time ``t_end``, its exact reduction to the velocity network at
``t_end = t``, flow weights loaded into a flow map, and the JVP through attention against finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latent_flow.backbones import build_backbone
from latent_flow.backbones.attention import attention, has_forward_tangent, math_attention

BACKBONES = ["DiT-XS/2", "UNet-T"]


def _net(name: str, *, flow_map: bool, dtype=torch.float32, seed: int = 0, perturb: bool = True):
    torch.manual_seed(seed)
    net = build_backbone(
        name, input_size=8, in_channels=3, out_channels=2, num_classes=4, class_dropout_prob=0.0, flow_map=flow_map
    ).to(dtype)
    if perturb:  # the zero-initialised layers would hide everything
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _inputs(dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 8, 8, generator=g).to(dtype)
    t = torch.rand(3, generator=g).to(dtype) * 0.8
    y = torch.tensor([0, 2, 4])  # 4 = the null label
    return x, t, y


@pytest.mark.parametrize("name", BACKBONES)
def test_equal_times_are_exactly_the_velocity_network(name):
    net = _net(name, flow_map=True)
    x, t, y = _inputs()
    assert torch.equal(net(x, t, y, t_end=t), net(x, t, y))
    assert not torch.allclose(net(x, t, y, t_end=t + 0.3), net(x, t, y))  # the interval does enter
    # and the reduction does not depend on the interval embedder's weights
    with torch.no_grad():
        for p in net.h_embedder.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(net(x, t, y, t_end=t), net(x, t, y))


@pytest.mark.parametrize("name", BACKBONES)
def test_flow_weights_in_a_flow_map_give_the_flow_for_every_interval(name):
    flow = _net(name, flow_map=False, seed=3)
    flow_map = _net(name, flow_map=True, seed=4, perturb=False)
    result = flow_map.load_state_dict(flow.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("h_embedder.") for k in result.missing_keys)
    x, t, y = _inputs()
    for t_end in (t, t + 0.2, torch.ones_like(t)):
        assert torch.equal(flow_map(x, t, y, t_end=t_end), flow(x, t, y))


@pytest.mark.parametrize("name", BACKBONES)
def test_a_velocity_network_refuses_a_landing_time(name):
    net = _net(name, flow_map=False)
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="flow_map"):
        net(x, t, y, t_end=t)
    assert not any(k.startswith("h_embedder") for k in net.state_dict())


def test_fused_attention_has_no_forward_derivative_and_the_math_path_does():
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    tangents = tuple(torch.randn_like(q) for _ in range(3))
    with pytest.raises(NotImplementedError):  # why the math path exists (torch 2.14, CPU)
        torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), tangents)
    out, tangent = torch.func.jvp(attention, (q, k, v), tangents)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-14)
    eps = 1e-6
    plus = math_attention(*(a + eps * b for a, b in zip((q, k, v), tangents)))
    minus = math_attention(*(a - eps * b for a, b in zip((q, k, v), tangents)))
    assert torch.allclose(tangent, (plus - minus) / (2 * eps), atol=1e-8)
    assert not has_forward_tangent(q, k, v)


@pytest.mark.parametrize("name", BACKBONES)
def test_the_backbone_jvp_equals_finite_differences(name):
    """``torch.func.jvp`` of the whole flow-map backbone (attention included), float64, with the MeanFlow tangent
    ``(v, 1, 0)`` on ``(x, t, t_end)`` and with ``(0, 0, 1)``; also in training mode with gradient checkpointing."""
    net = _net(name, flow_map=True, dtype=torch.float64)
    x, t, y = _inputs(torch.float64)
    t_end = t + 0.15
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v[:, 2:] = 0  # a spatial-condition channel does not move
    f = lambda a, b, c: net(a, b, y, t_end=c)  # noqa: E731
    eps = 1e-6
    for tangent in ((v, torch.ones_like(t), torch.zeros_like(t)), (0 * v, 0 * t, torch.ones_like(t))):
        out, jvp = torch.func.jvp(f, (x, t, t_end), tangent)
        plus = f(*(a + eps * b for a, b in zip((x, t, t_end), tangent)))
        minus = f(*(a - eps * b for a, b in zip((x, t, t_end), tangent)))
        fd = (plus - minus) / (2 * eps)
        assert jvp.abs().max() > 1e-3
        assert torch.allclose(jvp, fd, rtol=1e-5, atol=1e-7 * jvp.abs().max().item())
        assert torch.allclose(out, f(x, t, t_end), atol=1e-12)  # math attention under jvp, SDPA outside
    net.grad_checkpointing = True
    net.train()
    out, jvp_train = torch.func.jvp(f, (x, t, t_end), (v, torch.ones_like(t), torch.zeros_like(t)))
    out.sum().backward()  # the primal keeps its graph to the weights
    assert net.h_embedder.mlp[2].weight.grad is not None
    assert torch.allclose(jvp_train, torch.func.jvp(f, (x, t, t_end), (v, torch.ones_like(t), 0 * t))[1])


@pytest.mark.parametrize("name", BACKBONES)
def test_time_scale_rescales_both_times_of_the_embeddings(name):
    """``time_scale=s`` at ``(t, t_end)`` is the default network (1000) at ``(t, t_end) * s / 1000``, weights equal:
    the factor enters only the sinusoids of the time and of the interval."""
    ref = _net(name, flow_map=True)
    torch.manual_seed(0)
    scaled = build_backbone(
        name,
        input_size=8,
        in_channels=3,
        out_channels=2,
        num_classes=4,
        class_dropout_prob=0.0,
        flow_map=True,
        time_scale=10.0,
    ).eval()
    scaled.load_state_dict(ref.state_dict())
    assert scaled.time_scale == 10.0 and scaled.t_embedder.time_scale == 10.0 and scaled.h_embedder.time_scale == 10.0
    x, t, y = _inputs(dtype=torch.float64)
    ref, scaled = ref.double(), scaled.double()
    t_end = t + 0.2
    torch.testing.assert_close(scaled(x, t, y, t_end=t_end), ref(x, t / 100, y, t_end=t_end / 100))
    assert not torch.allclose(scaled(x, t, y, t_end=t_end), ref(x, t, y, t_end=t_end))


@pytest.mark.parametrize("name", BACKBONES)
def test_time_scale_must_be_positive(name):
    with pytest.raises(ValueError, match="time_scale must be positive, got 0.0"):
        build_backbone(name, input_size=8, in_channels=3, num_classes=4, time_scale=0.0)
