"""The TLGA attack family, as torchattacks attacks."""

from .base import AttackPass, MoEAttack
from .expert import TLAE
from .model import JTLA, JTLGA, TLAM
from .router import PGDR, TLAR, TLGAR

__all__ = ["AttackPass", "JTLA", "JTLGA", "MoEAttack", "PGDR", "TLAE", "TLAM", "TLAR", "TLGAR"]
