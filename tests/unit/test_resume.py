"""Resume state: RNG states round-trip, the resumable sampler continues its order, keyed latent draws."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from latent_flow.data.samplers import ResumableSampler, draw_key
from latent_flow.training.resume import collect_rng_states, set_rng_states


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_states_round_trip_and_load_with_weights_only():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _draws()
    states = collect_rng_states("cpu")
    expected = _draws()
    buffer = io.BytesIO()
    torch.save(states, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain tensors and numbers: no pickled numpy objects
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_states(loaded, "cpu")
    assert _draws() == expected


def _epoch(sampler: ResumableSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_ranks_are_disjoint_and_epochs_differ(world):
    samplers = [ResumableSampler(50, seed=4, num_replicas=world, rank=r) for r in range(world)]
    per_rank = [[i for i, _ in _epoch(s, 0)] for s in samplers]
    flat = [i for items in per_rank for i in items]
    assert len(flat) == len(set(flat)) == world * (50 // world)
    assert all(len(items) == len(samplers[0]) == 50 // world for items in per_rank)
    assert [i for i, _ in _epoch(samplers[0], 1)] != per_rank[0]
    assert [i for i, _ in _epoch(ResumableSampler(50, seed=4, num_replicas=world, rank=0), 0)] == per_rank[0]


@pytest.mark.parametrize("world, new_world", [(1, 1), (2, 2), (2, 3)])
def test_sampler_resumes_mid_epoch_where_it_stopped(world, new_world):
    consumed_per_rank = 6
    full = [_epoch(ResumableSampler(60, seed=0, num_replicas=world, rank=r), 2) for r in range(world)]
    state = ResumableSampler(60, seed=0, num_replicas=world).state_dict(consumed=consumed_per_rank * world)
    state["epoch"] = 2
    resumed = []
    for r in range(new_world):
        s = ResumableSampler(60, seed=0, num_replicas=new_world, rank=r)
        s.load_state_dict(state)
        resumed.append(_epoch(s, 2))
        assert len(_epoch(s, 2)) == len(s) == 60 // new_world  # only the first pass after the resume starts late
    if new_world == world:  # each rank continues its own sequence, the keys (per-item draws) included
        assert all(resumed[r] == full[r][consumed_per_rank:] for r in range(world))
    else:  # the remaining items of the epoch, split over the new ranks
        done = {i for r in range(world) for i, _ in full[r][:consumed_per_rank]}
        rest = [i for r in range(new_world) for i, _ in resumed[r]]
        assert len(rest) == len(set(rest)) and not done & set(rest)
        assert len(done) + len(rest) >= 60 - new_world
    other = ResumableSampler(60, seed=0, num_replicas=world, rank=0)
    other.load_state_dict({**state, "epoch": 1})  # another epoch's position does not apply to epoch 2
    assert _epoch(other, 2) == full[0]


def test_sampler_ignores_the_position_of_another_order():
    s = ResumableSampler(40, seed=0)
    with pytest.warns(UserWarning, match="num_items=30"):
        s.load_state_dict({"epoch": 0, "consumed": 8, "seed": 0, "num_items": 30, "shuffle": True})
    assert len(_epoch(s, 0)) == 40


def test_draw_keys_are_distinct_and_stable():
    keys = {draw_key(7, e, p) for e in range(4) for p in range(500)}
    assert len(keys) == 2000 and all(0 <= k < 2**63 for k in keys)
    assert draw_key(7, 1, 3) == draw_key(7, 1, 3) != draw_key(8, 1, 3)


def test_latent_dataset_choices_follow_the_key_not_the_global_rng(tmp_path):
    from latent_flow.autoencoders import IdentityAutoencoder
    from latent_flow.data import ShapesDataset
    from latent_flow.data.latent_cache import LatentCache

    data = ShapesDataset(num_samples=8, resolution=16, seed=0)
    cache = LatentCache(
        tmp_path, data, IdentityAutoencoder(), flip=True, name="t", extras={"masks": {}, "mask_variants": 3}
    )
    cache.build(progress=False)
    view = cache.dataset_view(random_flip=True)
    keys = [draw_key(0, 0, p) for p in range(40)]
    torch.manual_seed(0)
    a = [view[(p % 8, k)] for p, k in enumerate(keys)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    b = [view[(p % 8, k)] for p, k in enumerate(keys)]
    assert torch.equal(torch.get_rng_state(), state)  # keyed accesses leave the global RNG alone
    assert all(torch.equal(x[name], y[name]) for x, y in zip(a, b) for name in x)
    # the key varies the choices: both views and several mask variants over 5 accesses of each item
    seen: dict[int, set] = {}
    for p, x in enumerate(a):
        seen.setdefault(p % 8, set()).add(
            (x["mask"].sum().item(), x["latent"][..., 0].sum().item())
        )  # column 0: flip-sensitive
    assert sum(len(v) for v in seen.values()) > 8 + 4
