"""Attacks on the router alone: PGD-R, TLA-R and TLGA-R.

They accept labels only to decide success (the first iterate that misclassifies is
returned); their objectives never use them.
"""

from .. import objectives
from ._docs import LAM_ARGUMENT, TEMPORAL_ARGUMENTS, attack_doc
from .base import MoEAttack

__all__ = ["PGDR", "TLAR", "TLGAR"]


class PGDR(MoEAttack):
    __doc__ = attack_doc(
        "PGD-R: projected gradient ascent on the router loss, the router-level PGD baseline.",
        objective="L_R = CE(R(x'), argmax R(x)), averaged over MoE layers and routing units",
        step="constant, alpha * eps * sign(gradient)",
        extra_arguments="",
        example="""        >>> atk = PGDR(model, eps=8/255, steps=10)
        >>> adv_videos = atk(videos, labels)""",
    )

    step_rule = "sign"

    def __init__(self, model, eps=8 / 255, alpha=0.5, steps=10, random_start=True, **kwargs):
        super().__init__(
            "PGDR", model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, **kwargs
        )

    def objective(self, clean, adv):
        return objectives.router_loss(adv.router_logits, clean.router_logits)


class TLAR(MoEAttack):
    __doc__ = attack_doc(
        "TLA-R: temporal Lipschitz attack on the router.",
        objective="L_R + lam * Lip(R)",
        step="temporal adaptive (per-frame step sizes from accumulated gradient norms)",
        extra_arguments=TEMPORAL_ARGUMENTS + LAM_ARGUMENT,
        example="""        >>> atk = TLAR(model, eps=8/255)
        >>> adv_videos = atk(videos, labels)""",
    )

    def __init__(self, model, eps=8 / 255, alpha=0.5, steps=10, beta=0.9, lam=1e-3, **kwargs):
        super().__init__(
            "TLAR", model, eps=eps, alpha=alpha, steps=steps, beta=beta, lam=lam, **kwargs
        )

    def objective(self, clean, adv):
        return self.router_term(clean, adv, guided=False)


class TLGAR(MoEAttack):
    __doc__ = attack_doc(
        "TLGA-R: temporal Lipschitz-guided attack on the router. Besides pushing routing away "
        "from the clean choice, it pulls routing onto the weakest expert "
        "y_R = argmin R(x), the expert the router trusts least on the clean input.",
        objective="L_R + lam * Lip(R) - gamma1 * CE(R(x'), y_R)",
        step="temporal adaptive",
        extra_arguments=TEMPORAL_ARGUMENTS + LAM_ARGUMENT + """
        gamma1 (float): weight of the weakest-expert guidance. (Default: 1.0)""",
        example="""        >>> atk = TLGAR(model, eps=8/255, gamma1=1.0)
        >>> adv_videos = atk(videos, labels)""",
    )

    def __init__(
        self, model, eps=8 / 255, alpha=0.5, steps=10, beta=0.9, lam=1e-3, gamma1=1.0, **kwargs
    ):
        super().__init__(
            "TLGAR", model, eps=eps, alpha=alpha, steps=steps, beta=beta, lam=lam,
            gamma1=gamma1, **kwargs
        )

    def objective(self, clean, adv):
        return self.router_term(clean, adv, guided=True)
