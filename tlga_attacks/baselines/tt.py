"""TT: temporal-translation gradient smoothing, the transfer baseline for video models."""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..steps import project, random_start
from .adapter import VideoAttack, _check_choice, _check_int, _check_real

__all__ = ["TT", "TT_KERNELS", "temporal_kernel"]

TT_KERNELS = ("gaussian", "uniform")


def temporal_kernel(shift: int, kernel: str = "gaussian") -> List[Tuple[int, float]]:
    """Temporal offsets -shift..shift and their weights, which sum to 1.

    "uniform" weighs every offset 1 / (2 * shift + 1). "gaussian" weighs offset k by
    exp(-k**2 / (2 * sigma**2)) with sigma = shift / 3, so the outermost offsets sit three
    standard deviations out, as in the authors' code (github.com/zhipeng-wei/TT,
    ``attack_methods.py``).

    Example::

        >>> temporal_kernel(1, "uniform")
        [(-1, 0.333...), (0, 0.333...), (1, 0.333...)]
    """
    _check_int("shift", shift, 0)
    _check_choice("kernel", kernel, TT_KERNELS)

    offsets = list(range(-shift, shift + 1))
    if kernel == "uniform" or shift == 0:
        raw = [1.0] * len(offsets)
    else:
        sigma = shift / 3.0
        raw = [math.exp(-(offset ** 2) / (2.0 * sigma ** 2)) for offset in offsets]

    total = sum(raw)
    return [(offset, weight / total) for offset, weight in zip(offsets, raw)]


class TT(VideoAttack):
    r"""TT: PGD whose gradient is averaged over temporally translated copies of the clip.

    Paper: 'Boosting the Transferability of Video Adversarial Examples via Temporal
    Translation', Z. Wei, J. Chen, Z. Wu and Y.-G. Jiang, AAAI 2022
    [https://github.com/zhipeng-wei/TT]

    Distance Measure: Linf

    At every step and for each offset k in -shift..shift, the clip is rolled by k frames
    along time, so frames that leave one end re-enter at the other. The gradient of the
    cross-entropy on the rolled copy is rolled back by -k. These gradients are summed with
    the weights of ``temporal_kernel(shift, kernel)``, and the step
    ``x' + alpha * sign(sum)`` is projected onto the eps-ball and [0, 1]. The last iterate
    is returned. With ``2 * shift + 1 > T`` some offsets repeat modulo T and their weights
    add.

    Arguments:
        model (nn.Module): the video model (the surrogate when the examples are transferred).
            Its forward may return logits, a tuple ``(logits, ...)`` or a dict with
            ``"logits"``.
        eps (float): maximum L-infinity perturbation in [0, 1] pixel units. (Default: 8/255)
        alpha (float): step size in pixel units, as in torchattacks' PGD. (Default: 2/255)
        steps (int): number of steps. (Default: 10)
        shift (int): largest temporal offset in frames. (Default: 3)
        kernel (str): weights of the offsets, "gaussian" or "uniform". (Default: "gaussian")
        random_start (bool): start at a uniform random point of the eps-ball. (Default: True)
        time_dim (int): 2 for (N, C, T, H, W) models, 1 for (N, T, C, H, W). (Default: 2)
        seed (int, optional): seed of the random start, drawn from a private generator so
            that the caller's random stream is left alone. (Default: None, the global
            generator)
        output_to_logits (callable, optional): maps the model's output to logits.
            (Default: None, see ``tlga_attacks.outputs.logits_from_output``)

    Shape:
        - videos: (N, C, T, H, W) (or (N, T, C, H, W) with ``time_dim=1``), float in [0, 1].
        - labels: (N,) int64 class indices, or None for the model's predictions.
        - output: same shape, dtype, device and memory layout as the videos, within the
          eps-ball of the input and within [0, 1].

    Supports torchattacks' targeted modes, where the loss is -CE(F(x'), target).

    Cost: ``2 * shift + 1`` forward and backward passes per step, so
    ``steps * (2 * shift + 1)`` of each per clip (7 per step with the default shift), plus
    one forward pass when labels are missing. ``passes`` counts them exactly.

    Examples::
        >>> atk = TT(model, eps=8/255, alpha=2/255, steps=10, shift=3)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(
        self,
        model,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        shift: int = 3,
        kernel: str = "gaussian",
        random_start: bool = True,
        time_dim: int = 2,
        seed: Optional[int] = None,
        output_to_logits=None,
    ):
        super().__init__("TT", model, eps=eps, time_dim=time_dim,
                         output_to_logits=output_to_logits, seed=seed)
        self.alpha = alpha
        self.steps = steps
        self.shift = shift
        self.kernel = kernel
        self.random_start = random_start
        self.supported_mode = ["default", "targeted"]
        self.check_params()

    def check_params(self) -> None:
        """Check the parameters; called at construction and at every call."""
        _check_real("eps", self.eps, 0.0, 1.0)
        _check_real("alpha", self.alpha, 0.0, 1.0, low_open=True)
        _check_int("steps", self.steps, 0)
        _check_int("shift", self.shift, 0)
        _check_choice("kernel", self.kernel, TT_KERNELS)
        if not isinstance(self.random_start, bool):
            raise ValueError(f"random_start must be True or False, got {self.random_start!r}")

    def smoothed_gradient(
        self,
        x_adv: torch.Tensor,
        labels: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Weighted sum over offsets k of the loss gradient on the clip rolled by k frames,
        rolled back by -k. Shape of ``x_adv``; one forward and one backward pass per offset.
        """
        total = torch.zeros_like(x_adv)

        for offset, weight in temporal_kernel(self.shift, self.kernel):
            shifted = x_adv.detach().roll(offset, dims=self.time_dim).requires_grad_(True)

            logits = self.get_logits(shifted)
            if targets is None:
                loss = F.cross_entropy(logits, labels, reduction="sum")
            else:
                loss = -F.cross_entropy(logits, targets, reduction="sum")

            grad = torch.autograd.grad(loss, shifted)[0]
            total += weight * grad.roll(-offset, dims=self.time_dim)

        return total

    def forward(self, inputs, labels=None) -> torch.Tensor:
        """Attack a batch of videos; see the class docstring."""
        self.check_params()
        videos, x, labels = self._prepare(inputs, labels)
        if videos.shape[0] == 0:
            return inputs.clone()
        targets = self.get_target_label(x, labels) if self.targeted else None

        x_adv = random_start(x, self.eps) if self.random_start else x.clone()

        for _ in range(self.steps):
            grad = self.smoothed_gradient(x_adv, labels, targets)

            with torch.no_grad():
                x_adv = project(x_adv + self.alpha * grad.sign(), x, self.eps)

        return self._finish(x_adv, x, videos, inputs)
