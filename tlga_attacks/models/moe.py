"""Clip-level video Mixture-of-Experts: a small 3-D CNN router picks experts per clip.

    clip (N, 3, T, H, W) --> router: ClipRouter ------> router logits (N, M)
                         |                                  | top-k; softmax over all M
                         +--> experts[i] on the clips  <----+ logits, at the k = gate weights
                              that selected expert i
    logits (N, K) = sum over selected experts of gate weight * expert logits

Every MoE layer of this package (this module's models and ``MoEMLP`` in the transformer)
follows one protocol, which hooks use to know which rows each expert saw:

* ``router``: a submodule whose forward returns raw router logits (no softmax), shape
  (N, M) for clip-level routing or (N, U, M) for U routing units per sample.
* ``experts``: an ``nn.ModuleList`` of M experts.
* ``top_k``: experts selected per routing unit.
* dispatch (:func:`dispatch_to_experts`): the routing units are flattened to N*U rows,
  sample-major. ``router_logits.topk(top_k)`` selects the experts, and the softmax over all
  M logits, taken at the k selected experts, gives the gate weights (Switch Transformer
  gating, not renormalized over the k, so that a top-1 router learns from the task loss). Expert i runs once per forward pass, on the
  rows that selected it in ascending order, and not at all when no row selected it.
* no capacity limit and no dropped units, so a clip's output does not depend on the other
  clips in its batch. This holds in eval mode, where batch normalization uses running
  statistics.
* ``aux_loss``: the load-balancing loss of the last forward pass (:func:`load_balancing_loss`),
  which trainers add to the task loss. The model's forward returns only the logits.
"""

import logging
import math
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn

from .backbones import Conv3dBlock, build_backbone, check_backbone_name, check_int_range, check_num_classes

logger = logging.getLogger(__name__)


