"""Metrics of one benchmark cell, accumulated as exact sums per batch, and the guard checks.

A cell is one (model, attack, eps). Each batch of clips yields a ``BatchStats`` of sums and
counts. ``combine`` adds the batches in batch order, so the totals are the same whether one
process or several computed them. ``cell_metrics`` turns the totals into rates.

Routing metrics compare the router logits of the clean and the adversarial input, both
recorded with ``MoEInspector`` (one no-grad forward pass each). A routing unit is one clip
for clip-level routing, or one frame or token for finer routing, in every MoE layer:

* routing flip rate: share of units whose top-1 expert changes;
* routing IoU: intersection over union of the clean and adversarial top-k expert sets,
  averaged over units;
* weakest-expert hit rate: share of units whose adversarial top-1 expert is
  ``y_R = argmin`` of the clean router logits, the expert the router trusts least;
* Lips-R: the router Lipschitz ratio ``Lip(R) = MSE(R(x'), R(x)) / max(MSE(x', x), 1e-12)``
  per clip at the cell's adversarial example x', averaged over layers and clips. At the
  cell of the ``tla-r`` attack this is the Lips-R of the method: Lip(R) at the TLA-R example.
"""

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from ..hooks import MoELayerRecord
from ..objectives import router_lipschitz

logger = logging.getLogger(__name__)

__all__ = [
    "BatchStats",
    "EPS_BALL_TOLERANCE",
    "batch_stats",
    "cell_metrics",
    "check_eps_ball",
    "check_eps_zero",
    "check_monotonic",
    "combine",
    "routing_sums",
]

# Rounding allowance of the eps-ball check. The attacks of this library keep |x' - x| <= eps
# exactly, but a toolkit that clamps the perturbation to float32(eps) can exceed eps by one
# float32 rounding (about 2e-9 at 8/255). 1e-6 is far below one gray level (1/255 = 3.9e-3).
EPS_BALL_TOLERANCE = 1e-6


@dataclass
class BatchStats:
    """Sums and counts of one batch (or of several, after ``combine``).

    Attributes:
        clips: clips in the batch.
        clean_correct, adv_correct: clips classified correctly before and after the attack.
        attacked: clips correctly classified on the clean input.
        fooled: of those, clips misclassified after the attack.
        max_linf: largest L-infinity norm of a perturbation, in pixel units ([0, 1] scale).
        l2_sum: sum over clips of the L2 norm of the perturbation.
        eps_violations: clips whose perturbation exceeds eps by more than the tolerance.
        routing_units, routing_flips, iou_sum, weakest_hits: routing sums over units.
        lips_r_sum, lips_r_clips: sum of Lip(R) over clips, and the clips it covers.
        forward_passes, backward_passes: model passes per clip, summed over the clips.
        attack_seconds: wall time of the attack calls.
    """

    clips: int = 0
    clean_correct: int = 0
    adv_correct: int = 0
    attacked: int = 0
    fooled: int = 0
    max_linf: float = 0.0
    l2_sum: float = 0.0
    eps_violations: int = 0
    routing_units: int = 0
    routing_flips: int = 0
    iou_sum: float = 0.0
    weakest_hits: int = 0
    lips_r_sum: float = 0.0
    lips_r_clips: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    attack_seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "BatchStats":
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def routing_sums(
    clean_layers: Sequence[MoELayerRecord], adv_layers: Sequence[MoELayerRecord]
) -> Dict[str, float]:
    """Routing sums over every unit of every MoE layer of a batch.

    Args:
        clean_layers, adv_layers: ``MoEInspector.layers`` of the clean and the adversarial
            forward pass; router logits (N, U, M), selected experts (N, U, k).

    Returns:
        ``routing_units``, ``routing_flips``, ``iou_sum`` and ``weakest_hits``.

    Raises:
        ValueError: the two passes recorded different layers or unit counts.
    """
    if len(clean_layers) != len(adv_layers):
        raise ValueError(
            f"the clean pass recorded {len(clean_layers)} MoE layers and the adversarial pass "
            f"{len(adv_layers)}: routing metrics need the same layers in both passes."
        )

    sums = {"routing_units": 0, "routing_flips": 0, "iou_sum": 0.0, "weakest_hits": 0}
    for clean, adv in zip(clean_layers, adv_layers):
        if clean.router_logits.shape != adv.router_logits.shape:
            raise ValueError(
                f"layer {clean.name!r} has router logits of shape {tuple(clean.router_logits.shape)} on the clean "
                f"input and {tuple(adv.router_logits.shape)} on the adversarial one."
            )
        clean_top1 = clean.router_logits.argmax(dim=-1)
        adv_top1 = adv.router_logits.argmax(dim=-1)
        weakest = clean.router_logits.argmin(dim=-1)

        # Top-k sets as index tensors (N, U, k): count the shared experts of each unit.
        clean_set = clean.selected_experts
        adv_set = adv.selected_experts
        shared = (clean_set.unsqueeze(-1) == adv_set.unsqueeze(-2)).any(dim=-1).sum(dim=-1)
        union = clean_set.shape[-1] + adv_set.shape[-1] - shared

        sums["routing_units"] += clean_top1.numel()
        sums["routing_flips"] += int((clean_top1 != adv_top1).sum())
        sums["iou_sum"] += float((shared.double() / union.double()).sum())
        sums["weakest_hits"] += int((adv_top1 == weakest).sum())
    return sums


