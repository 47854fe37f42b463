"""Post-hoc EMA: the power-function EMA, sigma_rel <-> gamma, and reconstruction from snapshots
against an EMA tracked directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latent_flow.training.posthoc_ema import (
    PostHocEMACallback,
    PowerEMA,
    gamma_to_sigma_rel,
    reconstruct,
    sigma_rel_to_gamma,
    solve_weights,
)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2])
def test_sigma_rel_and_gamma_are_inverse(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-9)
    # EDM2's reference values: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> gamma 6.94
    if sigma_rel == 0.05:
        assert gamma == pytest.approx(16.97, abs=0.01)
    if sigma_rel == 0.1:
        assert gamma == pytest.approx(6.94, abs=0.01)
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        sigma_rel_to_gamma(0.5)


def test_power_ema_weights_the_past_like_tau_to_the_gamma():
    """theta(t) = t gives theta_hat(T) -> int tau p(tau) = (gamma+1)/(gamma+2) T for large T."""
    gamma, steps = 6.94, 4000
    net = nn.Linear(1, 1, bias=False)
    avg = PowerEMA(net, gamma)
    for t in range(1, steps + 1):
        net.weight.data.fill_(float(t))
        avg.update(net)
    assert avg.params[0].item() == pytest.approx((gamma + 1) / (gamma + 2) * steps, rel=2e-3)


def test_solve_weights_is_exact_for_a_stored_profile():
    w = solve_weights([100, 200, 200], [6.94, 6.94, 16.97], 200, 16.97)
    assert np.allclose(w, [0, 0, 1], atol=1e-6)


def test_reconstruction_matches_an_ema_tracked_directly(tmp_path):
    """A noisy drifting 'training trajectory': the sigma_rel 0.07 average reconstructed from 0.05 /
    0.10 snapshots is close to the one tracked directly, much closer than either stored average."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Linear(8, 8)
    callback = PostHocEMACallback(out_dir=str(tmp_path), every_n_steps=100, sigma_rels=(0.05, 0.10))
    callback.averages = {"backbone": [PowerEMA(net, g) for g in callback.gammas]}
    direct = PowerEMA(net, sigma_rel_to_gamma(0.07))
    drift = torch.randn(8 * 8 + 8, generator=gen)
    for t in range(1, 3001):
        flat = drift * np.sqrt(t / 100) + torch.randn(8 * 8 + 8, generator=gen)
        net.weight.data.copy_(flat[:64].view(8, 8))
        net.bias.data.copy_(flat[64:])
        for avg in callback.averages["backbone"]:
            avg.update(net)
        direct.update(net)
        if t % 100 == 0:
            callback.save_snapshot(t)
    rec = reconstruct(tmp_path, 0.07)
    assert rec["step"] == 3000 and len(rec["weights"]) == 60
    got = torch.cat([t.flatten() for t in rec["networks"]["backbone"]])
    want = torch.cat([p.flatten() for p in direct.params])
    stored = [torch.cat([p.flatten() for p in avg.params]) for avg in callback.averages["backbone"]]
    err = (got - want).norm() / want.norm()
    spread = min((s - want).norm() for s in stored) / want.norm()
    print(f"reconstruction error {err:.2e}, nearest stored average {spread:.2e}")
    assert err < 0.01 and err < spread / 5
    # at an earlier snapshot only the snapshots up to it are used
    early = reconstruct(tmp_path, 0.07, step=1500)
    assert early["step"] == 1500 and len(early["weights"]) == 30
    with pytest.raises(ValueError, match="has no snapshot"):
        reconstruct(tmp_path, 0.07, step=1234)


def test_training_stores_snapshots_and_the_command_writes_a_usable_checkpoint(compose_cfg, tmp_path):
    from conftest import TINY_TRAIN
    from latent_flow.api import generate, load_model
    from latent_flow.posthoc_ema import run_posthoc_ema
    from latent_flow.train import run_training

    run_training(compose_cfg("train", TINY_TRAIN + ["callbacks=posthoc_ema"]))
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "posthoc_ema").glob("phema_*.pt")) == ["phema_0000003.pt", "phema_0000006.pt"]
    ckpt = run / "checkpoints" / "last.ckpt"
    summary = run_posthoc_ema(compose_cfg("posthoc_ema", [f"ckpt_path={ckpt}", "sigma_rel=0.1"]))
    assert summary["step"] == 6 and Path(summary["out_path"]).name == "posthoc_sigma0.1.ckpt"
    # sigma_rel 0.10 is stored: the reconstruction is that average itself
    stored = torch.load(run / "posthoc_ema" / "phema_0000006.pt", weights_only=False)["averages"]["backbone"][1]
    model = load_model(summary["out_path"], device="cpu")
    for got, want in zip(model.ema.module.parameters(), stored):
        assert torch.allclose(got, want, atol=1e-5)
    original = load_model(ckpt, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(model.ema.module.parameters(), original.ema.module.parameters()))
    images, _ = generate(model, num_samples=2, sampler="euler", steps=2, labels=[0, 1])
    assert images.shape[0] == 2 and torch.isfinite(images).all()


def test_ema_with_sigma_rel_is_the_power_function_average_of_the_weights():
    from latent_flow.training.ema import EMA, gamma_to_sigma_rel, sigma_rel_to_gamma

    sigma_rel = 0.2
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-9)
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, sigma_rel=sigma_rel)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).float())
        history.append(torch.cat([p.detach().flatten().double() for p in net.parameters()]))
        ema.update(net)
    # closed form: update i (1-based) has weight (1 - beta_i) prod_{j > i} beta_j, beta_i = (1 - 1/i)^(gamma + 1)
    betas = [(1.0 - 1.0 / i) ** (gamma + 1.0) for i in range(1, 41)]
    weights = [(1.0 - betas[i]) * float(np.prod(betas[i + 1 :])) for i in range(40)]
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    expected = sum(w * h for w, h in zip(weights, history))
    got = torch.cat([p.flatten().double() for p in ema.module.parameters()])
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        EMA(net, sigma_rel=0.5)