def dispatch_to_experts(
    inputs: torch.Tensor,
    router_logits: torch.Tensor,
    experts: nn.ModuleList,
    top_k: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run each selected expert once on its rows and sum the gate-weighted outputs.

    Args:
        inputs: rows to route, shape (R, ...).
        router_logits: raw router logits, shape (R, M).
        experts: the M experts. Expert i maps (R_i, ...) to (R_i, ...out).
        top_k: experts per row, 1 <= top_k <= M.

    Returns:
        ``(output, selected)``: the combined output (R, ...out), which has the dtype of the
        expert outputs, and the selected expert indices (R, top_k).

    The gradient reaches ``router_logits`` through the gate weights, also with ``top_k=1``:
    a gate weight is the softmax over all M logits taken at the selected expert.
    """
    num_rows = router_logits.shape[0]
    if num_rows == 0:
        raise ValueError("the batch is empty (0 routing units): pass at least one clip.")

    # The hooks (MoEInspector) reproduce this gating to report gate weights.
    selected = router_logits.topk(top_k, dim=-1).indices
    gate_weights = router_logits.softmax(dim=-1).gather(-1, selected)

    output = None
    for index, expert in enumerate(experts):
        is_selected = selected == index
        rows = is_selected.any(dim=-1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue

        expert_output = expert(inputs[rows])
        # top-k indices are distinct, so at most one slot of a row matches this expert.
        row_weights = (gate_weights * is_selected).sum(dim=-1)[rows].to(expert_output.dtype)
        weighted = row_weights.view(-1, *[1] * (expert_output.dim() - 1)) * expert_output

        if output is None:
            output = expert_output.new_zeros((num_rows,) + tuple(expert_output.shape[1:]))
        output = output.index_add(0, rows, weighted)

    return output, selected


def load_balancing_loss(router_logits: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Compute the Switch-Transformer load-balancing loss ``M * sum_i f_i * P_i``.

    f_i is the share of the R * k routing slots assigned to expert i, and P_i is the mean
    over rows of the softmax over all M router logits. The loss is 1 for uniform routing
    and grows toward M as routing collapses onto one expert. Only P_i carries a gradient.

    Args:
        router_logits: raw router logits, shape (R, M).
        selected: selected expert indices, shape (R, k).

    Returns:
        A scalar tensor.
    """
    num_experts = router_logits.shape[-1]
    mean_probabilities = router_logits.softmax(dim=-1).mean(dim=0)
    slot_counts = torch.bincount(selected.flatten(), minlength=num_experts).to(mean_probabilities.dtype)
    slot_shares = slot_counts / selected.numel()
    return num_experts * (slot_shares * mean_probabilities).sum()


class AuxLossCopyMixin:
    """Make modules with an ``aux_loss`` attribute copyable after a forward pass.

    ``aux_loss`` keeps the autograd graph of the last forward pass, so that trainers can add
    it to the task loss, and ``copy.deepcopy`` raises for such a tensor. Copies and pickles
    take a detached ``aux_loss`` instead, while the module itself keeps its graph.
    """

    def __getstate__(self):
        state = self.__dict__.copy()
        if isinstance(state.get("aux_loss"), torch.Tensor):
            state["aux_loss"] = state["aux_loss"].detach()
        return state


class ClipRouter(nn.Module):
    """Small 3-D CNN that maps a clip to raw router logits, one per expert.

    Two :class:`Conv3dBlock` stages (``width`` channels with stride (2, 4, 4), then
    2 * ``width`` channels with stride 2), global average pooling and a linear layer to M
    logits. With the default width 8 it costs about 1 MFLOP per 16x32x32 clip, a few percent
    of a ``tiny3d`` expert.

    Args:
        num_experts: number of experts M.
        width: channels of the first stage. Default 8.
        noise_std: standard deviation of Gaussian noise added to the logits in training mode
            only. Default 0.0 (no noise). The returned logits include the noise, so hooks
            that record them see the logits that were dispatched.

    Shape: (N, 3, T, H, W) -> (N, M).
    """

    def __init__(self, num_experts: int, width: int = 8, noise_std: float = 0.0):
        super().__init__()
        self.noise_std = noise_std

        self.block1 = Conv3dBlock(3, width, stride=(2, 4, 4))
        self.block2 = Conv3dBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(2 * width, num_experts)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.block2(self.block1(video))).flatten(1)
        logits = self.fc(features)

        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        return logits


