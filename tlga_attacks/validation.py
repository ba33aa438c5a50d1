"""Validation of attack parameters and inputs, in one place.

Every check raises ``ValueError`` that names the argument, its value and what is allowed.
"""

import math
import numbers
from typing import Optional, Tuple

import torch

__all__ = [
    "RANGE_TOLERANCE",
    "check_attack_params",
    "check_labels",
    "check_videos",
]

# Values this far outside [0, 1] are clipped instead of rejected: undoing a normalization
# with (x * std + mean) leaves rounding errors of this size.
RANGE_TOLERANCE = 1e-6


def _check_real(name: str, value, low: float, high: float = math.inf, low_open: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be in {left}{low}, {high}], got {value!r}")


def _check_int(name: str, value, low: int):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_attack_params(
    eps,
    alpha,
    steps,
    restarts=1,
    beta=None,
    gamma1=None,
    gamma2=None,
    lam=None,
    time_dim=2,
    random_start=None,
    early_stop=None,
) -> None:
    """Check the hyperparameters of an attack; ``None`` skips a parameter.

    Allowed: ``0 <= eps <= 1``; ``0 < alpha <= 10`` (relative to eps); ``steps >= 0`` and
    ``restarts >= 1`` as ints; ``0 <= beta <= 1``; ``gamma1, gamma2, lam >= 0`` and finite;
    ``time_dim`` 1 for (N, T, C, H, W) or 2 for (N, C, T, H, W); ``random_start`` and
    ``early_stop`` bools.
    """
    _check_real("eps", eps, 0.0, 1.0)
    _check_real("alpha", alpha, 0.0, 10.0, low_open=True)
    _check_int("steps", steps, 0)
    _check_int("restarts", restarts, 1)
    if beta is not None:
        _check_real("beta", beta, 0.0, 1.0)
    for name, value in (("gamma1", gamma1), ("gamma2", gamma2), ("lam", lam)):
        if value is not None:
            _check_real(name, value, 0.0)
    for name, value in (("random_start", random_start), ("early_stop", early_stop)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is invalid: pass True or False")
    if isinstance(time_dim, bool) or time_dim not in (1, 2):
        raise ValueError(
            f"time_dim must be 2 for (N, C, T, H, W) input or 1 for (N, T, C, H, W) input, "
            f"got {time_dim!r}"
        )


def check_videos(videos, time_dim: int = 2, name: str = "videos") -> torch.Tensor:
    """Check a video batch and return it with values within ``RANGE_TOLERANCE`` clipped.

    The batch must be a floating-point tensor of rank 5, finite, with values in [0, 1].
    """
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(videos).__name__}")
    if not videos.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor in [0, 1], got dtype {videos.dtype}; "
            "convert uint8 frames with videos.float() / 255"
        )

    layout = "(N, C, T, H, W)" if time_dim == 2 else "(N, T, C, H, W)"
    if videos.dim() != 5:
        raise ValueError(
            f"{name} must have rank 5 {layout} with time_dim={time_dim}, got shape "
            f"{tuple(videos.shape)}; add a batch dimension with unsqueeze(0) for one clip"
        )
    if videos.numel() == 0:
        return videos

    if not torch.isfinite(videos).all():
        bad = (~torch.isfinite(videos)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN or infinite values; attacks need finite input")

    low, high = videos.min().item(), videos.max().item()
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must have values in [0, 1], got min {low:.6g} and max {high:.6g}. Pass "
            "unnormalized videos, or call set_normalization_used(mean, std) when the model "
            "takes normalized input"
        )
    if low < 0.0 or high > 1.0:
        videos = videos.clamp(0.0, 1.0)
    return videos


def check_labels(labels, batch_size: int, num_classes: Optional[int] = None, name: str = "labels"):
    """Check class labels: an integer tensor of shape (N,) with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int64 class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer class indices (int64), got dtype {labels.dtype}; "
            "pass labels.long(), or labels.argmax(1) for one-hot labels"
        )
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"{name} must have shape ({batch_size},) to match the batch, got {tuple(labels.shape)}"
        )
    if num_classes is not None and labels.numel():
        low, high = labels.min().item(), labels.max().item()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must be in [0, {num_classes - 1}] for a model with {num_classes} "
                f"classes, got values from {low} to {high}"
            )
    return labels.long()


def check_model_output(logits, batch_size: int) -> Tuple[int, int]:
    """Check that the logits have shape (N, K); returns (N, K)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model's logits must have shape (N, num_classes) = ({batch_size}, K), got "
            f"{shape}; pass output_to_logits= to pick the logits out of the model's output"
        )
    return logits.shape[0], logits.shape[1]
