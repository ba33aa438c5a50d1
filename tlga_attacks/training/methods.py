"""Training methods: what one optimizer step does with one batch.

A training method is a :class:`TrainingMethod`, a small object around a per-batch step
function. The trainer owns the loop (data, epochs, checkpoints, evaluation, processes) and
calls ``method.step(context, videos, labels)`` once per batch. The step computes its losses,
calls ``backward`` and steps the optimizer, and returns a :class:`StepOutput`.

Built-in methods (``METHODS``):

* ``standard``: cross-entropy on clean clips plus ``aux_weight`` times the MoE
  load-balancing loss.
* ``atm``: PGD adversarial training of the MoE (Madry et al., "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018). Each batch is replaced by its L-infinity PGD
  examples (torchattacks ``PGD`` with ``eps``, ``attack_alpha``, ``attack_steps`` and a random
  start), and the loss is that of ``standard`` on them.
* ``atd``: the same PGD training for the dense counterpart (``DenseVideoMoE``), so the
  trainer builds the ``dense`` model for it.

Adding a method::

    from tlga_attacks.training import METHODS, StepOutput, TrainingMethod, task_loss

    def my_step(context, videos, labels):
        context.optimizer.zero_grad(set_to_none=True)
        logits = context.model(videos)  # the wrapped model: gradients are averaged across processes
        loss = task_loss(context, logits, labels)
        loss.backward()
        context.optimizer.step()
        return StepOutput(loss=loss.detach(), logits=logits.detach())

    METHODS["mine"] = TrainingMethod("mine", my_step, adversarial=False)

after which ``tlga-train --method mine`` is available in the same process (for example from
a script that calls ``tlga_attacks.train.main``). A method that updates parameter groups
separately, such as router-only and expert-only updates, can keep extra optimizers or attack
objects in ``context.state``, which persists across the batches of a run. Attacks must run
on ``context.module``, the model without the ``DistributedDataParallel`` wrapper, because a
forward pass through the wrapper prepares a gradient synchronization that an attack's
input-gradient pass never completes.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from tlga_attacks.defense import training_step

logger = logging.getLogger(__name__)


@dataclass
class StepContext:
    """Everything a training step may use, built once per run by the trainer.

    Attributes:
        model: the model to call for the training forward and backward pass. Under
            ``torchrun`` this is the ``DistributedDataParallel`` wrapper, otherwise it is
            ``module``.
        module: the unwrapped model, in training mode. Attacks, ``aux_loss`` and parameter
            groups are read from it.
        optimizer: the optimizer over all parameters of ``module``.
        eps: L-infinity radius of adversarial training for the current batch, as a fraction
            of the [0, 1] range. The trainer updates it before every batch, because it grows
            linearly during the warm-up epochs (``eps_warmup``).
        attack_steps: PGD steps per batch in adversarial training.
        attack_alpha: PGD step size for the current batch, as a fraction of the [0, 1] range.
            It scales with ``eps`` during the warm-up.
        aux_weight: weight of the MoE load-balancing loss in the task loss.
        state: a dict that methods may fill, for example with attack objects or extra
            optimizers. It persists for one run. The per-epoch checkpoint saves
            ``value.state_dict()`` of each value that has a ``state_dict`` method.
        restored: after a resume, those state dicts from the checkpoint, by key of
            ``state``. A method that builds its object on the first batch loads its entry
            with ``load_state_dict`` and removes it.
    """

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    eps: float
    attack_steps: int
    attack_alpha: float
    aux_weight: float
    state: Dict[str, Any] = field(default_factory=dict)
    restored: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """Result of one training step.

    Attributes:
        loss: the detached scalar loss of this process's batch.
        logits: detached logits (N, K) of the inputs the model was trained on (the
            adversarial examples for adversarial methods), used for training accuracy.
    """

    loss: torch.Tensor
    logits: torch.Tensor


StepFunction = Callable[[StepContext, torch.Tensor, torch.Tensor], StepOutput]


@dataclass(frozen=True)
class TrainingMethod:
    """A named training method.

    Attributes:
        name: the name used by ``tlga-train --method`` and stored in model cards.
        step: ``step(context, videos, labels) -> StepOutput`` runs one optimizer update on a
            batch of videos (N, C, T, H, W) in [0, 1] with int64 labels (N,).
        adversarial: whether the method trains on adversarial examples. The trainer then
            also reports robust accuracy under PGD after training.
        model: the architecture the method trains instead of the clip-routed ``"moe"``
            (a ``build_model`` name such as ``"dense"``), or None to train the architecture
            the user selects. The trainer rejects any other user-selected architecture,
            because it has no such counterpart.
    """

    name: str
    step: StepFunction
    adversarial: bool = False
    model: Optional[str] = None


def moe_aux_loss(module: nn.Module) -> Optional[torch.Tensor]:
    """Sum the ``aux_loss`` of the last forward pass over every MoE layer of ``module``.

    Clip-routed models (``VideoMoE``) store one load-balancing loss on the model, and the
    token-routed transformer stores one per ``MoEMLP`` layer. Returns None when no module has
    one, for example for a backbone without routing.
    """
    losses = [
        submodule.aux_loss
        for submodule in module.modules()
        if isinstance(getattr(submodule, "aux_loss", None), torch.Tensor)
    ]
    if not losses:
        return None
    return torch.stack(losses).sum()


def task_loss(context: StepContext, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return mean cross-entropy plus ``context.aux_weight`` times the load-balancing loss.

    The load-balancing loss is read from ``context.module`` and therefore belongs to the
    forward pass that produced ``logits``, so call this right after that pass.
    """
    loss = F.cross_entropy(logits, labels)

    # NOTE: under torchrun each process computes the load-balancing loss on its own share of
    # the batch, so with aux_weight > 0 the multi-process gradient differs slightly from a
    # single process with the same global batch. The cross-entropy part matches exactly.
    aux_loss = moe_aux_loss(context.module)
    if aux_loss is not None and context.aux_weight > 0:
        loss = loss + context.aux_weight * aux_loss
    return loss


