"""tlga-attacks: attacks on, and defenses of, video Mixture-of-Experts classifiers.

The attack family (PGD-R, TLA-R, TLGA-R, TLA-E, TLA-M, J-TLA, J-TLGA) follows "Exposing and
Defending the Achilles' Heel of Video Mixture-of-Experts" (Wang et al., ICLR 2026). Each
attack is a torchattacks attack::

    from tlga_attacks import JTLGA
    atk = JTLGA(model, eps=8/255)
    adv_videos = atk(videos, labels)
"""

from .attacks import JTLA, JTLGA, PGDR, TLAE, TLAM, TLAR, TLGAR, MoEAttack
from .hooks import MoEHookError, MoEInspector, RouterNotFoundError, find_moe_layers

__version__ = "0.1.0"

__all__ = [
    "JTLA",
    "JTLGA",
    "MoEAttack",
    "MoEHookError",
    "MoEInspector",
    "PGDR",
    "RouterNotFoundError",
    "TLAE",
    "TLAM",
    "TLAR",
    "TLGAR",
    "find_moe_layers",
]
