"""Attacks on the whole model: TLA-M, and the joint router-and-model attacks J-TLA and J-TLGA.

All three support torchattacks' targeted modes: the model cross-entropy term becomes
``-CE(F(x'), target)`` while the router terms stay as they are.
"""

from ._docs import MODEL_LAM_ARGUMENT, TEMPORAL_ARGUMENTS, attack_doc
from .base import MoEAttack

__all__ = ["JTLA", "JTLGA", "TLAM"]

GAMMA2_ARGUMENT = """
        gamma2 (float): weight of the router objective. (Default: 1.0)"""


class TLAM(MoEAttack):
    __doc__ = attack_doc(
        "TLA-M: temporal Lipschitz attack on the model output. It needs no router, so it also "
        "runs on dense models.",
        objective="CE(F(x'), y) + lam * Lip(F)",
        step="temporal adaptive",
        extra_arguments=TEMPORAL_ARGUMENTS + MODEL_LAM_ARGUMENT,
        example="""        >>> atk = TLAM(model, eps=8/255)
        >>> adv_videos = atk(videos, labels)""",
    )

    uses_router = False
    supports_targeted = True

    def __init__(self, model, eps=8 / 255, alpha=0.5, steps=10, beta=0.9, lam=0.0, **kwargs):
        super().__init__(
            "TLAM", model, eps=eps, alpha=alpha, steps=steps, beta=beta, lam=lam, **kwargs
        )

    def objective(self, clean, adv):
        return self.model_term(clean, adv)


class JTLA(MoEAttack):
    __doc__ = attack_doc(
        "J-TLA: joint temporal Lipschitz attack on the model and its router.",
        objective="[CE(F(x'), y) + lam * Lip(F)] + gamma2 * [L_R + lam * Lip(R)]",
        step="temporal adaptive",
        extra_arguments=TEMPORAL_ARGUMENTS + MODEL_LAM_ARGUMENT + GAMMA2_ARGUMENT,
        example="""        >>> atk = JTLA(model, eps=8/255)
        >>> adv_videos = atk(videos, labels)""",
    )

    supports_targeted = True

    def __init__(
        self, model, eps=8 / 255, alpha=0.5, steps=10, beta=0.9, lam=0.0, gamma2=1.0, **kwargs
    ):
        super().__init__(
            "JTLA", model, eps=eps, alpha=alpha, steps=steps, beta=beta, lam=lam,
            gamma2=gamma2, **kwargs
        )

    def objective(self, clean, adv):
        return self.model_term(clean, adv) + self.gamma2 * self.router_term(clean, adv, guided=False)


class JTLGA(MoEAttack):
    __doc__ = attack_doc(
        "J-TLGA: joint temporal Lipschitz-guided attack on the model and its router, which "
        "combines every term of the family. The router part also pulls routing onto the "
        "weakest expert y_R = argmin R(x).",
        objective="[CE(F(x'), y) + lam * Lip(F)] + gamma2 * [L_R + lam * Lip(R) - gamma1 * "
        "CE(R(x'), y_R)]",
        step="temporal adaptive",
        extra_arguments=TEMPORAL_ARGUMENTS + MODEL_LAM_ARGUMENT + """
        gamma1 (float): weight of the weakest-expert guidance. (Default: 1.0)""" + GAMMA2_ARGUMENT,
        example="""        >>> from tlga_attacks import JTLGA
        >>> atk = JTLGA(model, eps=8/255)
        >>> adv_videos = atk(videos, labels)""",
    )

    supports_targeted = True

    def __init__(
        self,
        model,
        eps=8 / 255,
        alpha=0.5,
        steps=10,
        beta=0.9,
        lam=0.0,
        gamma1=1.0,
        gamma2=1.0,
        **kwargs,
    ):
        super().__init__(
            "JTLGA", model, eps=eps, alpha=alpha, steps=steps, beta=beta, lam=lam,
            gamma1=gamma1, gamma2=gamma2, **kwargs
        )

    def objective(self, clean, adv):
        return self.model_term(clean, adv) + self.gamma2 * self.router_term(clean, adv, guided=True)
