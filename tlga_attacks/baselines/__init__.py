"""Baselines that run on video models, as torchattacks attacks.

* ``VideoFGSM``, ``VideoPGD``: torchattacks' FGSM and PGD with 5-D normalization.
* ``VideoAPGD``, ``VideoAPGDT``, ``VideoFAB``, ``VideoSquare``, ``VideoAutoAttack``:
  torchattacks' image-only attacks run through ``VideoAsImage``, a view of the video model
  as an image model of shape (N, C*T, H, W).
* ``TT``: temporal-translation gradient smoothing, a transfer attack for video models.
* ``BASELINES`` and ``make_baseline``: the benchmark's names for them.

Example::

    >>> from tlga_attacks.baselines import VideoAutoAttack
    >>> atk = VideoAutoAttack(model, eps=8/255)
    >>> adv_videos = atk(videos, labels)
"""

from .adapter import (
    PassCounter,
    VideoAdapted,
    VideoAPGD,
    VideoAPGDT,
    VideoAsImage,
    VideoAttack,
    VideoAttackMixin,
    VideoAutoAttack,
    VideoFAB,
    VideoSquare,
    image_to_video,
    square_p_init,
    video_to_image,
)
from .standard import BASELINES, VideoFGSM, VideoPGD, make_baseline
from .tt import TT, temporal_kernel

__all__ = [
    "BASELINES",
    "PassCounter",
    "TT",
    "VideoAPGD",
    "VideoAPGDT",
    "VideoAdapted",
    "VideoAsImage",
    "VideoAttack",
    "VideoAttackMixin",
    "VideoAutoAttack",
    "VideoFAB",
    "VideoFGSM",
    "VideoPGD",
    "VideoSquare",
    "image_to_video",
    "make_baseline",
    "square_p_init",
    "temporal_kernel",
    "video_to_image",
]
