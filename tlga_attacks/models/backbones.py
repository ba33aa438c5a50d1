"""Expert backbones: video classifiers that map (N, 3, T, H, W) clips to (N, K) logits.

=================  ==========================================================================
name               architecture
=================  ==========================================================================
``r3d_18``         torchvision 3-D ResNet-18 (Tran et al., CVPR 2018)
``r2plus1d_18``    torchvision (2+1)-D ResNet-18, spatial and temporal convolutions split
``mc3_18``         torchvision mixed-convolution ResNet-18, 3-D in the stem only
``tsm_resnet18``   2-D ResNet-18 per frame with a temporal shift in every residual block
                   (Lin et al., "TSM: Temporal Shift Module", ICCV 2019), logits averaged
                   over time
``tiny3d``         three conv3d-BN-ReLU blocks, global max pooling and a linear layer,
                   small enough to train on a CPU
=================  ==========================================================================

Every backbone takes the input as given. The clips of this library are floats in [0, 1],
but weights pretrained on Kinetics-400 or ImageNet expect the input normalized with that data
set's mean and standard deviation, which an attack's normalization setting can apply.
"""

import logging
import math
import pickle
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.models import resnet as torchvision_resnet
from torchvision.models import video as torchvision_video

logger = logging.getLogger(__name__)

BACKBONE_NAMES = ("r3d_18", "r2plus1d_18", "mc3_18", "tsm_resnet18", "tiny3d")

_TORCHVISION_VIDEO_BUILDERS = {
    "r3d_18": torchvision_video.r3d_18,
    "r2plus1d_18": torchvision_video.r2plus1d_18,
    "mc3_18": torchvision_video.mc3_18,
}

# Every backbone names its final linear layer ``fc``, so one rule replaces the classifier.
_HEAD_KEYS = ("fc.weight", "fc.bias")

PathLike = Union[str, Path]


class Conv3dBlock(nn.Sequential):
    """Conv3d (kernel 3, padding 1, no bias), BatchNorm3d and ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the convolution, an int or a (T, H, W) triple. Default 1.

    Shape: (N, in_channels, T, H, W) -> (N, out_channels, T', H', W') with
    T' = ceil(T / stride_T) and likewise for H and W.
    """

    def __init__(self, in_channels: int, out_channels: int, stride=1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU()


class Tiny3DCNN(nn.Module):
    """Small 3-D CNN classifier that trains in minutes on a CPU at 16x32x32 input.

    Three :class:`Conv3dBlock` stages with widths 16, 32 and 64 (times ``width``) and
    strides (1, 2, 2), 2 and 2, then global max pooling and a linear layer ``fc``. Max
    pooling keeps the response of a small moving object: with global average pooling the
    tiny3d VideoMoE stayed at chance level on SyntheticActions (see benchmarks/RESULTS.md).
    One 16x32x32 clip costs about 0.03 GFLOPs (see ``count_gflops``).

    Args:
        num_classes: number of classes K.
        width: multiplier on the channel widths. Default 1.0.

    Shape: (N, 3, T, H, W) in [0, 1] -> logits (N, K).

    Example:
        >>> model = Tiny3DCNN(num_classes=10)
        >>> model(torch.rand(2, 3, 16, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, width: float = 1.0):
        super().__init__()
        channels = [max(1, round(base * width)) for base in (16, 32, 64)]

        self.block1 = Conv3dBlock(3, channels[0], stride=(1, 2, 2))
        self.block2 = Conv3dBlock(channels[0], channels[1], stride=2)
        self.block3 = Conv3dBlock(channels[1], channels[2], stride=2)
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.fc = nn.Linear(channels[2], num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        features = self.block3(self.block2(self.block1(video)))
        return self.fc(self.pool(features).flatten(1))


class TemporalShift(nn.Module):
    """Shift 1/``shift_divisor`` of the channels one frame back in time and as many forward.

    Frame t receives the first channel group from frame t + 1 and the second group from
    frame t - 1. Frames shifted in from outside the clip are zeros. The remaining channels
    stay in place. The module has no parameters.

    Args:
        shift_divisor: the fraction of channels shifted each way is 1/shift_divisor.
            Default 8.

    Attributes:
        num_frames: frames per clip T. The owning :class:`TSMResNet18` sets it before every
            forward pass, because the 2-D layers see clips folded into the batch.

    Shape: (N * T, C, H, W) -> (N * T, C, H, W).
    """

    def __init__(self, shift_divisor: int = 8):
        super().__init__()
        self.shift_divisor = shift_divisor
        self.num_frames = 1

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        total, channels, height, width = frames.shape
        clips = frames.view(total // self.num_frames, self.num_frames, channels, height, width)
        fold = channels // self.shift_divisor
        zero_frame = clips.new_zeros(clips.shape[0], 1, fold, height, width)

        from_next_frame = torch.cat([clips[:, 1:, :fold], zero_frame], dim=1)
        from_previous_frame = torch.cat([zero_frame, clips[:, :-1, fold : 2 * fold]], dim=1)
        shifted = torch.cat([from_next_frame, from_previous_frame, clips[:, :, 2 * fold :]], dim=2)

        return shifted.view(total, channels, height, width)


class TemporalShiftBlock(torchvision_resnet.BasicBlock):
    """torchvision's ResNet ``BasicBlock`` with a :class:`TemporalShift` before ``conv1``.

    The shift acts on the residual branch only, and the identity path carries the unshifted
    input. The block has the same parameters and state-dict keys as ``BasicBlock``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.temporal_shift = TemporalShift()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)

        out = self.relu(self.bn1(self.conv1(self.temporal_shift(x))))
        out = self.bn2(self.conv2(out))

        return self.relu(out + identity)


