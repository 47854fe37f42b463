"""Distribution matching (DMD) on the CondOT path, against Gaussians whose velocities are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from latent_flow.flow.distribution_matching import distribution_matching_direction, distribution_matching_loss
from latent_flow.flow.path import AffinePath
from latent_flow.flow.schedulers import build_scheduler

PATH = AffinePath(build_scheduler("condot"))


def gaussian_velocity(x_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The CondOT velocity of data N(mean, I): ``E[x_1 | x_t] = mean + t / (t^2 + (1 - t)^2) (x_t - t mean)``."""
    tv = t.view(-1, *([1] * (x_t.dim() - 1)))
    x_data = mean + tv / (tv**2 + (1 - tv) ** 2) * (x_t - tv * mean)
    return PATH.data_to_velocity(x_t, x_data, t)


def test_the_direction_is_the_normalised_difference_of_the_gaussians_data_predictions():
    g = torch.Generator().manual_seed(0)
    mu_real, mu_fake = (
        torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64),
    )
    x = mu_fake + torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.02, 0.3, 0.5, 0.7, 0.98], dtype=torch.float64)
    noised = PATH.sample(torch.randn(x.shape, generator=g, dtype=torch.float64), x, t)
    v_real, v_fake = gaussian_velocity(noised.x_t, t, mu_real), gaussian_velocity(noised.x_t, t, mu_fake)
    direction = distribution_matching_direction(PATH, x, noised.x_t, t, v_real, v_fake)
    tv = t.view(-1, 1, 1, 1)
    # x_fake - x_real = (mu_fake - mu_real) (1 - t)^2 / (t^2 + (1 - t)^2), whatever x_t
    x_real = mu_real + tv / (tv**2 + (1 - tv) ** 2) * (noised.x_t - tv * mu_real)
    scale = (x - x_real).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    expected = (mu_fake - mu_real) * (1 - tv) ** 2 / (tv**2 + (1 - tv) ** 2) / scale
    torch.testing.assert_close(direction, expected)
    # equal velocities: no direction at all
    assert torch.equal(distribution_matching_direction(PATH, x, noised.x_t, t, v_real, v_real), torch.zeros_like(x))


def test_the_loss_gradient_is_the_direction_over_the_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 3, 3, generator=g).requires_grad_(True)
    t = torch.rand(4, generator=g) * 0.9 + 0.05
    x_t = torch.randn(4, 2, 3, 3, generator=g)
    v_real, v_fake = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    loss = distribution_matching_loss(PATH, x, x_t, t, v_real, v_fake)
    loss.backward()
    direction = distribution_matching_direction(PATH, x, x_t, t, v_real, v_fake)
    torch.testing.assert_close(x.grad, direction / 4)
    torch.testing.assert_close(loss, 0.5 * direction.flatten(1).square().sum(1).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_descent_moves_a_shifted_generator_onto_the_teachers_gaussian(seed):
    """A generator ``x = z + b`` whose fake flow is its own exact velocity (N(b, I)): descending the loss moves
    ``b`` to the teacher's mean (the sign, the path conversion and the normalisation together)."""
    g = torch.Generator().manual_seed(seed)
    mu_real = 2.0 * torch.randn(1, 4, generator=g)
    b = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([b], lr=0.2)
    for _ in range(300):
        z = torch.randn(256, 4, generator=g)
        x = z + b
        t = 0.02 + 0.96 * torch.rand(256, generator=g)
        noised = PATH.sample(torch.randn(256, 4, generator=g), x.detach(), t)
        v_real = gaussian_velocity(noised.x_t, t, mu_real)
        v_fake = gaussian_velocity(noised.x_t, t, b.detach())
        opt.zero_grad()
        distribution_matching_loss(PATH, x, noised.x_t, t, v_real, v_fake).backward()
        opt.step()
    torch.testing.assert_close(b.detach(), mu_real, atol=0.05, rtol=0.0)


def test_the_adversarial_losses_are_the_logistic_ones():
    """Closed forms: both logits 0 give log 2 (generator) and 2 log 2 (discriminator); the gradients are
    -sigmoid(-l) / B for the generator and sigmoid(l_fake) / B, -sigmoid(-l_real) / B for the discriminator."""
    from latent_flow.flow.distribution_matching import discriminator_loss, generator_loss

    zeros = torch.zeros(4)
    assert generator_loss(zeros).item() == pytest.approx(math.log(2.0))
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(2.0 * math.log(2.0))
    fake = torch.tensor([-3.0, 0.5, 2.0], requires_grad=True)
    real = torch.tensor([1.0, -0.5, 4.0], requires_grad=True)
    generator_loss(fake).backward()
    torch.testing.assert_close(fake.grad, -torch.sigmoid(-fake.detach()) / 3)
    fake.grad = None
    discriminator_loss(real, fake).backward()
    torch.testing.assert_close(fake.grad, torch.sigmoid(fake.detach()) / 3)
    torch.testing.assert_close(real.grad, -torch.sigmoid(-real.detach()) / 3)
    # a confident, correct discriminator has a vanishing loss; the generator's is then large
    assert discriminator_loss(torch.full((2,), 30.0), torch.full((2,), -30.0)).item() < 1e-10
    assert generator_loss(torch.full((2,), -30.0)).item() == pytest.approx(30.0, rel=1e-6)
