"""TLA-E: the attack on the experts that the router selects."""

from .. import objectives
from ._docs import LAM_ARGUMENT, TEMPORAL_ARGUMENTS, attack_doc
from .base import MoEAttack

__all__ = ["TLAE"]


class TLAE(MoEAttack):
    __doc__ = attack_doc(
        "TLA-E: temporal Lipschitz attack on the active experts. Each expert that runs at the "
        "current iterate contributes its own cross-entropy and Lipschitz ratio, weighted by its "
        "gate weight (detached).",
        objective="sum over active experts i of w_i * [CE(E_i(x'), y) + lam * Lip(E_i)]; the CE "
        "term only where expert outputs are class logits, Lip(E_i) only on units that expert i "
        "processed at both x and x'",
        step="temporal adaptive",
        extra_arguments=TEMPORAL_ARGUMENTS + LAM_ARGUMENT,
        example="""        >>> atk = TLAE(model, eps=8/255)
        >>> adv_videos = atk(videos, labels)""",
    )

    uses_experts = True

    def __init__(self, model, eps=8 / 255, alpha=0.5, steps=10, beta=0.9, lam=1e-3, **kwargs):
        super().__init__(
            "TLAE", model, eps=eps, alpha=alpha, steps=steps, beta=beta, lam=lam, **kwargs
        )

    def objective(self, clean, adv):
        return objectives.expert_objective(
            adv.layers, clean.layers, adv.x, clean.x, clean.labels, clean.logits.shape[1], self.lam
        )