class TSMResNet18(torchvision_resnet.ResNet):
    """TSM-style ResNet-18: a 2-D ResNet-18 per frame with temporal shifts, averaged over time.

    Every residual block shifts 1/8 of its input channels one frame back and 1/8 one frame
    forward before ``conv1``. The per-frame logits are averaged over the T frames. The
    state-dict keys equal those of torchvision's ``resnet18``, so ImageNet ResNet-18
    weights load unchanged.

    Args:
        num_classes: number of classes K.

    Shape: (N, 3, T, H, W) -> logits (N, K).

    Example:
        >>> model = TSMResNet18(num_classes=10)
        >>> model(torch.rand(1, 3, 4, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int):
        super().__init__(TemporalShiftBlock, [2, 2, 2, 2], num_classes=num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, num_frames, height, width = video.shape
        for module in self.modules():
            if isinstance(module, TemporalShift):
                module.num_frames = num_frames

        frames = video.transpose(1, 2).reshape(batch * num_frames, channels, height, width)
        frame_logits = self._forward_impl(frames)

        return frame_logits.view(batch, num_frames, -1).mean(dim=1)


def build_backbone(
    name: str,
    num_classes: int,
    weights: Optional[PathLike] = None,
    width: float = 1.0,
) -> nn.Module:
    """Build an expert backbone and optionally load its weights from a local file.

    Nothing is downloaded. The torchvision models are built with ``weights=None``.

    Args:
        name: one of ``BACKBONE_NAMES``: ``"r3d_18"``, ``"r2plus1d_18"``, ``"mc3_18"``,
            ``"tsm_resnet18"``, ``"tiny3d"``.
        num_classes: number of classes K, at least 2.
        weights: path of a state dict saved with ``torch.save`` (loaded with
            ``weights_only=True``) or, for a ``.safetensors`` suffix, with safetensors.
            The keys must be those of the backbone, which for ``tsm_resnet18`` are those of
            torchvision's 2-D ``resnet18``. A final ``fc`` layer of another size (for
            example the 400 Kinetics classes) is dropped, and the new K-class ``fc`` keeps
            its random initialization. Default None: random initialization.
        width: channel width multiplier, for ``tiny3d`` only. Default 1.0.

    Returns:
        A module mapping (N, 3, T, H, W) to logits (N, K).

    Raises:
        ValueError: unknown name, num_classes < 2, width <= 0, width != 1 for a backbone
            other than tiny3d, or a weights file whose keys or shapes do not fit.
        FileNotFoundError: ``weights`` is not an existing file.

    Example:
        >>> expert = build_backbone("tiny3d", num_classes=10)
        >>> expert(torch.rand(2, 3, 16, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_backbone_name("name", name)
    check_num_classes(num_classes)
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width={width!r} is invalid: pass a positive finite number such as 0.5, 1.0 or 2.0.")
    if name != "tiny3d" and width != 1.0:
        raise ValueError(
            f"width={width!r} is only supported for the 'tiny3d' backbone, not {name!r}: "
            "remove the width argument or pass width=1.0."
        )

    if name == "tiny3d":
        model = Tiny3DCNN(num_classes, width=width)
    elif name == "tsm_resnet18":
        model = TSMResNet18(num_classes)
    else:
        model = _TORCHVISION_VIDEO_BUILDERS[name](weights=None, num_classes=num_classes)

    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(model: nn.Module, weights: PathLike) -> None:
    """Load a state-dict file into ``model`` in place, replacing a final ``fc`` of another size.

    When the file's ``fc.weight`` or ``fc.bias`` shape differs from the model's, those two
    entries are dropped and the model keeps its own ``fc``. Every other key of the model must
    be in the file, and the file must contain no other keys.

    Args:
        model: a backbone from :func:`build_backbone`.
        weights: path of a ``torch.save`` state dict, or of a ``.safetensors`` file.

    Raises:
        FileNotFoundError: ``weights`` is not an existing file.
        ValueError: the file is not a state dict, or its keys or shapes do not fit the model.
    """
    state_dict = read_state_dict(weights)
    own_state = model.state_dict()

    dropped_keys = [
        key for key in _HEAD_KEYS if key in state_dict and key in own_state and state_dict[key].shape != own_state[key].shape
    ]
    if dropped_keys:
        logger.info(
            "weights=%s: the file's fc has shape %s but the model's has %s, so fc keeps its random initialization",
            weights,
            tuple(state_dict["fc.weight"].shape) if "fc.weight" in state_dict else None,
            tuple(own_state["fc.weight"].shape),
        )
        state_dict = {key: value for key, value in state_dict.items() if key not in dropped_keys}

    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise ValueError(f"weights={str(weights)!r} does not fit the {type(model).__name__} model: {error}") from error

    missing_keys = [key for key in result.missing_keys if key not in dropped_keys]
    if missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights={str(weights)!r} does not fit the {type(model).__name__} model: "
            f"missing keys {missing_keys[:5]} ({len(missing_keys)} in all), "
            f"unexpected keys {result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all). "
            "Pass a state dict of the same backbone (model.state_dict(), not a whole training checkpoint)."
        )


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file, onto the CPU.

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ValueError: the file does not contain a mapping from names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(path)!r}: file not found. Pass the path of a local state dict saved with "
            "torch.save or safetensors. Nothing is downloaded."
        )

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"weights={str(path)!r} could not be read as a torch.save state dict: {error}. "
            "Save the weights with torch.save(model.state_dict(), path) or safetensors."
        ) from error

    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(
            f"weights={str(path)!r} does not contain a state dict (a mapping from names to tensors) "
            f"but a {type(state_dict).__name__}. Save model.state_dict() rather than a whole checkpoint."
        )
    return state_dict


