"""J-TLAT: joint temporal Lipschitz adversarial training of the router, the weak experts and
the whole model of a video Mixture-of-Experts.

Per batch, three updates run in order, and each one changes only its own parameter group:

1. router: x_R = TLAR(x); loss ``CE(R(x_R), argmax R(x)) + lam * Lip(R)``, averaged over MoE
   layers and routing units; only the router parameters step.
2. weak experts: x_G = TLGAR(x); I = the ``expert_top_k`` (default 2) experts with the largest
   router logits R(x_G) per clip; loss ``sum over i in I of w_i(x_G) * [CE(E_i(x_G), y) +
   lam * Lip(E_i)]``, where w_i is the softmax over all M router logits taken at i. Only the
   experts in some clip's I step.
3. whole model: x_J = JTLGA(x); loss ``CE(F(x_J), y) + model_lam * Lip(F)``; all parameters
   step.

Each group has its own optimizer, and only that optimizer steps in its update, so the
parameters of the other groups stay bit-identical whatever the optimizer does with momentum or
weight decay. Updates 1 and 2 also restore every buffer (batch-normalization running
statistics included). Only update 3 thus moves the running statistics, which then describe
the J-TLGA examples that the whole model trains on, as in PGD training. Without this, they
also mixed in the TLA-R batches and the TLGA-R rows of each expert, and the trained model
lost PGD-10 robust accuracy (benchmarks/RESULTS.md, defense section).

Our choices, where the method leaves details open:

* The attacks that make x_R, x_G and x_J run on the model in eval mode and restore its flags.
  They run all their steps and return the last iterate (``early_stop=False``), as PGD
  adversarial training does, not the first iterate that fools the model.
* Clean references (R(x), F(x), E_i(x)) carry no gradient, as in the attacks.
* In update 2 the routing R(x_G), the gate weights w_i and the inputs that the experts receive
  come from a forward pass in eval mode without gradient, so the update touches neither the
  router's parameters nor its buffers. w_i is therefore detached: the router does not step in
  this update, and a gradient through w_i would be discarded anyway.
* E_i runs directly, in the model's training mode, on the inputs that its MoE layer received
  for the clips with i in their top-``expert_top_k``. Lip(E_i) compares E_i(x_G) with E_i(x)
  on the same clips and divides by the distance of the model inputs x_G and x.

Update 2 needs clip-level MoE layers (one routing unit per clip) whose experts return class
logits, such as ``VideoMoE``. Token- or frame-level routing (``MoEVideoTransformer``) is not
supported: ``step`` and ``update_experts`` raise ``ValueError`` for it before any parameter
changes. Updates 1 and 3 work for any MoE that ``MoEInspector`` can read.
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..attacks import JTLGA, TLAR, TLGAR
from ..hooks import MoEInspector, RouterNotFoundError, find_moe_layers
from ..objectives import lipschitz_ratio, router_lipschitz, router_loss
from ..steps import MEAN_FRAME_DIVISOR
from .tlat import (
    TLAT,
    DEFAULT_ATTACK_STEPS,
    DEFAULT_MODEL_LAM,
    average_gradients,
    check_attack_settings,
    check_batch,
    check_int,
    check_real,
    check_step_model,
    clone_optimizer,
    set_attack_budget,
    set_gradients,
    unwrap_model,
    warn_if_eval_mode,
    whole_model_update,
    world_size,
)

__all__ = ["JTLAT", "DEFAULT_GROUP_LAM", "training_step"]

logger = logging.getLogger(__name__)

# Weight of Lip(R) and Lip(E_i) in the router and expert losses. On a small trained clip-level
# MoE (4 experts, 4x16x16 clips), Lip(R) at 5-step TLA-R examples measured about 1.2e3
# and Lip(E_i) at TLGA-R examples 6 to 10. With 1e-3 the router penalty is then about 1.2,
# twice the router cross-entropy there, and the expert penalty is small next to the expert CE.
DEFAULT_GROUP_LAM = 1e-3


@dataclass
class _ExpertGroup:
    """The trainable parameters of one expert and their optimizer."""

    layer: int
    index: int
    name: str
    module: nn.Module
    parameters: List[nn.Parameter]
    optimizer: Optional[torch.optim.Optimizer] = None


@dataclass
class _ClipLayerPass:
    """Input rows (N, ...) and router logits (N, M) of one clip-level MoE layer in a forward
    pass."""

    inputs: torch.Tensor
    router_logits: torch.Tensor


@contextmanager
def _eval_mode(module: nn.Module):
    """Put every submodule in eval mode and restore each one's flag on exit."""
    flags = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, flag in flags:
            submodule.training = flag


