"""Minibatch OT coupling: exact assignment (against brute force), groups, marginals, module wiring."""

from __future__ import annotations

import itertools

import pytest
import torch

from latent_flow.flow.coupling import check_coupling, couple, ot_noise_permutation
from latent_flow.training.module import LatentFlowModule


def _cost(x_noise, x_data, perm):
    return float(((x_noise[perm] - x_data) ** 2).sum())


def test_ot_assignment_is_the_brute_force_minimum():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x_noise = torch.randn(6, 3, 2, 2, generator=gen)
        x_data = torch.randn(6, 3, 2, 2, generator=gen) + 1.0
        perm = ot_noise_permutation(x_noise, x_data)
        assert sorted(perm.tolist()) == list(range(6))  # every noise draw used exactly once
        best = min(_cost(x_noise, x_data, torch.tensor(p)) for p in itertools.permutations(range(6)))
        assert _cost(x_noise, x_data, perm) == pytest.approx(best, rel=1e-12)
        assert _cost(x_noise, x_data, perm) <= _cost(x_noise, x_data, torch.arange(6))


def test_ot_within_groups_keeps_noise_in_its_group_and_is_optimal_there():
    gen = torch.Generator().manual_seed(1)
    x_noise = torch.randn(9, 4, generator=gen)
    x_data = torch.randn(9, 4, generator=gen)
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 1, 0, 1])
    perm = ot_noise_permutation(x_noise, x_data, groups)
    assert sorted(perm.tolist()) == list(range(9))
    assert torch.equal(groups[perm], groups)  # noise of a class stays with that class's data
    assert perm[3] == 3  # a group of one keeps its own draw
    for g in (0, 1):
        idx = torch.nonzero(groups == g).flatten()
        best = min(_cost(x_noise[idx], x_data[idx], torch.tensor(p)) for p in itertools.permutations(range(len(idx))))
        local = torch.tensor([int(torch.nonzero(idx == j)) for j in perm[idx]])
        assert _cost(x_noise[idx], x_data[idx], local) == pytest.approx(best, rel=1e-12)


def test_ot_pairs_a_shifted_copy_back_to_its_source():
    # data = noise shuffled and shifted by a small constant: the unique optimum undoes the shuffle
    gen = torch.Generator().manual_seed(2)
    x_noise = torch.randn(32, 2, 8, 8, generator=gen)
    shuffle = torch.randperm(32, generator=gen)
    x_data = x_noise[shuffle] + 0.01
    assert torch.equal(couple("ot", x_noise, x_data), x_noise[shuffle])
    assert couple("independent", x_noise, x_data) is x_noise


def test_coupling_errors():
    with pytest.raises(ValueError, match=r"path.coupling must be one of \['independent', 'ot'\], got 'sinkhorn'"):
        check_coupling("sinkhorn")
    with pytest.raises(ValueError, match="spatial condition"):
        check_coupling("ot", spatial_condition=True)
    with pytest.raises(ValueError, match="must have one shape"):
        ot_noise_permutation(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"groups must have shape \(3,\)"):
        ot_noise_permutation(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))


def _module(condition, coupling):
    return LatentFlowModule(
        backbone={"name": "UNet-T"},
        condition=condition,
        path={"scheduler": {"name": "condot"}, "coupling": coupling},
        optim={"lr": 1e-3},
        ema=None,
        latent_shape=(4, 8, 8),
        num_classes=5,
    )


def test_module_trains_on_ot_pairs_within_each_label():
    module = _module({"name": "label", "label_dropout": 0.0}, "ot")
    gen = torch.Generator().manual_seed(3)
    batch = {"latent": torch.randn(12, 4, 8, 8, generator=gen) * 2, "label": torch.arange(12) % 3}
    seen = {}

    def spy(x_noise, x_data, t):
        seen["noise"] = x_noise
        return module.path.__class__.sample(module.path, x_noise, x_data, t)

    module.path.sample = spy
    module._loss(batch, use_ema=False, generator=torch.Generator().manual_seed(4))
    drawn = torch.randn(batch["latent"].shape, generator=torch.Generator().manual_seed(4))
    assert torch.equal(seen["noise"], couple("ot", drawn, batch["latent"], batch["label"]))
    assert not torch.equal(seen["noise"], drawn)  # re-paired, not the independent draw
    with pytest.raises(ValueError, match="spatial condition"):
        _module({"name": "inpaint", "resolution": 32}, "ot")
