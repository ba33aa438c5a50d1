"""Build a model from its name, for command-line tools and saved model configs."""

import logging

from torch import nn

from .backbones import BACKBONE_NAMES, build_backbone
from .moe import DenseVideoMoE, VideoMoE
from .transformer import MoEVideoTransformer

logger = logging.getLogger(__name__)

_MOE_BUILDERS = {
    "moe": VideoMoE,
    "dense": DenseVideoMoE,
    "transformer": MoEVideoTransformer,
}

MODEL_NAMES = tuple(_MOE_BUILDERS) + BACKBONE_NAMES


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name with randomly initialized weights.

    Args:
        name: ``"moe"`` (:class:`VideoMoE`), ``"dense"`` (:class:`DenseVideoMoE`),
            ``"transformer"`` (:class:`MoEVideoTransformer`), or a backbone name from
            ``BACKBONE_NAMES`` for a single model without routing (``build_backbone``).
        num_classes: number of classes K, at least 2.
        **kwargs: further constructor arguments, for example ``expert="r3d_18"`` and
            ``top_k=2`` for ``"moe"``.

    Returns:
        The model. ``build_model(**model.config)`` rebuilds the architecture of a model
        built here from ``"moe"``, ``"dense"`` or ``"transformer"``.

    Raises:
        ValueError: unknown name, or an invalid argument of the model's constructor.

    Example:
        >>> model = build_model("moe", num_classes=10, expert="tiny3d", top_k=2)
        >>> model.top_k
        2
    """
    if name in _MOE_BUILDERS:
        return _MOE_BUILDERS[name](num_classes, **kwargs)
    if name in BACKBONE_NAMES:
        return build_backbone(name, num_classes, **kwargs)
    raise ValueError(f"name={name!r} is not a known model: pass one of {', '.join(MODEL_NAMES)}.")
