"""The iteration loop shared by every attack of the family.

Each attack is a subclass of ``MoEAttack`` that supplies an objective (a sum of named terms
from ``tlga_attacks.objectives``) and a step rule (``"sign"`` or ``"temporal"``). The loop
here does the rest: clean reference pass, random start, restarts, gradient, step, projection
onto the eps-ball and [0, 1], and the choice of the iterate to return.
"""

import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn
from torchattacks.attack import Attack

from .. import objectives
from ..hooks import MoEHookError, MoEInspector, MoELayerRecord
from ..normalization import VideoNormalizationMixin
from ..outputs import logits_from_output
from ..steps import clip_to_bounds, eps_ball_bounds, random_start, sign_step, temporal_step
from ..validation import check_attack_params, check_labels, check_model_output, check_videos

__all__ = ["AttackPass", "ModelState", "MoEAttack"]

logger = logging.getLogger(__name__)

# Below this, alpha (relative to eps) is almost surely an absolute torchattacks-style step.
SMALL_ALPHA = 0.05


@dataclass
class AttackPass:
    """One forward pass of the attacked model on a batch.

    Attributes:
        x: the input, shape (N, C, T, H, W) (or (N, T, C, H, W) with ``time_dim=1``).
        logits: model logits, shape (N, K).
        layers: what the MoE hooks recorded, one entry per router call.
        labels: true labels, shape (N,), int64.
        targets: target labels in targeted mode, else None.
    """

    x: torch.Tensor
    logits: torch.Tensor
    layers: List[MoELayerRecord] = field(default_factory=list)
    labels: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None

    @property
    def router_logits(self) -> List[torch.Tensor]:
        return [layer.router_logits for layer in self.layers]


