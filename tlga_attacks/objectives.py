"""Objective terms of the attack family, each a per-sample tensor of shape (N,).

Every term is a sum (or mean) of per-sample quantities, so a clip's gradient never depends on
the other clips of its batch. Router terms take lists of router logits, one (N, U, M) tensor
per MoE layer, and average over layers and routing units.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .hooks import MoELayerRecord

__all__ = [
    "expert_objective",
    "lipschitz_ratio",
    "model_loss",
    "router_lipschitz",
    "router_loss",
    "weakest_expert_guidance",
]

MIN_INPUT_DISTANCE = 1e-12


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(dim=1)


def lipschitz_ratio(
    output_adv: torch.Tensor,
    output_clean: torch.Tensor,
    x_adv: torch.Tensor,
    x_clean: torch.Tensor,
) -> torch.Tensor:
    """Finite-difference local Lipschitz estimate of a function g, per sample.

    ``Lip(g) = MSE(g(x'), g(x)) / max(MSE(x', x), 1e-12)`` with the MSE taken per sample over
    all remaining dimensions.

    Shapes: outputs (N, ...), inputs (N, ...); returns (N,).
    """
    numerator = _per_sample_mse(output_adv, output_clean)
    denominator = _per_sample_mse(x_adv, x_clean).clamp_min(MIN_INPUT_DISTANCE)
    return numerator / denominator


def model_loss(
    logits: torch.Tensor, labels: torch.Tensor, targets: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Cross-entropy of the model, per sample: ``CE(F(x'), y)``, or ``-CE(F(x'), target)``
    when ``targets`` is given (targeted mode). Shapes: (N, K), (N,) -> (N,)."""
    if targets is not None:
        return -F.cross_entropy(logits, targets, reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


def _unit_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per routing unit, averaged over units: (N, U, M), (N, U) -> (N,)."""
    batch, units, experts = logits.shape
    loss = F.cross_entropy(logits.reshape(-1, experts), target.reshape(-1), reduction="none")
    return loss.reshape(batch, units).mean(dim=1)


def _layer_mean(values: List[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values, dim=0).mean(dim=0)


def router_loss(
    router_logits_adv: Sequence[torch.Tensor], router_logits_clean: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Router loss ``L_R = CE(R_l(x'), argmax R_l(x))``, averaged over layers and units.

    Maximizing it moves each routing unit away from the expert chosen on the clean input.
    Shapes: lists of (N, U, M) -> (N,).
    """
    return _layer_mean(
        [
            _unit_cross_entropy(adv, clean.argmax(dim=-1))
            for adv, clean in zip(router_logits_adv, router_logits_clean)
        ]
    )


def weakest_expert_guidance(
    router_logits_adv: Sequence[torch.Tensor], router_logits_clean: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy towards the weakest expert ``y_R = argmin R_l(x)``, averaged over layers
    and units. Attacks subtract it, which pulls routing onto the expert the router trusts least
    on the clean input. Shapes: lists of (N, U, M) -> (N,)."""
    return _layer_mean(
        [
            _unit_cross_entropy(adv, clean.argmin(dim=-1))
            for adv, clean in zip(router_logits_adv, router_logits_clean)
        ]
    )


def router_lipschitz(
    router_logits_adv: Sequence[torch.Tensor],
    router_logits_clean: Sequence[torch.Tensor],
    x_adv: torch.Tensor,
    x_clean: torch.Tensor,
) -> torch.Tensor:
    """``Lip(R)``: the Lipschitz ratio of the router logits, averaged over layers. (N,)"""
    return _layer_mean(
        [
            lipschitz_ratio(adv, clean, x_adv, x_clean)
            for adv, clean in zip(router_logits_adv, router_logits_clean)
        ]
    )


def expert_objective(
    layers_adv: Sequence[MoELayerRecord],
    layers_clean: Sequence[MoELayerRecord],
    x_adv: torch.Tensor,
    x_clean: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    lam: float,
) -> torch.Tensor:
    """TLA-E objective: ``sum_i w_i * [CE(E_i(x'), y) + lam * Lip(E_i)]`` per routing unit,
    over the experts active at x', then averaged over units and layers. Shape: (N,).

    ``w_i`` are the gate weights at x', detached. The CE term applies only to experts whose
    outputs are class logits of a clip-level layer (U = 1, last dimension = number of classes).
    ``Lip(E_i)`` compares the expert's output on a unit at x' with its output on the same unit
    at x, so it is taken only on units routed to expert i in both passes.

    NOTE: the distance in the denominator of ``Lip(E_i)`` is the per-sample distance of the
    model inputs, also for token-level experts whose own inputs are hidden features.
    """
    batch = x_adv.shape[0]
    per_layer = []

    # As in the attacks' other Lipschitz terms, the input distance gets no gradient.
    input_distance = _per_sample_mse(x_adv.detach(), x_clean).clamp_min(MIN_INPUT_DISTANCE)
    for adv, clean in zip(layers_adv, layers_clean):
        units = adv.num_units
        total = x_adv.new_zeros(batch * units)
        # Gate weight of (unit, expert) at x'; zero where the expert is not selected.
        weights = torch.zeros(batch * units, adv.num_experts, device=x_adv.device, dtype=x_adv.dtype)
        weights.scatter_(
            1,
            adv.selected_experts.reshape(batch * units, -1),
            adv.gate_weights.detach().reshape(batch * units, -1).to(x_adv.dtype),
        )
        clean_outputs = {
            out.expert: out for out in clean.expert_outputs if out.rows is not None
        }

        for out in adv.expert_outputs:
            if out.rows is None:
                continue
            rows = out.rows
            samples = torch.div(rows, units, rounding_mode="floor")
            term = torch.zeros_like(rows, dtype=x_adv.dtype)

            if units == 1 and out.output.dim() == 2 and out.output.shape[1] == num_classes:
                term = term + F.cross_entropy(out.output, labels[samples], reduction="none")

            reference = clean_outputs.get(out.expert)
            if reference is not None and lam:
                shared, adv_pos, clean_pos = _shared_rows(rows, reference.rows)
                if shared.numel():
                    diff = out.output[adv_pos] - reference.output[clean_pos].detach()
                    lip = diff.pow(2).reshape(shared.numel(), -1).mean(dim=1)
                    lip = lip / input_distance[torch.div(shared, units, rounding_mode="floor")]
                    term = term.index_add(0, adv_pos, lam * lip)

            total = total.index_add(0, rows, weights[rows, out.expert] * term)

        per_layer.append(total.reshape(batch, units).mean(dim=1))

    if not per_layer:
        return x_adv.new_zeros(batch)
    return _layer_mean(per_layer)


def _shared_rows(rows_a: torch.Tensor, rows_b: torch.Tensor):
    """Rows present in both sorted index tensors, with their positions in each."""
    mask_a = torch.isin(rows_a, rows_b)
    shared = rows_a[mask_a]
    positions_a = mask_a.nonzero().flatten()
    positions_b = torch.searchsorted(rows_b, shared)
    return shared, positions_a, positions_b
