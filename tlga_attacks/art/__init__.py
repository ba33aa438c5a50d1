"""The attack family for the Adversarial Robustness Toolbox (ART), and video versions of
ART's AutoAttack and SquareAttack.

Every attack takes an ART ``PyTorchClassifier`` of videos and works on numpy arrays::

    from art.estimators.classification import PyTorchClassifier
    from tlga_attacks.art import JTLGA

    classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(),
                                   input_shape=(3, 16, 112, 112), nb_classes=101,
                                   clip_values=(0.0, 1.0), preprocessing=(mean, std))
    x_adv = JTLGA(classifier, eps=8 / 255).generate(x, y)

``eps`` is in the units of ``x``, as everywhere in ART.
"""

from .evasion import JTLA, JTLGA, PGDR, TLAE, TLAM, TLAR, TLGAR, MoEEvasionAttack
from .inputs import AttackInputModel, EstimatorPreprocessing, VideoLayout, video_layout
from .video import (
    VideoAsImageModel,
    VideoAutoAttack,
    VideoSquareAttack,
    as_image_classifier,
    image_to_video,
    video_to_image,
)

__all__ = [
    "JTLA",
    "JTLGA",
    "PGDR",
    "TLAE",
    "TLAM",
    "TLAR",
    "TLGAR",
    "AttackInputModel",
    "EstimatorPreprocessing",
    "MoEEvasionAttack",
    "VideoAsImageModel",
    "VideoAutoAttack",
    "VideoLayout",
    "VideoSquareAttack",
    "as_image_classifier",
    "image_to_video",
    "video_layout",
    "video_to_image",
]