def check_backbone_name(argument: str, name: str) -> None:
    """Raise ValueError naming ``argument`` unless ``name`` is one of ``BACKBONE_NAMES``."""
    if name not in BACKBONE_NAMES:
        raise ValueError(f"{argument}={name!r} is not a known backbone: pass one of {', '.join(BACKBONE_NAMES)}.")


def check_num_classes(num_classes: int) -> None:
    """Raise ValueError unless ``num_classes`` is an int of at least 2."""
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is invalid: pass an int of at least 2.")


def check_int_range(argument: str, value: int, minimum: int, maximum: Optional[int] = None, hint: str = "") -> None:
    """Raise ValueError naming ``argument`` unless ``value`` is an int in [minimum, maximum]."""
    too_large = maximum is not None and _is_int(value) and value > maximum
    if not _is_int(value) or value < minimum or too_large:
        allowed = f"an int >= {minimum}" if maximum is None else f"an int from {minimum} to {maximum}"
        raise ValueError(f"{argument}={value!r} is invalid: pass {allowed}{hint}.")


def to_int_triple(argument: str, value: Union[int, Sequence[int]]) -> tuple:
    """Return ``value`` as a (T, H, W) tuple of positive ints, from an int or a 3-sequence."""
    try:
        triple = (value, value, value) if _is_int(value) else tuple(value)
    except TypeError:
        triple = ()
    if len(triple) != 3 or not all(_is_int(item) and item >= 1 for item in triple):
        raise ValueError(f"{argument}={value!r} is invalid: pass a positive int or three positive ints (T, H, W).")
    return triple


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
