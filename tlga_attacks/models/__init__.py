"""Reference video classifiers: clip-routed and token-routed Mixture-of-Experts and their backbones.

All models take float clips (N, 3, T, H, W) in [0, 1] and return class logits (N, K).
"""

from .backbones import BACKBONE_NAMES, TSMResNet18, Tiny3DCNN, build_backbone
from .flops import count_gflops
from .moe import ClipRouter, DenseVideoMoE, VideoMoE, dispatch_to_experts, load_balancing_loss
from .registry import MODEL_NAMES, build_model
from .transformer import MoEMLP, MoEVideoTransformer

__all__ = [
    "BACKBONE_NAMES",
    "MODEL_NAMES",
    "ClipRouter",
    "DenseVideoMoE",
    "MoEMLP",
    "MoEVideoTransformer",
    "TSMResNet18",
    "Tiny3DCNN",
    "VideoMoE",
    "build_backbone",
    "build_model",
    "count_gflops",
    "dispatch_to_experts",
    "load_balancing_loss",
]
