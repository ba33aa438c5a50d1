"""TLAT: adversarial training on TLA-M examples with a Lipschitz penalty on the model output.

Per batch, ``TLAT.step`` replaces the clean clips x by their TLA-M examples x_adv (the
temporal Lipschitz attack on the model output, run on the model in eval mode) and minimizes

    CE(F(x_adv), y) + lam * Lip(F),    Lip(F) = MSE(F(x_adv), F(x)) / max(MSE(x_adv, x), 1e-12)

per sample, averaged over the batch. F(x) is a reference without gradient, computed in the
model's current (training) mode, so that both outputs of the ratio see the same kind of batch
normalization. This module also contains the parts that ``JTLAT`` shares with TLAT, namely
parameter checks, the whole-model update and the gradient averaging across processes.
"""

import inspect
import logging
import math
import numbers
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..attacks import TLAM
from ..objectives import lipschitz_ratio
from ..outputs import logits_from_output
from ..validation import check_labels, check_videos

__all__ = ["TLAT", "DEFAULT_MODEL_LAM", "unwrap_model"]

logger = logging.getLogger(__name__)

# Weight of Lip(F) in the training loss. Lip(F) scales like 1/eps^2 (the denominator is near
# eps^2, about 1e-3 at 8/255); at 5-step TLA-M examples it measured 3e3 to 9e3, so 1e-4 puts
# the penalty on the scale of the cross-entropy. But in two paired runs of J-TLAT on the
# synthetic MoE (recipe of benchmarks/train_defense.py, results in benchmarks/RESULTS.md),
# 1e-4 ended 5 to 8 points of PGD-10 robust accuracy below 0. So the penalty is off by
# default, and lam / model_lam turn it on.
DEFAULT_MODEL_LAM = 0.0
DEFAULT_ATTACK_STEPS = 5

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside ``DataParallel`` and ``DistributedDataParallel`` wrappers."""
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


# -- parameter checks --------------------------------------------------------------------------


def check_real(name: str, value, low: float, high: float = math.inf, low_open: bool = False, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number in the given interval."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if valid:
        valid = (value > low if low_open else value >= low) and value <= high
    if valid:
        return

    left = "(" if low_open else "["
    right = "]" if math.isfinite(high) else ")"
    raise ValueError(f"{name}={value!r} is invalid: pass a finite number in {left}{low:g}, {high:g}{right}{hint}")


def check_int(name: str, value, low: int, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is an int of at least ``low``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low:
        return
    raise ValueError(f"{name}={value!r} is invalid: pass an int >= {low}{hint}")


def check_attack_settings(eps, alpha, attack_steps, beta, time_dim) -> None:
    """Check the settings of the attacks that generate the training examples."""
    check_real("eps", eps, 0.0, 1.0, low_open=True, hint=" (L-infinity radius in [0, 1] pixel units, e.g. 8/255)")
    check_real("alpha", alpha, 0.0, 10.0, low_open=True, hint=" (step size relative to eps, e.g. 0.5)")
    check_int("attack_steps", attack_steps, 1, hint=" (attack iterations per batch, e.g. 5)")
    check_real("beta", beta, 0.0, 1.0)
    if isinstance(time_dim, bool) or time_dim not in (1, 2):
        raise ValueError(
            f"time_dim={time_dim!r} is invalid: pass 2 for (N, C, T, H, W) videos or 1 for (N, T, C, H, W)"
        )


def set_attack_budget(owner, attacks, eps: float, alpha: Optional[float]) -> None:
    """Set ``eps`` (and ``alpha`` unless None) on ``owner`` and on each of its ``attacks``."""
    check_real("eps", eps, 0.0, 1.0, low_open=True, hint=" (L-infinity radius in [0, 1] pixel units, e.g. 8/255)")
    if alpha is not None:
        check_real("alpha", alpha, 0.0, 10.0, low_open=True, hint=" (step size relative to eps, e.g. 0.5)")

    owner.eps = eps
    for attack in attacks:
        attack.eps = eps
    if alpha is not None:
        owner.alpha = alpha
        for attack in attacks:
            attack.alpha = alpha


def check_batch(videos, labels, time_dim: int):
    """Check a training batch: videos in [0, 1] of rank 5 and int64 labels (N,)."""
    videos = check_videos(videos, time_dim)
    if videos.shape[0] == 0:
        raise ValueError("videos is an empty batch (N = 0). Pass at least one clip.")
    labels = check_labels(labels, videos.shape[0])
    return videos, labels


# -- optimizers and processes ------------------------------------------------------------------


def clone_optimizer(template: torch.optim.Optimizer, parameters: List[nn.Parameter]) -> torch.optim.Optimizer:
    """Build an optimizer of the class of ``template``, with the hyperparameters of its first
    parameter group (the current learning rate included), over ``parameters``.

    Raises:
        ValueError: when the class cannot be built from those hyperparameters.
    """
    group = template.param_groups[0]
    # Some classes keep settings in their defaults that the constructor does not take, e.g.
    # AdamW's decoupled_weight_decay in torch 2.14.
    accepted = inspect.signature(type(template).__init__).parameters
    hyperparameters = {key: group[key] for key in template.defaults if key in group and key in accepted}
    try:
        return type(template)(parameters, **hyperparameters)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot build a {type(template).__name__} for a parameter group from the "
            f"hyperparameters {sorted(hyperparameters)} of the given optimizer ({error}). Pass "
            "group_optimizer=lambda params: torch.optim.Adam(params, lr=...) instead."
        ) from error


def world_size() -> int:
    """Number of processes of the default process group, 1 when none is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over the processes of the default group.

    A parameter without a gradient in this process contributes zeros. Every process must call
    this with the same parameters in the same order. Does nothing in a single process.
    """
    processes = world_size()
    if processes == 1:
        return

    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad.div_(processes)


def set_gradients(loss: torch.Tensor, parameters: List[nn.Parameter]) -> None:
    """Set ``parameter.grad`` to the gradient of ``loss`` for each of ``parameters`` (None
    where the loss does not depend on it).

    Unlike ``loss.backward()``, this does not run the gradient hooks of
    ``DistributedDataParallel``. A backward pass outside the wrapper would otherwise mark the
    parameters as used in the wrapper's next iteration (as inside ``no_sync``), and its next
    backward pass fails on parameters that were used here but not there.
    """
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    for parameter, gradient in zip(parameters, gradients):
        parameter.grad = gradient


def moe_aux_loss(module: nn.Module) -> Optional[torch.Tensor]:
    """Sum the ``aux_loss`` tensors (MoE load-balancing losses of the last forward pass) that
    ``module`` and its submodules store, or return None when there are none."""
    losses = [
        submodule.aux_loss
        for submodule in module.modules()
        if isinstance(getattr(submodule, "aux_loss", None), torch.Tensor)
    ]
    if not losses:
        return None
    return torch.stack(losses).sum()


# -- the whole-model update --------------------------------------------------------------------


def whole_model_update(
    model: nn.Module,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_adv: torch.Tensor,
    videos: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    aux_weight: float,
    output_to_logits: Callable = logits_from_output,
):
    """Take one optimizer step on ``CE(F(x_adv), y) + lam * Lip(F)`` (+ ``aux_weight`` times
    the MoE load-balancing loss).

    Args:
        model: the module or its ``DistributedDataParallel`` wrapper, which runs the forward
            pass that is differentiated (the wrapper averages the gradients across processes).
        module: the unwrapped model, which computes the clean reference F(x) without gradient.
        optimizer: steps after the backward pass.
        x_adv, videos: adversarial and clean videos of the same shape.
        labels: int64 class indices (N,).
        lam: weight of Lip(F).
        aux_weight: weight of the load-balancing loss that MoE layers store in ``aux_loss``.

    Returns:
        ``(losses, logits)``: a dict of floats (``loss``, ``ce``, ``lip``) and the detached
        logits of ``x_adv``.
    """
    module.zero_grad(set_to_none=True)

    with torch.no_grad():
        clean_logits = output_to_logits(module(videos))

    logits = output_to_logits(model(x_adv))
    aux_loss = moe_aux_loss(module) if aux_weight else None

    ce = F.cross_entropy(logits, labels)
    lip = lipschitz_ratio(logits, clean_logits, x_adv, videos).mean()
    loss = ce + lam * lip
    if aux_loss is not None:
        loss = loss + aux_weight * aux_loss

    loss.backward()
    optimizer.step()
    module.zero_grad(set_to_none=True)

    losses = {"loss": loss.item(), "ce": ce.item(), "lip": lip.item()}
    return losses, logits.detach()


def check_step_model(model: nn.Module, module: nn.Module, owner: str) -> None:
    """Raise ``ValueError`` unless ``model`` is ``module`` or a wrapper around it."""
    if unwrap_model(model) is not module:
        raise ValueError(
            f"{owner}.step got a {type(model).__name__} that is not the model this {owner} was "
            "built for, nor a DataParallel/DistributedDataParallel wrapper of it. Pass that "
            "model, or build a new one for this model."
        )


def warn_if_eval_mode(module: nn.Module, owner: str, warned: List[bool]) -> None:
    """Log a warning, once per object, when a training step runs on a model in eval mode."""
    if module.training or warned[0]:
        return
    warned[0] = True
    logger.warning(
        "%s.step runs on a %s in eval mode, so batch normalization and dropout behave as at "
        "test time. Call model.train() before training.",
        owner, type(module).__name__,
    )


class TLAT:
    """TLAT: adversarial training on TLA-M examples with a Lipschitz penalty on the output.

    Per batch: x_adv = TLAM(x) on the model in eval mode (the attack restores the model's
    flags and accumulates no parameter gradients; it runs all its steps and returns the last
    iterate, ``early_stop=False``), then one optimizer step on
    ``CE(F(x_adv), y) + lam * Lip(F)`` with
    ``Lip(F) = MSE(F(x_adv), F(x)) / max(MSE(x_adv, x), 1e-12)`` per sample, averaged. F(x) is
    a reference without gradient in the model's current mode. It needs no router, so it also
    trains dense models.

    Paper: 'Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts', S. Wang et
    al., ICLR 2026 [https://arxiv.org/abs/2602.01369], where TLAT is the single-level baseline
    of J-TLAT.

    Arguments:
        model (nn.Module): the video classifier to train, possibly wrapped in
            ``DistributedDataParallel``. Its forward may return logits, ``(logits, ...)`` or a
            dict with ``"logits"``.
        optimizer (torch.optim.Optimizer, optional): optimizer over the model's parameters.
            (Default: None, Adam with learning rate ``lr``)
        lr (float): learning rate of the default optimizer. (Default: 1e-3)
        eps (float): L-infinity radius of the training examples, in [0, 1] pixel units.
            (Default: 8/255)
        alpha (float): attack step size relative to eps. (Default: 0.5)
        attack_steps (int): TLA-M iterations per batch. (Default: 5)
        beta (float): decay of the temporal adaptive step. (Default: 0.9)
        lam (float): weight of Lip(F) in the training loss, e.g. 1e-4. (Default: 0.0, see
            ``DEFAULT_MODEL_LAM``)
        attack_lam (float): weight of Lip(F) in the attack objective. (Default: 0.0, the
            TLA-M default)
        aux_weight (float): weight of the MoE load-balancing loss (``aux_loss`` attributes).
            (Default: 0.0)
        time_dim (int): 2 for (N, C, T, H, W) videos, 1 for (N, T, C, H, W). (Default: 2)

    Shapes: videos (N, C, T, H, W) floats in [0, 1], labels (N,) int64.

    Example::

        >>> trainer = TLAT(model, lr=1e-3, eps=8 / 255)
        >>> model.train()
        >>> for videos, labels in loader:
        ...     losses = trainer.step(model, videos, labels)  # {"loss": ..., "ce": ..., "lip": ...}
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        lr: float = 1e-3,
        eps: float = 8 / 255,
        alpha: float = 0.5,
        attack_steps: int = DEFAULT_ATTACK_STEPS,
        beta: float = 0.9,
        lam: float = DEFAULT_MODEL_LAM,
        attack_lam: float = 0.0,
        aux_weight: float = 0.0,
        time_dim: int = 2,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_attack_settings(eps, alpha, attack_steps, beta, time_dim)
        check_real("lam", lam, 0.0, hint=" (weight of Lip(F) in the loss, e.g. 1e-4)")
        check_real("attack_lam", attack_lam, 0.0)
        check_real("aux_weight", aux_weight, 0.0)
        if optimizer is None:
            check_real("lr", lr, 0.0, low_open=True)
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")

        self.module = unwrap_model(model)
        self.eps = eps
        self.alpha = alpha
        self.attack_steps = attack_steps
        self.beta = beta
        self.lam = lam
        self.attack_lam = attack_lam
        self.aux_weight = aux_weight
        self.time_dim = time_dim

        self.optimizer = optimizer or torch.optim.Adam(self.module.parameters(), lr=lr)
        self.attack = TLAM(
            self.module, eps=eps, alpha=alpha, steps=attack_steps, beta=beta, lam=attack_lam,
            early_stop=False, time_dim=time_dim,
        )
        self.last_logits: Optional[torch.Tensor] = None
        self._warned_eval = [False]

    def set_attack_budget(self, eps: float, alpha: Optional[float] = None) -> None:
        """Change the radius ``eps`` and, unless None, the relative step size ``alpha`` of the
        training attack, for example to grow eps over the first epochs."""
        set_attack_budget(self, [self.attack], eps, alpha)

    def examples(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the TLA-M training examples of a batch, within the eps-ball and [0, 1]."""
        videos, labels = check_batch(videos, labels, self.time_dim)
        return self.attack(videos, labels)

    def step(self, model: nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """Run one TLAT update on a batch.

        Args:
            model: the model given at construction, or its ``DistributedDataParallel`` wrapper
                (whose forward pass then averages the gradients across processes).
            videos: (N, C, T, H, W) floats in [0, 1].
            labels: (N,) int64 class indices.

        Returns:
            ``{"loss", "ce", "lip"}``: the training loss, its cross-entropy and its mean Lip(F)
            (before weighting), as floats. ``last_logits`` is then set to the detached logits of
            the adversarial clips.
        """
        check_step_model(model, self.module, "TLAT")
        videos, labels = check_batch(videos, labels, self.time_dim)
        warn_if_eval_mode(self.module, "TLAT", self._warned_eval)

        x_adv = self.attack(videos, labels)

        losses, self.last_logits = whole_model_update(
            model, self.module, self.optimizer, x_adv, videos, labels, self.lam, self.aux_weight
        )
        logger.debug("TLAT step: %s", losses)
        return losses
