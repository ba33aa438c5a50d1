"""Measured model cost in GFLOPs per clip, with PyTorch's FlopCounterMode."""

import logging
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


def count_gflops(model: nn.Module, input_shape: Sequence[int], seed: int = 0) -> float:
    """Count the GFLOPs of one forward pass per clip, by running the model.

    The model runs once in eval mode under ``torch.no_grad`` on a clip drawn uniformly from
    [0, 1] (a fixed ``seed``), on the device and in the dtype of its first parameter. Each
    module's training flag is restored afterwards, also when the forward pass raises.

    FLOP convention: ``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as 2
    FLOPs and counts only the operators it has formulas for (convolutions, matrix products,
    attention). Normalization, activations, pooling and softmax count as 0. Because the count
    is measured, a top-k MoE counts only the experts that ran, which for a batch depends on
    the routing of that batch's clips.

    Args:
        model: a video model.
        input_shape: (C, T, H, W) for one clip, or (N, C, T, H, W) for a batch of N clips,
            in which case the result is the mean per clip.
        seed: seed of the random input. Default 0.

    Returns:
        GFLOPs (1e9 FLOPs) per clip.

    Example:
        >>> count_gflops(VideoMoE(num_classes=10), (3, 16, 32, 32))  # doctest: +SKIP
        0.033
    """
    shape = tuple(input_shape)
    if len(shape) not in (4, 5) or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape):
        raise ValueError(
            f"input_shape={input_shape!r} is invalid: pass four positive ints (C, T, H, W) for one clip "
            "or five (N, C, T, H, W) for a batch."
        )
    if len(shape) == 4:
        shape = (1,) + shape

    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(shape, generator=generator).to(device=device, dtype=dtype)

    training_flags = {module: module.training for module in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(video)
    finally:
        for module, training in training_flags.items():
            module.training = training

    total_flops = counter.get_total_flops()
    logger.debug("%s: %d FLOPs for input shape %s", type(model).__name__, total_flops, shape)
    return total_flops / shape[0] / 1e9