class VideoMoE(AuxLossCopyMixin, nn.Module):
    """Video Mixture-of-Experts with clip-level top-k routing and sparse dispatch.

    A :class:`ClipRouter` produces M logits per clip. The ``top_k`` experts with the largest
    logits run on that clip, and the output is the sum of their logits weighted by the
    softmax over all M router logits taken at those experts. An expert that no clip selected does not run.
    After each forward pass ``aux_loss`` stores the load-balancing loss of the batch.

    Args:
        num_classes: number of classes K, at least 2.
        num_experts: number of experts M, at least 1. Default 4.
        top_k: experts per clip, from 1 to M. Default 1.
        expert: backbone name of every expert, one of ``BACKBONE_NAMES``. Default ``"tiny3d"``.
        router_width: channels of the router's first stage. Default 8.
        expert_width: channel width multiplier of ``tiny3d`` experts. Default 1.0.
        expert_weights: optional path of a backbone state dict loaded into every expert
            (see ``build_backbone``). It is not stored in ``config``, because ``config``
            describes the architecture and a saved model carries its own weights.
        noisy_gating: add Gaussian noise to the router logits in training mode. Default False.
        noise_std: standard deviation of that noise. Default 1.0.

    Attributes:
        router, experts, top_k, num_experts, num_classes: as above.
        aux_loss: scalar load-balancing loss of the last forward pass, None before the first.
        config: JSON-serializable constructor arguments plus ``"name"``, so that
            ``build_model(**model.config)`` rebuilds the architecture.

    Shape: (N, 3, T, H, W) floats in [0, 1] -> logits (N, K).

    Example:
        >>> model = VideoMoE(num_classes=10, num_experts=4, top_k=1)
        >>> logits = model(torch.rand(2, 3, 16, 32, 32))
        >>> logits.shape, model.aux_loss.shape
        (torch.Size([2, 10]), torch.Size([]))
    """

    def __init__(
        self,
        num_classes: int,
        num_experts: int = 4,
        top_k: int = 1,
        expert: str = "tiny3d",
        router_width: int = 8,
        expert_width: float = 1.0,
        expert_weights: Optional[Union[str, Path]] = None,
        noisy_gating: bool = False,
        noise_std: float = 1.0,
    ):
        super().__init__()
        check_num_classes(num_classes)
        check_int_range("num_experts", num_experts, 1)
        check_int_range("top_k", top_k, 1, num_experts, hint=f" (num_experts={num_experts})")
        check_backbone_name("expert", expert)
        check_int_range("router_width", router_width, 1)
        if not isinstance(noisy_gating, bool):
            raise ValueError(f"noisy_gating={noisy_gating!r} is invalid: pass True or False.")
        if not isinstance(noise_std, (int, float)) or isinstance(noise_std, bool) or not math.isfinite(noise_std) or noise_std < 0:
            raise ValueError(f"noise_std={noise_std!r} is invalid: pass a finite number >= 0.")

        self.num_classes = num_classes
        self.num_experts = num_experts
        self.top_k = top_k
        self.aux_loss: Optional[torch.Tensor] = None
        self.config = {
            "name": "moe",
            "num_classes": num_classes,
            "num_experts": num_experts,
            "top_k": top_k,
            "expert": expert,
            "router_width": router_width,
            "expert_width": float(expert_width),
            "noisy_gating": noisy_gating,
            "noise_std": float(noise_std),
        }

        self.router = ClipRouter(num_experts, width=router_width, noise_std=noise_std if noisy_gating else 0.0)
        self.experts = nn.ModuleList(
            build_backbone(expert, num_classes, weights=expert_weights, width=expert_width) for _ in range(num_experts)
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(
                f"video has shape {tuple(video.shape)}: expected (N, 3, T, H, W). "
                "Move the channel axis to position 1 (for example video.permute(0, 2, 1, 3, 4))."
            )

        router_logits = self.router(video)
        logits, selected = dispatch_to_experts(video, router_logits, self.experts, self.top_k)
        self.aux_loss = load_balancing_loss(router_logits, selected)

        return logits


class DenseVideoMoE(VideoMoE):
    """Dense counterpart of :class:`VideoMoE`: every expert runs on every clip.

    The router and experts are those of ``VideoMoE``, and the output is the sum of the expert
    logits weighted by the softmax over all M router logits. This is the MoE protocol with
    ``top_k == num_experts``, so the same hooks apply, and ``aux_loss`` is the constant 1
    (every expert gets an equal share of the slots).

    Args:
        num_classes, num_experts, expert, router_width, expert_width, expert_weights,
        noisy_gating, noise_std: as for :class:`VideoMoE`.

    Shape: (N, 3, T, H, W) -> logits (N, K).

    Example:
        >>> model = DenseVideoMoE(num_classes=10, num_experts=4)
        >>> model(torch.rand(2, 3, 16, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int,
        num_experts: int = 4,
        expert: str = "tiny3d",
        router_width: int = 8,
        expert_width: float = 1.0,
        expert_weights: Optional[Union[str, Path]] = None,
        noisy_gating: bool = False,
        noise_std: float = 1.0,
    ):
        check_int_range("num_experts", num_experts, 1)
        super().__init__(
            num_classes,
            num_experts=num_experts,
            top_k=num_experts,
            expert=expert,
            router_width=router_width,
            expert_width=expert_width,
            expert_weights=expert_weights,
            noisy_gating=noisy_gating,
            noise_std=noise_std,
        )

        self.config["name"] = "dense"
        del self.config["top_k"]