def update(context: StepContext, videos: torch.Tensor, labels: torch.Tensor) -> StepOutput:
    """Run one forward pass of ``context.model``, the task loss, backward and an optimizer step."""
    context.optimizer.zero_grad(set_to_none=True)

    logits = context.model(videos)
    loss = task_loss(context, logits, labels)

    loss.backward()
    context.optimizer.step()

    return StepOutput(loss=loss.detach(), logits=logits.detach())


def standard_step(context: StepContext, videos: torch.Tensor, labels: torch.Tensor) -> StepOutput:
    """Train on the clean batch."""
    return update(context, videos, labels)


def pgd_examples(context: StepContext, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return L-infinity PGD examples of ``videos`` against ``context.module``.

    The attack is torchattacks ``PGD`` with a uniform random start in the eps-ball, built
    once per run and kept in ``context.state["pgd"]``. Its ``eps`` and ``alpha`` are set from
    ``context`` on every call. torchattacks puts the model in eval
    mode for the attack, so batch normalization uses its running statistics and does not
    update them, and it restores training mode afterwards.
    """
    attack = context.state.get("pgd")
    if attack is None:
        attack = torchattacks.PGD(
            context.module, eps=context.eps, alpha=context.attack_alpha, steps=context.attack_steps, random_start=True
        )
        context.state["pgd"] = attack

    attack.eps, attack.alpha = context.eps, context.attack_alpha
    return attack(videos, labels)


def adversarial_step(context: StepContext, videos: torch.Tensor, labels: torch.Tensor) -> StepOutput:
    """Train on the PGD examples of the batch instead of the clean clips."""
    adversarial_videos = pgd_examples(context, videos, labels)
    return update(context, adversarial_videos, labels)


METHODS: Dict[str, TrainingMethod] = {
    "standard": TrainingMethod("standard", standard_step),
    "atm": TrainingMethod("atm", adversarial_step, adversarial=True),
    "atd": TrainingMethod("atd", adversarial_step, adversarial=True, model="dense"),
    "tlat": TrainingMethod("tlat", training_step("tlat", StepOutput), adversarial=True),
    "jtlat": TrainingMethod("jtlat", training_step("jtlat", StepOutput), adversarial=True),
}