def batch_stats(
    x: torch.Tensor,
    adv: torch.Tensor,
    labels: torch.Tensor,
    clean_logits: torch.Tensor,
    adv_logits: torch.Tensor,
    eps: float,
    clean_layers: Optional[Sequence[MoELayerRecord]] = None,
    adv_layers: Optional[Sequence[MoELayerRecord]] = None,
    forward_passes: int = 0,
    backward_passes: int = 0,
    attack_seconds: float = 0.0,
) -> BatchStats:
    """Compute the sums of one attacked batch.

    Args:
        x, adv: clean and adversarial videos, shape (N, C, T, H, W) in [0, 1].
        labels: true labels (N,).
        clean_logits, adv_logits: model logits (N, K) on ``x`` and ``adv``.
        eps: the budget in pixel units ([0, 1] scale), for the eps-ball check.
        clean_layers, adv_layers: MoE records of the two passes, or None for a model
            without a router.
        forward_passes, backward_passes: passes per clip summed over the batch's clips.
        attack_seconds: wall time of the attack call.

    Example:
        >>> stats = batch_stats(x, adv, labels, model(x), model(adv), 8 / 255)
        >>> stats.adv_correct <= stats.clips
        True
    """
    clean_correct = clean_logits.argmax(dim=1) == labels
    adv_correct = adv_logits.argmax(dim=1) == labels

    # Perturbation norms in the input's dtype, as the attacks bound them.
    delta = (adv.detach() - x.detach()).reshape(x.shape[0], -1)
    linf = delta.abs().amax(dim=1)
    l2 = delta.double().norm(dim=1)

    stats = BatchStats(
        clips=x.shape[0],
        clean_correct=int(clean_correct.sum()),
        adv_correct=int(adv_correct.sum()),
        attacked=int(clean_correct.sum()),
        fooled=int((clean_correct & ~adv_correct).sum()),
        max_linf=float(linf.max()) if x.shape[0] else 0.0,
        l2_sum=float(l2.sum()),
        eps_violations=int((linf.double() > eps + EPS_BALL_TOLERANCE).sum()),
        forward_passes=int(forward_passes),
        backward_passes=int(backward_passes),
        attack_seconds=float(attack_seconds),
    )

    if clean_layers is not None and adv_layers is not None:
        for key, value in routing_sums(clean_layers, adv_layers).items():
            setattr(stats, key, value)
        lips = router_lipschitz(
            [layer.router_logits for layer in adv_layers],
            [layer.router_logits for layer in clean_layers],
            adv.detach(),
            x.detach(),
        )
        stats.lips_r_sum = float(lips.double().sum())
        stats.lips_r_clips = x.shape[0]
    return stats


def combine(batches: Iterable[BatchStats]) -> BatchStats:
    """Add batch statistics in the given order (the maximum for ``max_linf``)."""
    total = BatchStats()
    for batch in batches:
        for f in fields(BatchStats):
            if f.name == "max_linf":
                total.max_linf = max(total.max_linf, batch.max_linf)
            else:
                setattr(total, f.name, getattr(total, f.name) + getattr(batch, f.name))
    return total


