"""Adversarial training defenses of video Mixture-of-Experts: J-TLAT and the TLAT baseline.

Both hold their optimizers and attack settings and train one batch per ``step`` call::

    from tlga_attacks.defense import JTLAT
    trainer = JTLAT(model, lr=1e-3, eps=8 / 255)
    model.train()
    for videos, labels in loader:
        losses = trainer.step(model, videos, labels)

``JTLATTrainer`` runs J-TLAT as an ART ``Trainer`` on a ``PyTorchClassifier`` and numpy data.
``training_step`` adapts both methods to the per-batch step interface of a trainer registry
(``tlga-train --method tlat|jtlat``).
"""

from .jtlat import DEFAULT_GROUP_LAM, JTLAT, training_step
from .tlat import DEFAULT_MODEL_LAM, TLAT

__all__ = ["DEFAULT_GROUP_LAM", "DEFAULT_MODEL_LAM", "JTLAT", "JTLATTrainer", "TLAT", "training_step"]


def __getattr__(name):
    # ART takes seconds to import, so the ART trainer loads on first use only.
    if name == "JTLATTrainer":
        from .art_trainer import JTLATTrainer

        return JTLATTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
