"""Step rules and the L-infinity projection shared by every attack of the family.

A step rule maps the current iterate and the gradient of the objective to the next iterate
before projection. ``alpha`` is relative to ``eps`` throughout: a step of ``alpha * eps``.
"""

import math
from typing import Optional, Tuple

import torch

__all__ = [
    "MEAN_FRAME_DIVISOR",
    "clip_to_bounds",
    "eps_ball_bounds",
    "project",
    "random_start",
    "sign_step",
    "temporal_step",
    "temporal_step_size",
]

MIN_MEAN_VELOCITY = 1e-12

# The temporal step divides alpha * eps by 1 + log(1 + sqrt(Vs)). A frame whose accumulated
# gradient norm equals the clip's mean has Vs = 1, so its step is alpha * eps / (1 + log 2).
MEAN_FRAME_DIVISOR = 1.0 + math.log(2.0)


def sign_step(x_adv: torch.Tensor, grad: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    """Constant signed-gradient step: ``x' + alpha * eps * sign(g)``."""
    return x_adv + (alpha * eps) * grad.sign()


def temporal_step_size(
    grad: torch.Tensor,
    velocity: Optional[torch.Tensor],
    eps: float,
    alpha: float,
    beta: float,
    time_dim: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-frame step sizes of the temporal adaptive step.

    For sample n and frame t, with G[n, t] the L2 norm of the gradient over frame t::

        V[n, t] <- beta * V[n, t] + G[n, t]          (V starts at 0)
        Vs[n, t] = V[n, t] / mean over t of V[n, t]
        step[n, t] = alpha * eps / (1 + log(1 + sqrt(Vs[n, t])))

    Frames whose gradient has been large take smaller steps. Normalizing V by its mean over
    time makes the step independent of the objective's scale (the library's own choice).

    Arguments:
        grad: (N, ...) gradient, with frames along ``time_dim``.
        velocity: (N, T) accumulated norms from the previous step, or None at the first step.

    Returns:
        ``(step, velocity)``: step broadcastable to ``grad`` (size 1 except on the batch and
        time dimensions), and the updated (N, T) velocity.
    """
    frames = grad.movedim(time_dim, 1)
    norms = frames.reshape(frames.shape[0], frames.shape[1], -1).norm(dim=2)

    velocity = norms if velocity is None else beta * velocity + norms
    scaled = velocity / velocity.mean(dim=1, keepdim=True).clamp_min(MIN_MEAN_VELOCITY)
    step = (alpha * eps) / (1.0 + torch.log1p(scaled.sqrt()))

    shape = [1] * grad.dim()
    shape[0], shape[time_dim] = grad.shape[0], grad.shape[time_dim]
    return step.reshape(shape).to(grad.dtype), velocity


def temporal_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    velocity: Optional[torch.Tensor],
    eps: float,
    alpha: float,
    beta: float,
    time_dim: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Temporal adaptive step: ``x' + step[n, t] * sign(g)``; see ``temporal_step_size``.

    Returns the next iterate (before projection) and the updated velocity.
    """
    step, velocity = temporal_step_size(grad, velocity, eps, alpha, beta, time_dim)
    return torch.addcmul(x_adv, step, grad.sign()), velocity


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-infinity ball of radius ``eps`` around ``x`` and onto [0, 1].

    The bound holds exactly in the tensor's floating-point arithmetic: ``(result - x).abs()``
    never exceeds ``eps``, not even by one rounding error of ``x + eps``.
    """
    lower, upper = eps_ball_bounds(x, eps)
    return clip_to_bounds(x_adv, lower, upper)


def eps_ball_bounds(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Elementwise bounds of the eps-ball around ``x`` intersected with [0, 1].

    Computed once per batch, so that each step projects with one clamp. Where ``x + eps``
    rounds to a value farther than eps from x, the bound moves one ulp toward x.
    """
    bound = _representable_eps(eps, x)
    upper = x + bound
    lower = x - bound
    upper = torch.where(upper - x > bound, torch.nextafter(upper, x), upper).clamp_(max=1.0)
    lower = torch.where(x - lower > bound, torch.nextafter(lower, x), lower).clamp_(min=0.0)
    return lower, upper


def clip_to_bounds(x_adv: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Clamp elementwise to the bounds from ``eps_ball_bounds``."""
    return torch.clamp(x_adv, min=lower, max=upper)


def _representable_eps(eps: float, like: torch.Tensor) -> torch.Tensor:
    """Return the largest value of ``like``'s dtype that is at most ``eps``."""
    bound = torch.tensor(eps, dtype=like.dtype)
    if bound.item() > eps:
        bound = torch.nextafter(bound, torch.zeros_like(bound))
    return bound.to(like.device)


def random_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Uniform random point of the eps-ball around ``x``, clipped to [0, 1]."""
    noise = torch.empty_like(x).uniform_(-eps, eps)
    return torch.clamp(x + noise, min=0.0, max=1.0)