class ModelState:
    """Training flags, ``requires_grad`` and (when needed) buffers of a model, to restore."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.training = model.training
        self.flags = [(module, module.training) for module in model.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self.buffers = None

    def save_buffers_if_training(self) -> None:
        # Modules in training mode (BatchNorm running statistics) update buffers in forward.
        if any(module.training for module in self.model.modules()):
            self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]

    def restore(self) -> None:
        for module, flag in self.flags:
            module.training = flag
        for parameter, flag in self.requires_grad:
            parameter.requires_grad_(flag)
        if self.buffers is not None:
            with torch.no_grad():
                for buffer, saved in self.buffers:
                    buffer.copy_(saved)


class MoEAttack(VideoNormalizationMixin, Attack):
    """Base class of the attack family; see the subclasses for the objectives.

    Subclasses set ``step_rule`` and ``uses_router``/``uses_experts`` and implement
    ``objective(clean, adv)`` returning a per-sample tensor of shape (N,) to maximize.

    Which iterate is returned, with ``early_stop=True`` (the default): per sample, the first
    iterate that fools the model (misclassification, or the target in targeted mode);
    otherwise the last one. Restarts after the first one re-run the samples not yet fooled; a
    sample never fooled returns the last iterate of the final restart. The loop stops early
    once every clip is fooled.

    With ``early_stop=False`` every restart runs all its steps, and a sample returns the last
    iterate of the last restart it took part in, as adversarial training on PGD examples
    expects. Later restarts still re-run only the samples that no iterate has fooled yet.

    Cost: one forward pass without gradient for the clean reference, then per step one
    forward and one backward pass.
    """

    step_rule = "temporal"
    uses_router = True
    uses_experts = False
    supports_targeted = False

    def __init__(
        self,
        name: str,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 0.5,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = True,
        beta: float = 0.9,
        lam: float = 1e-3,
        gamma1: float = 1.0,
        gamma2: float = 1.0,
        time_dim: int = 2,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        output_to_logits: Optional[Callable] = None,
    ):
        super().__init__(name, model)
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.random_start = random_start
        self.restarts = restarts
        self.early_stop = early_stop
        self.beta = beta
        self.lam = lam
        self.gamma1 = gamma1
        self.gamma2 = gamma2
        self.time_dim = time_dim
        self.routers = routers
        self.experts = experts
        self.top_k = top_k
        self._output_to_logits = output_to_logits or logits_from_output
        self.supported_mode = ["default", "targeted"] if self.supports_targeted else ["default"]
        self._forward_passes = 0
        self._backward_passes = 0
        self._in_call = False
        self.check_params()

        if self.uses_router:
            # Fail at construction, not at the first batch, when the model has no router.
            MoEInspector(model, routers, experts, top_k)

    # -- parameters --------------------------------------------------------------------------

    def check_params(self) -> None:
        """Validate the hyperparameters; called at construction and at every attack call."""
        check_attack_params(
            self.eps,
            self.alpha,
            self.steps,
            restarts=self.restarts,
            beta=self.beta,
            gamma1=self.gamma1,
            gamma2=self.gamma2,
            lam=self.lam,
            time_dim=self.time_dim,
            random_start=self.random_start,
            early_stop=self.early_stop,
        )
        if self.alpha < SMALL_ALPHA:
            logger.warning(
                "%s: alpha=%g is relative to eps (a step of alpha * eps = %g); an absolute "
                "step such as torchattacks' 2/255 corresponds to alpha=(2/255)/eps",
                self.attack, self.alpha, self.alpha * self.eps,
            )

    @property
    def passes(self) -> dict:
        """Forward and backward passes of the model during the latest call."""
        return {"forward": self._forward_passes, "backward": self._backward_passes}

    # -- torchattacks integration ------------------------------------------------------------

    def get_logits(self, inputs: torch.Tensor, labels=None, *args, **kwargs) -> torch.Tensor:
        if self._normalization_applied is False:
            inputs = self.normalize(inputs)
        return self._output_to_logits(self.model(inputs))

    @torch.no_grad()
    def get_output_with_eval_nograd(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits without gradient, in the mode the attack runs the model in.

        torchattacks' version switches a training model to eval and back with ``train()``,
        which inside an attack call would undo ``set_model_training_mode`` for the rest of the
        call. Inside a call the pass counts in ``passes`` (targeted random and least-likely
        modes use it to pick targets); outside, torchattacks' version runs.
        """
        if not self._in_call:
            return super().get_output_with_eval_nograd(inputs)
        self._forward_passes += 1
        return self.get_logits(inputs)

    def __call__(self, inputs, labels=None, *args, **kwargs):
        state = ModelState(self.model)
        self._in_call = True
        try:
            self._change_model_mode(state.training)
            state.save_buffers_if_training()

            if self._normalization_applied is True:
                if not isinstance(inputs, torch.Tensor):
                    check_videos(inputs, self.time_dim)
                self._set_normalization_applied(False)
                try:
                    adv = self.forward(self.inverse_normalize(inputs), labels, *args, **kwargs)
                finally:
                    self._set_normalization_applied(True)
                return self.normalize(adv)

            return self.forward(inputs, labels, *args, **kwargs)
        finally:
            self._in_call = False
            state.restore()

    # -- the loop ----------------------------------------------------------------------------

    def objective(self, clean: AttackPass, adv: AttackPass) -> torch.Tensor:
        """Per-sample objective to maximize, shape (N,)."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attack a batch of videos; see the class docstring of each attack."""
        self.check_params()
        self._forward_passes = 0
        self._backward_passes = 0
        videos = check_videos(inputs, self.time_dim)
        if videos.shape[0] == 0:
            return inputs.clone()
        if labels is not None:
            check_labels(labels, videos.shape[0])

        device = self.device if self.device is not None else videos.device
        x = videos.detach().to(device)
        labels = labels.detach().to(device).long() if labels is not None else None
        targets = None
        if self.targeted:
            if labels is None and self.attack_mode == "targeted(label)":
                raise ValueError("labels=None in targeted(label) mode; pass the target labels")
            targets = self.get_target_label(x, labels)

        if not self.uses_router:
            adv = self._attack_batch(x, labels, targets, inspector=None)
        else:
            with MoEInspector(
                self.model, self.routers, self.experts, self.top_k, record_experts=self.uses_experts
            ) as inspector:
                adv = self._attack_batch(x, labels, targets, inspector)

        out = torch.empty_like(videos)
        out.copy_(adv)
        return out.to(inputs.device) if out.device != inputs.device else out

    def _run_model(self, x: torch.Tensor, inspector: Optional[MoEInspector]) -> AttackPass:
        logits = self.get_logits(x)
        check_model_output(logits, x.shape[0])
        self._forward_passes += 1
        layers = inspector.require_layers() if inspector is not None else []
        return AttackPass(x=x, logits=logits, layers=layers)

    def _attack_batch(self, x, labels, targets, inspector) -> torch.Tensor:
        with torch.no_grad():
            clean = self._run_model(x, inspector)
        num_classes = clean.logits.shape[1]
        if labels is None:
            labels = clean.logits.argmax(dim=1)
        clean.labels = check_labels(labels, x.shape[0], num_classes)
        if targets is not None:
            clean.targets = check_labels(targets, x.shape[0], num_classes, name="target labels")

        result = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        lower, upper = eps_ball_bounds(x, self.eps)

        for _ in range(self.restarts):
            if fooled.all():
                break

            x_adv = clip_to_bounds(random_start(x, self.eps), lower, upper) if self.random_start else x.clone()
            active = ~fooled
            found = fooled.clone()
            velocity = None

            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                adv = self._run_model(x_adv, inspector)
                adv.labels, adv.targets = clean.labels, clean.targets

                # Bookkeeping: keep the first iterate that fools the model (early_stop), or
                # only note which clips an iterate has fooled.
                with torch.no_grad():
                    newly = self._is_success(adv.logits, clean) & ~found
                    if self.early_stop:
                        result[newly] = x_adv.detach()[newly]
                    found |= newly
                if self.early_stop and found.all():
                    break

                objective = self.objective(clean, adv)
                if not objective.requires_grad:
                    raise MoEHookError(
                        f"the {self.attack} objective does not depend on the input; check that "
                        "the hooks see the router (routers=) and the experts (experts=)"
                    )
                grad = torch.autograd.grad(objective.sum(), x_adv)[0]
                self._backward_passes += 1

                with torch.no_grad():
                    if self.step_rule == "sign":
                        x_adv = sign_step(x_adv, grad, self.eps, self.alpha)
                    else:
                        x_adv, velocity = temporal_step(
                            x_adv, grad, velocity, self.eps, self.alpha, self.beta, self.time_dim
                        )
                    x_adv = clip_to_bounds(x_adv, lower, upper)

            with torch.no_grad():
                last = ~found if self.early_stop else active
                result[last] = x_adv.detach()[last]
                fooled = found

        return result.detach()

    def _is_success(self, logits: torch.Tensor, clean: AttackPass) -> torch.Tensor:
        predictions = logits.argmax(dim=1)
        if clean.targets is not None:
            return predictions == clean.targets
        return predictions != clean.labels

    # -- named objective terms ---------------------------------------------------------------
    # The input distance in the denominator of each Lipschitz ratio gets no gradient, which
    # is the library's own choice. Under a fixed L-infinity budget that gradient only pulls
    # the iterate back toward x, and it weakened TLA-M and TLA-R in benchmarks/lam_sweep.py.

    def model_term(self, clean: AttackPass, adv: AttackPass) -> torch.Tensor:
        """TLA-M objective ``CE(F(x'), y) + lam * Lip(F)`` (``-CE(F(x'), target)`` when
        targeted), per sample."""
        loss = objectives.model_loss(adv.logits, clean.labels, clean.targets)
        if self.lam:
            loss = loss + self.lam * objectives.lipschitz_ratio(
                adv.logits, clean.logits, adv.x.detach(), clean.x
            )
        return loss

    def router_term(self, clean: AttackPass, adv: AttackPass, guided: bool) -> torch.Tensor:
        """TLA-R objective ``L_R + lam * Lip(R)``; with ``guided``, the TLGA-R objective that
        also subtracts ``gamma1 * CE(R(x'), argmin R(x))``. Per sample."""
        loss = objectives.router_loss(adv.router_logits, clean.router_logits)
        if self.lam:
            loss = loss + self.lam * objectives.router_lipschitz(
                adv.router_logits, clean.router_logits, adv.x.detach(), clean.x
            )
        if guided and self.gamma1:
            loss = loss - self.gamma1 * objectives.weakest_expert_guidance(
                adv.router_logits, clean.router_logits
            )
        return loss