@contextmanager
def _keep_buffers(module: nn.Module):
    """Restore every buffer of ``module`` (e.g. batch-normalization running statistics) on exit."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, state: Dict[str, Any], owner: str) -> None:
    """Raise ``ValueError`` when a per-parameter tensor of a saved optimizer state has another
    shape than the parameter it belongs to (``load_state_dict`` of torch optimizers does not
    check this, and the next step would fail far from the cause)."""
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    saved_ids = [index for group in state.get("param_groups", []) for index in group["params"]]
    for index, parameter in zip(saved_ids, parameters):
        for key, value in state.get("state", {}).get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                raise ValueError(
                    f"the state of {owner} does not fit this model: its {key!r} has shape "
                    f"{tuple(value.shape)} where the parameter has {tuple(parameter.shape)}. Pass the "
                    "result of state_dict() of a JTLAT on a model of the same architecture and size."
                )


def _first_tensor(args) -> Optional[torch.Tensor]:
    return next((value for value in args if isinstance(value, torch.Tensor)), None)


def _trainable(parameters) -> List[nn.Parameter]:
    unique, seen = [], set()
    for parameter in parameters:
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            unique.append(parameter)
    return unique


class JTLAT:
    """J-TLAT: hierarchical adversarial training of a video MoE's router, weak experts and
    whole model. The module docstring describes the three updates and our choices.

    Paper: 'Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts', S. Wang et
    al., ICLR 2026 [https://arxiv.org/abs/2602.01369]

    Parameter groups: the router group contains the parameters of the routers that
    ``find_moe_layers`` discovers. Each expert of each MoE layer is its own group, and the
    whole-model group is ``model.parameters()``. Parameters with ``requires_grad=False`` are
    left out. A parameter shared between a router and an expert, or between two experts,
    raises ``ValueError``, because the updates could not then keep the groups apart.

    Arguments:
        model (nn.Module): the MoE to train (e.g. ``VideoMoE``), possibly wrapped in
            ``DistributedDataParallel``. Its forward may return logits, ``(logits, ...)`` or a
            dict with ``"logits"``.
        optimizer (torch.optim.Optimizer, optional): optimizer of update 3, over all
            parameters. (Default: None, Adam with learning rate ``lr``)
        lr (float): learning rate of the default optimizer. (Default: 1e-3)
        group_optimizer (callable, optional): ``group_optimizer(parameters)`` builds the
            optimizer of the router group and of each expert. (Default: None, an optimizer of
            the class and hyperparameters of ``optimizer``)
        eps (float): L-infinity radius of the training examples, in [0, 1] pixel units.
            (Default: 8/255)
        alpha (float): attack step size relative to eps. (Default: 0.5)
        attack_steps (int): iterations of each of the three attacks. (Default: 5)
        beta (float): decay of the temporal adaptive step. (Default: 0.9)
        gamma1 (float): weight of the weakest-expert guidance in TLGA-R and J-TLGA.
            (Default: 1.0)
        gamma2 (float): weight of the router objective in J-TLGA. (Default: 1.0)
        lam (float): weight of Lip(R) in update 1 and of Lip(E_i) in update 2.
            (Default: 1e-3)
        model_lam (float): weight of Lip(F) in update 3, e.g. 1e-4. (Default: 0.0, see
            ``DEFAULT_MODEL_LAM``)
        attack_lam (float, optional): weight of the Lipschitz terms in the attack objectives.
            (Default: None, each attack's default: 1e-3 for TLA-R and TLGA-R, 0.0 for J-TLGA)
        expert_top_k (int): experts per clip trained in update 2, at most M. (Default: 2)
        aux_weight (float): weight of the MoE load-balancing loss in update 3. (Default: 0.0)
        time_dim (int): 2 for (N, C, T, H, W) videos, 1 for (N, T, C, H, W). (Default: 2)
        routers, experts, top_k: module paths and top-k for MoEs that ``MoEInspector`` cannot
            discover by itself, as for ``MoEInspector``. (Default: None)

    Raises:
        RouterNotFoundError: (a ``ValueError``) when the model has no MoE router.
        ValueError: for invalid settings and for shared parameters between groups.

    Shapes: videos (N, C, T, H, W) floats in [0, 1], labels (N,) int64.

    Example::

        >>> model = VideoMoE(num_classes=8, num_experts=4, top_k=1).train()
        >>> trainer = JTLAT(model, lr=1e-3, eps=8 / 255)
        >>> for videos, labels in loader:
        ...     losses = trainer.step(model, videos, labels)
        >>> sorted(losses)[:3]
        ['ce', 'expert_ce', 'expert_lip']
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        lr: float = 1e-3,
        group_optimizer: Optional[Callable[[List[nn.Parameter]], torch.optim.Optimizer]] = None,
        eps: float = 8 / 255,
        alpha: float = 0.5,
        attack_steps: int = DEFAULT_ATTACK_STEPS,
        beta: float = 0.9,
        gamma1: float = 1.0,
        gamma2: float = 1.0,
        lam: float = DEFAULT_GROUP_LAM,
        model_lam: float = DEFAULT_MODEL_LAM,
        attack_lam: Optional[float] = None,
        expert_top_k: int = 2,
        aux_weight: float = 0.0,
        time_dim: int = 2,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_attack_settings(eps, alpha, attack_steps, beta, time_dim)
        check_real("gamma1", gamma1, 0.0)
        check_real("gamma2", gamma2, 0.0)
        check_real("lam", lam, 0.0, hint=" (weight of Lip(R) and Lip(E_i), e.g. 1e-3)")
        check_real("model_lam", model_lam, 0.0, hint=" (weight of Lip(F), e.g. 1e-4)")
        if attack_lam is not None:
            check_real("attack_lam", attack_lam, 0.0)
        check_int("expert_top_k", expert_top_k, 1, hint=" (experts per clip trained in the expert update, e.g. 2)")
        check_real("aux_weight", aux_weight, 0.0)
        if optimizer is None:
            check_real("lr", lr, 0.0, low_open=True)
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        if group_optimizer is not None and not callable(group_optimizer):
            raise ValueError(
                f"group_optimizer must be a callable that builds an optimizer from a list of "
                f"parameters, got {type(group_optimizer).__name__}"
            )

        self.module = unwrap_model(model)
        self.eps = eps
        self.alpha = alpha
        self.attack_steps = attack_steps
        self.beta = beta
        self.gamma1 = gamma1
        self.gamma2 = gamma2
        self.lam = lam
        self.model_lam = model_lam
        self.attack_lam = attack_lam
        self.expert_top_k = expert_top_k
        self.aux_weight = aux_weight
        self.time_dim = time_dim
        self.routers = routers
        self.experts = experts
        self.top_k = top_k

        self._find_groups()

        self.optimizer = optimizer or torch.optim.Adam(self.module.parameters(), lr=lr)
        build = group_optimizer or (lambda parameters: clone_optimizer(self.optimizer, parameters))
        self.router_optimizer = build(self.router_parameters)
        for group in self.expert_groups:
            if group.parameters:
                group.optimizer = build(group.parameters)

        self._build_attacks()
        self.last_logits: Optional[torch.Tensor] = None
        self._supported_shapes = set()
        self._warned_eval = [False]

    # -- setup ---------------------------------------------------------------------------------

    def _find_groups(self) -> None:
        try:
            self.layers = find_moe_layers(self.module, self.routers, self.experts, self.top_k)
        except RouterNotFoundError as error:
            raise RouterNotFoundError(
                f"JTLAT trains the routers and experts of a Mixture-of-Experts model, but {error}. "
                "For a model without routing use TLAT."
            ) from error

        self.router_parameters = _trainable(p for layer in self.layers for p in layer.router.parameters())
        if not self.router_parameters:
            raise ValueError(
                f"the routers {[layer.router_name for layer in self.layers]} have no trainable "
                "parameters, so the router update has nothing to train. Unfreeze them "
                "(requires_grad_(True)) or use TLAT."
            )

        self.expert_groups: List[_ExpertGroup] = []
        for layer_index, layer in enumerate(self.layers):
            if not layer.experts:
                raise ValueError(
                    f"no experts were found for the router {layer.router_name!r}. Pass "
                    "experts=[...] with the path of its experts container next to routers=[...]."
                )
            for expert_index, (name, expert) in enumerate(layer.experts):
                self.expert_groups.append(
                    _ExpertGroup(layer_index, expert_index, name, expert, _trainable(expert.parameters()))
                )

        owners = {id(p): "router" for p in self.router_parameters}
        for group in self.expert_groups:
            for parameter in group.parameters:
                owner = owners.setdefault(id(parameter), group.name)
                if owner != group.name:
                    raise ValueError(
                        f"a parameter of expert {group.name!r} is shared with {owner!r}, so "
                        "J-TLAT cannot update one without the other. Give every router and "
                        "expert its own parameters."
                    )

    def _build_attacks(self) -> None:
        common = dict(
            eps=self.eps,
            alpha=self.alpha,
            steps=self.attack_steps,
            early_stop=False,
            beta=self.beta,
            time_dim=self.time_dim,
            routers=self.routers,
            experts=self.experts,
            top_k=self.top_k,
        )
        if self.attack_lam is not None:
            common["lam"] = self.attack_lam

        # The attacks run every step and return the last iterate (early_stop=False). With
        # the first fooling iterate, clips that the model already got wrong at the random
        # start were trained on that start, and J-TLAT lost about 4 points of PGD-10 robust
        # accuracy that way (benchmarks/RESULTS.md, defense section).
        self.router_attack = TLAR(self.module, **common)
        self.expert_attack = TLGAR(self.module, gamma1=self.gamma1, **common)
        self.model_attack = JTLGA(self.module, gamma1=self.gamma1, gamma2=self.gamma2, **common)

    def set_attack_budget(self, eps: float, alpha: Optional[float] = None) -> None:
        """Change the radius ``eps`` and, unless None, the relative step size ``alpha`` of the
        three training attacks, for example to grow eps over the first epochs."""
        set_attack_budget(self, [self.router_attack, self.expert_attack, self.model_attack], eps, alpha)

    @property
    def group_optimizers(self) -> List[torch.optim.Optimizer]:
        """The optimizers of update 1 (router) and update 2 (one per expert with parameters)."""
        return [self.router_optimizer] + [group.optimizer for group in self.expert_groups if group.optimizer]

    def set_group_lr(self, lr: float) -> None:
        """Set the learning rate of the router and expert optimizers, for example to follow a
        schedule of the whole-model optimizer."""
        check_real("lr", lr, 0.0)
        for optimizer in self.group_optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> Dict[str, Any]:
        """Return the state of the router and expert optimizers, for checkpoints. The
        whole-model optimizer and the model are left out, because their owner saves them."""
        return {
            "router_optimizer": self.router_optimizer.state_dict(),
            "expert_optimizers": {
                group.name: group.optimizer.state_dict() for group in self.expert_groups if group.optimizer
            },
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Load what ``state_dict`` returned, e.g. when a training run resumes.

        Raises:
            ValueError: when ``state`` names other experts than this model has, or when a
                saved moment (e.g. Adam's ``exp_avg``) has another shape than its parameter.
        """
        experts = {group.name: group for group in self.expert_groups if group.optimizer}
        saved = state.get("expert_optimizers", {}) if isinstance(state, dict) else None
        if saved is None or "router_optimizer" not in state or set(saved) != set(experts):
            found = sorted(saved) if isinstance(saved, dict) else type(state).__name__
            raise ValueError(
                f"state does not fit this JTLAT: it must hold 'router_optimizer' and the optimizers "
                f"of the experts {sorted(experts)}, got {found}. Pass the result of state_dict() "
                "of a JTLAT on the same model."
            )
        _check_optimizer_shapes(self.router_optimizer, state["router_optimizer"], "the router optimizer")
        for name, optimizer_state in saved.items():
            _check_optimizer_shapes(experts[name].optimizer, optimizer_state, f"the optimizer of expert {name!r}")

        self.router_optimizer.load_state_dict(state["router_optimizer"])
        for name, optimizer_state in saved.items():
            experts[name].optimizer.load_state_dict(optimizer_state)

    def _inspector(self) -> MoEInspector:
        return MoEInspector(self.module, self.routers, self.experts, self.top_k, record_experts=False)

    # -- the three updates ---------------------------------------------------------------------

    def update_router(self, model: nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """Update 1: train the routers on TLA-R examples, leaving every other parameter unchanged.

        Loss: ``CE(R(x_R), argmax R(x)) + lam * Lip(R)``, averaged over layers, routing units
        and clips. Under ``torchrun`` the router gradients are averaged across processes.
        Buffers (batch-normalization running statistics) keep their values.

        Returns:
            ``{"router_loss", "router_ce", "router_lip"}`` as floats (Lip(R) before weighting).
        """
        check_step_model(model, self.module, "JTLAT")
        videos, labels = check_batch(videos, labels, self.time_dim)

        with _keep_buffers(self.module):
            x_router = self.router_attack(videos, labels)
            self.module.zero_grad(set_to_none=True)

            with self._inspector() as inspector:
                with torch.no_grad():
                    self.module(videos)
                    clean_logits = [layer.router_logits for layer in inspector.require_layers()]
                self.module(x_router)
                adv_logits = [layer.router_logits for layer in inspector.require_layers()]

            ce = router_loss(adv_logits, clean_logits).mean()
            lip = router_lipschitz(adv_logits, clean_logits, x_router, videos).mean()
            loss = ce + self.lam * lip

            set_gradients(loss, self.router_parameters)
            average_gradients(self.router_parameters)
            self.router_optimizer.step()
            self.module.zero_grad(set_to_none=True)

            return {"router_loss": loss.item(), "router_ce": ce.item(), "router_lip": lip.item()}

    def update_experts(self, model: nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """Update 2: train the experts that TLGA-R examples are routed to, leaving every other
        parameter unchanged.

        For each clip, I = the ``expert_top_k`` experts with the largest router logits at x_G.
        Loss per clip: ``sum over i in I of w_i(x_G) * [CE(E_i(x_G), y) + lam * Lip(E_i)]``,
        averaged over MoE layers and clips. w_i (softmax over all M router logits at i) is
        detached. Only the experts in some clip's I step (under ``torchrun``, some clip of the
        global batch). Buffers (batch-normalization running statistics) keep their values.

        Returns:
            ``{"expert_loss", "expert_ce", "expert_lip", "experts_updated"}`` as floats:
            the loss, the mean CE and Lip(E_i) over the (clip, expert) pairs, and the number of
            experts that stepped.

        Raises:
            ValueError: for token- or frame-level routing and for experts that do not return
                class logits, before any parameter changes.
        """
        check_step_model(model, self.module, "JTLAT")
        videos, labels = check_batch(videos, labels, self.time_dim)

        with _keep_buffers(self.module):
            x_guided = self.expert_attack(videos, labels)
            adv_layers = self._clip_layer_passes(x_guided)
            clean_layers = self._clip_layer_passes(videos)
            self.module.zero_grad(set_to_none=True)

            per_layer = [videos.new_zeros(videos.shape[0]) for _ in self.layers]
            selected = torch.zeros(len(self.expert_groups), dtype=torch.bool)
            ce_sum, lip_sum, pairs = 0.0, 0.0, 0
            for group_index, group in enumerate(self.expert_groups):
                adv, clean = adv_layers[group.layer], clean_layers[group.layer]

                top = adv.router_logits.topk(min(self.expert_top_k, adv.router_logits.shape[1]), dim=1).indices
                rows = (top == group.index).any(dim=1).nonzero().flatten()
                if rows.numel() == 0:
                    continue

                outputs = self._expert_logits(group, adv.inputs[rows])
                with torch.no_grad():
                    reference = self._expert_logits(group, clean.inputs[rows])

                ce = F.cross_entropy(outputs, labels[rows], reduction="none")
                lip = lipschitz_ratio(outputs, reference, x_guided[rows], videos[rows])
                gate_weights = adv.router_logits.softmax(dim=1)[rows, group.index]
                per_layer[group.layer] = per_layer[group.layer].index_add(0, rows, gate_weights * (ce + self.lam * lip))

                selected[group_index] = True
                ce_sum += ce.sum().item()
                lip_sum += lip.sum().item()
                pairs += rows.numel()

            loss = torch.stack(per_layer).mean(dim=0).mean()
            chosen_groups = [group for group, chosen in zip(self.expert_groups, selected.tolist()) if chosen]
            trained = [p for group in chosen_groups for p in group.parameters]
            if loss.requires_grad and trained:
                set_gradients(loss, trained)
            updated = self._step_selected_experts(selected)
            self.module.zero_grad(set_to_none=True)

            return {
                "expert_loss": loss.item(),
                "expert_ce": ce_sum / max(pairs, 1),
                "expert_lip": lip_sum / max(pairs, 1),
                "experts_updated": float(updated),
            }

    def update_model(self, model: nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """Update 3: train all parameters on J-TLGA examples.

        Loss: ``CE(F(x_J), y) + model_lam * Lip(F)`` (+ ``aux_weight`` times the load-balancing
        loss). Pass the ``DistributedDataParallel`` wrapper as ``model`` under ``torchrun``.
        ``last_logits`` is then set to the detached logits of x_J.

        Returns:
            ``{"model_loss", "model_ce", "model_lip"}`` as floats.
        """
        check_step_model(model, self.module, "JTLAT")
        videos, labels = check_batch(videos, labels, self.time_dim)

        x_joint = self.model_attack(videos, labels)

        losses, self.last_logits = whole_model_update(
            model, self.module, self.optimizer, x_joint, videos, labels, self.model_lam, self.aux_weight
        )
        return {"model_" + key: value for key, value in losses.items()}

    def step(self, model: nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """Run the three J-TLAT updates on a batch: router, weak experts, whole model.

        Args:
            model: the model given at construction, or its ``DistributedDataParallel`` wrapper.
            videos: (N, C, T, H, W) floats in [0, 1].
            labels: (N,) int64 class indices.

        Returns:
            The losses of the three updates (see ``update_router``, ``update_experts`` and
            ``update_model``) in one dict of floats, plus ``"loss"``, the whole-model loss of
            update 3.

        Raises:
            ValueError: for an unsupported model (token-level routing), checked on the first
                batch of each clip shape before any parameter changes.
        """
        check_step_model(model, self.module, "JTLAT")
        videos, labels = check_batch(videos, labels, self.time_dim)
        warn_if_eval_mode(self.module, "JTLAT", self._warned_eval)

        clip_shape = tuple(videos.shape[1:])
        if clip_shape not in self._supported_shapes:
            self._clip_layer_passes(videos[:2])
            self._supported_shapes.add(clip_shape)

        losses = {}
        losses.update(self.update_router(model, videos, labels))
        losses.update(self.update_experts(model, videos, labels))
        losses.update(self.update_model(model, videos, labels))
        losses["loss"] = losses["model_loss"]

        logger.debug("JTLAT step: %s", losses)
        return losses

    # -- helpers of the expert update ----------------------------------------------------------

    def _clip_layer_passes(self, videos: torch.Tensor) -> List[_ClipLayerPass]:
        """Run the model in eval mode without gradient and return, per MoE layer, the input
        rows its router and experts received and its router logits (N, M).

        Raises ``ValueError`` unless every layer routes whole clips: one router call per
        forward pass, one routing unit per clip, and experts that take rows of the router's
        input.
        """
        router_inputs = {index: [] for index in range(len(self.layers))}
        expert_inputs = {}
        handles = []

        def record_router(index):
            def hook(module, args):
                router_inputs[index].append(_first_tensor(args))
            return hook

        def record_expert(group):
            def hook(module, args):
                first = _first_tensor(args)
                expert_inputs[group.name] = None if first is None else tuple(first.shape)
            return hook

        for index, layer in enumerate(self.layers):
            handles.append(layer.router.register_forward_pre_hook(record_router(index)))
        for group in self.expert_groups:
            handles.append(group.module.register_forward_pre_hook(record_expert(group)))

        try:
            with _eval_mode(self.module), torch.no_grad(), self._inspector() as inspector:
                self.module(videos)
                records = inspector.require_layers()
        finally:
            for handle in handles:
                handle.remove()

        passes = []
        for index, layer in enumerate(self.layers):
            calls = router_inputs[index]
            record = next((r for r in records if r.name == layer.router_name), None)
            if len(calls) != 1 or record is None:
                raise ValueError(
                    f"the router {layer.router_name!r} ran {len(calls)} times in one forward pass, but "
                    "J-TLAT's expert update needs each MoE layer to route once per pass."
                )

            inputs = calls[0]
            if record.num_units != 1 or inputs is None or inputs.shape[0] != videos.shape[0]:
                raise ValueError(
                    f"the MoE layer of router {layer.router_name!r} routes {record.num_units} units "
                    "per clip (token- or frame-level routing). J-TLAT's expert update runs each "
                    "expert directly on the clips routed to it, so it supports only clip-level "
                    "routing (one routing unit per clip, as in VideoMoE). Train token-routed "
                    "models such as MoEVideoTransformer with TLAT."
                )

            for name, _ in layer.experts:
                shape = expert_inputs.get(name)
                if name in expert_inputs and (shape is None or shape[1:] != tuple(inputs.shape[1:])):
                    raise ValueError(
                        f"expert {name!r} received input of shape {shape}, not rows of its "
                        f"router's input {tuple(inputs.shape)}, but J-TLAT's expert update needs "
                        "experts that take the same clips as their router."
                    )
            passes.append(_ClipLayerPass(inputs=inputs, router_logits=record.router_logits[:, 0, :]))
        return passes

    def _expert_logits(self, group: _ExpertGroup, inputs: torch.Tensor) -> torch.Tensor:
        outputs = group.module(inputs)
        if isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and outputs.shape[0] == inputs.shape[0]:
            return outputs

        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(
            f"expert {group.name!r} returned {shape} for {inputs.shape[0]} clips, but J-TLAT's "
            "expert update needs class logits of shape (clips, num_classes) to compute "
            "CE(E_i(x_G), y). It supports MoE layers whose experts are classifiers, as in VideoMoE."
        )

    def _step_selected_experts(self, selected: torch.Tensor) -> int:
        """Step the optimizers of the selected experts and return how many stepped.

        Under ``torchrun`` an expert steps when any process selected it, with its gradient
        averaged over the processes, so that every process applies the same update.
        """
        if world_size() > 1:
            # NOTE: tested with gloo on CPUs only; the nccl path on GPUs has not run.
            device = self.router_parameters[0].device
            union = selected.to(device=device, dtype=torch.int32)
            dist.all_reduce(union, op=dist.ReduceOp.MAX)
            selected = union.bool().cpu()

        updated = 0
        for group, chosen in zip(self.expert_groups, selected.tolist()):
            if not chosen or group.optimizer is None:
                continue
            average_gradients(group.parameters)
            group.optimizer.step()
            updated += 1
        return updated


# -- training-method adapter -------------------------------------------------------------------


def _relative_alpha(context) -> float:
    # Without the factor, the training attacks of the ATM recipe (PGD-3, step 2.5 * eps / 3)
    # moved about 1/1.69 as far per step as PGD. Update 3 alone trained on them reached 5.6
    # points less PGD-10 robust accuracy (benchmarks/RESULTS.md, defense section).
    return context.attack_alpha / context.eps * MEAN_FRAME_DIVISOR


def training_step(method: str, output_type: Callable[..., Any]) -> Callable:
    """Return a per-batch step function ``step(context, videos, labels)`` that runs TLAT or
    J-TLAT inside a trainer, for a registry of training methods.

    On its first batch the step builds the ``TLAT`` or ``JTLAT`` object from the context and
    keeps it in ``context.state[method]``. The context provides:

    * ``model``: the model to differentiate (the ``DistributedDataParallel`` wrapper under
      ``torchrun``), and ``module``, the unwrapped model, which the attacks run on;
    * ``optimizer``: the optimizer over all parameters. J-TLAT's router and expert optimizers
      copy its class and hyperparameters, and before each batch they take its current learning
      rate, so that a learning-rate schedule on it applies to every group;
    * ``eps`` and ``attack_alpha``, read again before each batch so that a trainer may change
      them, e.g. for an eps warm-up. ``attack_alpha`` is the absolute step of a frame whose
      gradient norm is the clip's mean. The attacks take alpha relative to eps and divide
      each frame's step by ``1 + log(1 + sqrt(Vs))``, which is ``MEAN_FRAME_DIVISOR`` at the
      mean, so they get ``alpha = attack_alpha / eps * MEAN_FRAME_DIVISOR``. A PGD step of
      ``attack_alpha`` thus matches the typical temporal step of TLAT and J-TLAT.
      ``attack_steps`` and ``aux_weight`` are read once;
    * ``restored`` (optional): after a resume, the checkpoint's state dicts by key of
      ``state``. J-TLAT loads its router and expert optimizers from the entry ``"jtlat"``.

    Args:
        method: ``"tlat"`` or ``"jtlat"``.
        output_type: builds the step's result from keywords ``loss`` (a detached scalar
            tensor: TLAT's loss, or J-TLAT's whole-model loss) and ``logits`` (the detached
            logits (N, K) of the last adversarial batch).

    Example::

        >>> METHODS["jtlat"] = TrainingMethod("jtlat", training_step("jtlat", StepOutput), adversarial=True)
    """
    if method not in ("tlat", "jtlat"):
        raise ValueError(f"method={method!r} is invalid: pass 'tlat' or 'jtlat'.")

    def step(context, videos: torch.Tensor, labels: torch.Tensor):
        trainer = context.state.get(method)
        if trainer is None:
            settings = dict(
                optimizer=context.optimizer,
                eps=context.eps,
                alpha=_relative_alpha(context),
                attack_steps=context.attack_steps,
                aux_weight=context.aux_weight,
            )
            trainer = TLAT(context.module, **settings) if method == "tlat" else JTLAT(context.module, **settings)
            context.state[method] = trainer
            # After a resume, J-TLAT's router and expert optimizers continue from the checkpoint.
            saved = getattr(context, "restored", {}).pop(method, None)
            if saved is not None and hasattr(trainer, "load_state_dict"):
                trainer.load_state_dict(saved)

        trainer.set_attack_budget(context.eps, _relative_alpha(context))

        if isinstance(trainer, JTLAT):
            trainer.set_group_lr(context.optimizer.param_groups[0]["lr"])

        losses = trainer.step(context.model, videos, labels)
        loss = torch.tensor(losses["loss"], device=trainer.last_logits.device)
        return output_type(loss=loss, logits=trainer.last_logits)

    step.__name__ = f"{method}_step"
    return step