def _rate(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def cell_metrics(total: BatchStats, has_router: bool) -> Dict[str, Any]:
    """Turn the sums of a cell into its metrics.

    Accuracies and rates are fractions in [0, 1], or None where nothing was counted (no
    clip, or no correctly classified clip for the success rate). ``max_linf`` and
    ``mean_l2`` are in pixel units of the [0, 1] scale. Routing metrics are None for a model
    without a router.
    """
    metrics = {
        "num_clips": total.clips,
        "clean_accuracy": _rate(total.clean_correct, total.clips),
        "robust_accuracy": _rate(total.adv_correct, total.clips),
        "attack_success_rate": _rate(total.fooled, total.attacked),
        "max_linf": total.max_linf,
        "mean_l2": _rate(total.l2_sum, total.clips),
        "eps_violations": total.eps_violations,
        "routing_flip_rate": None,
        "routing_iou": None,
        "weakest_expert_hit_rate": None,
        "lips_r": None,
        "forward_passes_per_clip": _rate(total.forward_passes, total.clips),
        "backward_passes_per_clip": _rate(total.backward_passes, total.clips),
        "seconds_per_clip": _rate(total.attack_seconds, total.clips),
    }
    if has_router:
        metrics["routing_flip_rate"] = _rate(total.routing_flips, total.routing_units)
        metrics["routing_iou"] = _rate(total.iou_sum, total.routing_units)
        metrics["weakest_expert_hit_rate"] = _rate(total.weakest_hits, total.routing_units)
        metrics["lips_r"] = _rate(total.lips_r_sum, total.lips_r_clips)
    return metrics


# -- guards against a broken evaluation ------------------------------------------------------


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def check_eps_zero(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Check that robust accuracy equals clean accuracy at eps 0, per (model, attack).

    Uses full cells with eps 0 and the eps-0 check records (kind ``"eps0_check"``). A
    perturbation of size 0 cannot change a prediction, so any difference means the
    evaluation compares different inputs or models. An attack that failed at eps 0 fails
    the check too.

    Returns:
        One check per record: ``{"check", "model", "attack", "passed", "detail"}``.
    """
    checks = []
    for record in records:
        if record.get("eps") != 0 or record.get("status") == "not_applicable":
            continue
        if record.get("status") != "ok":
            checks.append(
                {
                    "check": "eps0",
                    "model": record["model"],
                    "attack": record["attack"],
                    "passed": False,
                    "detail": f"the attack failed at eps 0: {record.get('reason')}",
                }
            )
            continue
        clean, robust = record["counts"]["clean_correct"], record["counts"]["adv_correct"]
        scope = "first batch" if record.get("kind") == "eps0_check" else "all clips"
        checks.append(
            {
                "check": "eps0",
                "model": record["model"],
                "attack": record["attack"],
                "passed": clean == robust,
                "detail": (
                    f"robust {_percent(record['robust_accuracy'])} vs clean {_percent(record['clean_accuracy'])} "
                    f"at eps 0 on {record['num_clips']} clips ({scope})"
                ),
            }
        )
    return checks


def check_monotonic(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Check that robust accuracy never rises with eps, per (model, attack), with no tolerance.

    Only full cells (kind ``"cell"``) with status ``"ok"`` take part. A rise means that a
    larger budget found fewer adversarial examples: the attack is too weak or too noisy at
    that budget (too few steps or clips).

    Returns:
        One check per (model, attack) with at least two budgets; a failed check lists each
        violation as ``eps a: RA_a -> eps b: RA_b``.
    """
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for record in records:
        if record.get("kind", "cell") == "cell" and record.get("status") == "ok":
            groups.setdefault((record["model"], record["attack"]), []).append(record)

    checks = []
    for (model, attack), group in groups.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda record: record["eps"])
        violations = []
        for lower, higher in zip(group, group[1:]):
            if higher["robust_accuracy"] > lower["robust_accuracy"]:
                violations.append(
                    f"eps {lower['eps']:g}: {_percent(lower['robust_accuracy'])} -> "
                    f"eps {higher['eps']:g}: {_percent(higher['robust_accuracy'])}"
                )
        budgets = ", ".join(f"{record['eps']:g}" for record in group)
        checks.append(
            {
                "check": "monotonic",
                "model": model,
                "attack": attack,
                "passed": not violations,
                "detail": "; ".join(violations) if violations else f"non-increasing over eps {budgets}",
            }
        )
    return checks


def check_eps_ball(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Check that every adversarial example of every cell lies in its eps-ball.

    Returns:
        One check per record with status ``"ok"``, failed where a clip's L-infinity
        perturbation exceeds eps by more than ``EPS_BALL_TOLERANCE``.
    """
    checks = []
    for record in records:
        if record.get("status") != "ok":
            continue
        eps_pixels = record["eps"] / 255
        violations = record["eps_violations"]
        checks.append(
            {
                "check": "eps_ball",
                "model": record["model"],
                "attack": record["attack"],
                "eps": record["eps"],
                "passed": violations == 0 and record["max_linf"] <= eps_pixels + EPS_BALL_TOLERANCE,
                "detail": (
                    f"max L-inf {255 * record['max_linf']:.4f}/255 vs eps {record['eps']:g}/255, "
                    f"{violations} of {record['num_clips']} clips outside"
                ),
            }
        )
    return checks
