"""Objective terms and step rules, checked against direct computations."""

import math

import torch
import torch.nn.functional as F

from tlga_attacks import objectives
from tlga_attacks.steps import project, random_start, sign_step, temporal_step_size


def test_lipschitz_ratio_matches_formula():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 4, 5, 5)
    x_adv = x + 0.01 * torch.randn_like(x)
    out, out_adv = torch.randn(3, 7), torch.randn(3, 7)

    ratio = objectives.lipschitz_ratio(out_adv, out, x_adv, x)

    for n in range(3):
        expected = ((out_adv[n] - out[n]) ** 2).mean() / ((x_adv[n] - x[n]) ** 2).mean()
        assert torch.allclose(ratio[n], expected)


def test_lipschitz_ratio_guards_zero_distance():
    x = torch.rand(2, 3, 2, 4, 4)
    ratio = objectives.lipschitz_ratio(torch.ones(2, 3), torch.zeros(2, 3), x, x)
    assert torch.all(torch.isfinite(ratio))
    assert torch.allclose(ratio, torch.full((2,), 1e12))


def test_router_loss_targets_clean_top1():
    clean = [torch.tensor([[[2.0, 0.0, 1.0]], [[0.0, 3.0, 1.0]]])]
    adv = [torch.tensor([[[0.5, 0.2, 0.1]], [[0.3, 0.2, 0.9]]])]

    loss = objectives.router_loss(adv, clean)

    expected = F.cross_entropy(adv[0][:, 0], torch.tensor([0, 1]), reduction="none")
    assert torch.allclose(loss, expected)


def test_weakest_expert_guidance_targets_clean_argmin():
    clean = [torch.tensor([[[2.0, 0.0, 1.0]], [[0.0, 3.0, 1.0]]])]
    adv = [torch.tensor([[[0.5, 0.2, 0.1]], [[0.3, 0.2, 0.9]]])]

    loss = objectives.weakest_expert_guidance(adv, clean)

    expected = F.cross_entropy(adv[0][:, 0], torch.tensor([1, 0]), reduction="none")
    assert torch.allclose(loss, expected)


def test_router_terms_average_layers_and_units():
    torch.manual_seed(0)
    clean = [torch.randn(2, 5, 4), torch.randn(2, 5, 4)]
    adv = [torch.randn(2, 5, 4), torch.randn(2, 5, 4)]

    loss = objectives.router_loss(adv, clean)

    per_layer = [
        F.cross_entropy(a.reshape(-1, 4), c.argmax(-1).reshape(-1), reduction="none").reshape(2, 5).mean(1)
        for a, c in zip(adv, clean)
    ]
    assert torch.allclose(loss, (per_layer[0] + per_layer[1]) / 2)


def test_model_loss_targeted_is_negative_ce():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    assert torch.allclose(
        objectives.model_loss(logits, torch.tensor([0]), torch.tensor([2])),
        -F.cross_entropy(logits, torch.tensor([2]), reduction="none"),
    )


def test_temporal_step_size_matches_formula():
    grad = torch.zeros(1, 1, 3, 2, 2)
    grad[0, 0, 0] = 1.0  # frame norms 2, 0, 4
    grad[0, 0, 2] = 2.0
    eps, alpha, beta = 8 / 255, 0.5, 0.9

    step, velocity = temporal_step_size(grad, None, eps, alpha, beta, time_dim=2)
    assert step.shape == (1, 1, 3, 1, 1)
    norms = torch.tensor([2.0, 0.0, 4.0])
    scaled = norms / norms.mean()
    expected = alpha * eps / (1 + torch.log1p(scaled.sqrt()))
    assert torch.allclose(step.flatten(), expected)
    assert torch.allclose(velocity.flatten(), norms)

    step, velocity = temporal_step_size(grad, velocity, eps, alpha, beta, time_dim=2)
    assert torch.allclose(velocity.flatten(), beta * norms + norms)


def test_temporal_step_size_zero_gradient_takes_full_step():
    step, _ = temporal_step_size(torch.zeros(2, 3, 4, 2, 2), None, 0.1, 0.5, 0.9, time_dim=2)
    assert torch.allclose(step, torch.full_like(step, 0.05))


def test_temporal_step_size_time_first_layout():
    grad = torch.rand(2, 5, 3, 4, 4)  # (N, T, C, H, W)
    step, velocity = temporal_step_size(grad, None, 0.1, 0.5, 0.9, time_dim=1)
    assert step.shape == (2, 5, 1, 1, 1)
    assert velocity.shape == (2, 5)


def test_sign_step_moves_alpha_eps():
    x = torch.full((1, 1, 1, 1, 2), 0.5)
    grad = torch.tensor([[[[[3.0, -0.1]]]]])
    moved = sign_step(x, grad, eps=0.1, alpha=0.5)
    assert torch.allclose(moved.flatten(), torch.tensor([0.55, 0.45]))


def test_project_bound_exact_in_float32():
    torch.manual_seed(0)
    eps = 8 / 255
    x = torch.rand(64, 3, 4, 8, 8)
    candidate = x + torch.empty_like(x).uniform_(-3 * eps, 3 * eps)

    projected = project(candidate, x, eps)

    assert (projected - x).abs().max().item() <= eps
    assert bool(((projected - x).abs() <= eps).all())
    assert projected.min().item() >= 0.0
    assert projected.max().item() <= 1.0


def test_random_start_in_ball():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 2, 4, 4)
    start = random_start(x, 0.05)
    assert (start - x).abs().max().item() <= 0.05 + 1e-7
    assert not math.isclose((start - x).abs().sum().item(), 0.0)
