"""The input mapping between an ART ``PyTorchClassifier`` of videos and the attacks.

``AttackInputModel`` is a small ``nn.Module`` that puts the estimator's input mapping in front
of ``estimator.model``, every step differentiable:

1. the axis order: the attack works on (N, C, T, H, W) or (N, T, C, H, W) batches;
2. the range: the attack works in [0, 1], mapped linearly onto ``clip_values``;
3. the estimator's predict-time preprocessing: mean/std standardisation (a per-channel mean
   broadcasts over the channel axis of the 5-D batch) and PyTorch preprocessing defences.

Supported video layouts, chosen with the estimator's ``channels_first`` and ``time_dim``:

===============  ==========  ======================================
channels_first   time_dim    one sample (``estimator.input_shape``)
===============  ==========  ======================================
True             2 (None)    (C, T, H, W)
True             1           (T, C, H, W)
False            1 (None)    (T, H, W, C), as ART's video defences
===============  ==========  ======================================
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from art.estimators.classification import PyTorchClassifier
from art.exceptions import EstimatorError
from art.preprocessing.standardisation_mean_std import (
    StandardisationMeanStd,
    StandardisationMeanStdPyTorch,
)
from torch import nn

__all__ = [
    "MODEL_PATH_PREFIX",
    "NCTHW",
    "NTCHW",
    "NTHWC",
    "AttackInputModel",
    "EstimatorPreprocessing",
    "VideoLayout",
    "broadcast_mean_std",
    "check_estimator",
    "clip_bounds",
    "index_labels",
    "prefixed_paths",
    "project_linf",
    "video_layout",
]

logger = logging.getLogger(__name__)

# Prefix of the user's module paths (routers=, experts=) inside AttackInputModel.
MODEL_PATH_PREFIX = "model."


# -- estimator checks --------------------------------------------------------------------------


def check_estimator(estimator, caller) -> None:
    """Raise ART's ``EstimatorError`` unless ``estimator`` is a ``PyTorchClassifier``.

    ``caller`` is the class or function that needs the estimator. The message names it and
    explains why a PyTorch classifier is needed.
    """
    if isinstance(estimator, PyTorchClassifier):
        return

    error = EstimatorError(caller, [PyTorchClassifier], estimator)
    error.message = (
        f"{caller.__name__} needs an art.estimators.classification.PyTorchClassifier, because it "
        f"differentiates through the torch module in estimator.model; got "
        f"{type(estimator).__name__}. Wrap the PyTorch video model in a PyTorchClassifier."
    )
    raise error


@dataclass(frozen=True)
class VideoLayout:
    """Axis order of the video batches that an ART estimator takes.

    Attributes:
        name: ``"NCTHW"``, ``"NTCHW"`` or ``"NTHWC"``.
        channel_axis: axis of the channels in a batch of that layout.
        attack_time_dim: ``time_dim`` of the batches passed to the torchattacks attack.
            Channels-last batches are moved to (N, C, T, H, W) for the attack.
    """

    name: str
    channel_axis: int
    attack_time_dim: int

    def to_attack(self, videos: torch.Tensor) -> torch.Tensor:
        """Move a batch from this layout to the attack's axis order."""
        if self.name == "NTHWC":
            return videos.permute(0, 4, 1, 2, 3).contiguous()
        return videos

    def from_attack(self, videos: torch.Tensor) -> torch.Tensor:
        """Move a batch from the attack's axis order back to this layout."""
        if self.name == "NTHWC":
            return videos.permute(0, 2, 3, 4, 1).contiguous()
        return videos


NCTHW = VideoLayout("NCTHW", channel_axis=1, attack_time_dim=2)
NTCHW = VideoLayout("NTCHW", channel_axis=2, attack_time_dim=1)
NTHWC = VideoLayout("NTHWC", channel_axis=4, attack_time_dim=2)


def video_layout(estimator, time_dim: Optional[int] = None) -> VideoLayout:
    """Return the layout of the estimator's videos from ``channels_first`` and ``time_dim``.

    Also checks that ``estimator.input_shape`` describes one video, (C, T, H, W) or another
    order of 4 axes.

    Raises:
        ValueError: for an unsupported ``time_dim`` or an input_shape of another rank.
    """
    if time_dim is not None and (isinstance(time_dim, bool) or time_dim not in (1, 2)):
        raise ValueError(
            f"time_dim={time_dim!r} is invalid: pass None (from channels_first), 2 for "
            "(N, C, T, H, W) input or 1 for (N, T, C, H, W) or (N, T, H, W, C) input"
        )

    input_shape = tuple(estimator.input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"estimator.input_shape={input_shape} is not the shape of one video: create the "
            "PyTorchClassifier with input_shape=(C, T, H, W) (or (T, C, H, W), (T, H, W, C))"
        )

    if estimator.channels_first:
        return NTCHW if time_dim == 1 else NCTHW
    if time_dim == 2:
        raise ValueError(
            "time_dim=2 is invalid for an estimator with channels_first=False: channels-last "
            "videos must have shape (N, T, H, W, C), which is time_dim=1 (the default). For "
            "(N, C, T, H, W) input create the PyTorchClassifier with channels_first=True"
        )
    return NTHWC


def clip_bounds(estimator, required: bool = True) -> Optional[Tuple[float, float]]:
    """Return ``estimator.clip_values`` as two floats ``(min, max)``.

    Per-feature bounds are accepted only when all features share the same bounds.

    Raises:
        ValueError: when clip_values is None (and ``required``), per-feature or empty.
    """
    clip_values = estimator.clip_values
    if clip_values is None:
        if not required:
            return None
        raise ValueError(
            "estimator.clip_values is None, but the attacks keep videos within bounds: create "
            "the PyTorchClassifier with clip_values=(0.0, 1.0) or the range of your data"
        )

    low = np.asarray(clip_values[0], dtype=np.float64)
    high = np.asarray(clip_values[1], dtype=np.float64)
    if low.size > 1 and low.min() != low.max() or high.size > 1 and high.min() != high.max():
        raise ValueError(
            "estimator.clip_values contains per-feature bounds, which the video attacks do not "
            "support; pass one (min, max) pair for all features"
        )

    low, high = float(low.flat[0]), float(high.flat[0])
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(
            f"estimator.clip_values=({low}, {high}) is invalid: pass finite bounds with min < max"
        )
    return low, high


# -- preprocessing -----------------------------------------------------------------------------


class _Standardise:
    """``(x - mean) / std`` with float32 constants, as ART's ``StandardisationMeanStdPyTorch``."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class _TorchDefence:
    """An ART ``PreprocessorPyTorch`` applied with gradients, as ART's ``loss_gradient`` does."""

    def __init__(self, defence: PreprocessorPyTorch):
        self.defence = defence

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.defence.forward(x)[0]


def _art_mean_axis(length: int, batch_shape: Tuple[int, ...]) -> int:
    # ART 1.20.1 (art/preprocessing/standardisation_mean_std/utils.py) puts a vector mean on
    # the last axis when the lengths match, else on axis 1 when that one matches, else axis 0.
    if length == batch_shape[-1]:
        return len(batch_shape) - 1
    return 1 if batch_shape[1] == length else 0


def broadcast_mean_std(
    mean, std, input_shape: Tuple[int, ...], layout: VideoLayout
) -> Tuple[np.ndarray, np.ndarray]:
    """Shape mean and std so that they broadcast against a (N, *input_shape) batch.

    A vector of one value per channel goes on the channel axis of the layout. Since ART's own
    ``predict`` places a vector by its length, a vector that ART would place on another axis
    is rejected, so that the attacked function always equals ``estimator.predict``.

    Raises:
        ValueError: for shapes that do not broadcast, an ambiguous per-channel vector or a
            std that is not positive.
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    batch_shape = (1,) + tuple(input_shape)
    if mean.shape != std.shape:
        raise ValueError(
            f"preprocessing mean has shape {mean.shape} and std has shape {std.shape}; pass "
            "two arrays of the same shape"
        )
    if not np.all(std > 0):
        raise ValueError(f"preprocessing std must be positive, got {std.tolist()}")

    if mean.ndim == 1 and mean.size > 1:
        channels = batch_shape[layout.channel_axis]
        art_axis = _art_mean_axis(mean.size, batch_shape)
        if mean.size != channels or art_axis != layout.channel_axis:
            explicit = [1] * (len(batch_shape) - layout.channel_axis)
            explicit[0] = mean.size
            raise ValueError(
                f"preprocessing mean of shape {mean.shape} is ambiguous for {layout.name} "
                f"videos of shape {tuple(input_shape)}: ART's PyTorchClassifier applies it "
                f"along axis {art_axis} of the batch, but the channel axis is "
                f"{layout.channel_axis} with {channels} channels. Pass mean and std with shape "
                f"{tuple(explicit)} so that they broadcast over the channel axis"
            )
        shape = [1] * len(batch_shape)
        shape[layout.channel_axis] = channels
        return mean.reshape(shape), std.reshape(shape)

    try:
        broadcast = np.broadcast_shapes(mean.shape, batch_shape)
    except ValueError:
        broadcast = None
    if broadcast != batch_shape:
        raise ValueError(
            f"preprocessing mean of shape {mean.shape} does not broadcast against videos of "
            f"shape (N, {', '.join(map(str, input_shape))}); pass a scalar, one value per "
            "channel or an array that broadcasts against one video"
        )
    return mean, std


class EstimatorPreprocessing:
    """The estimator's predict-time preprocessing as differentiable torch operations.

    Applies, in ART's order, the PyTorch preprocessing defences with ``apply_predict`` and
    then the mean/std standardisation; identity standardisation is skipped.

    Args:
        estimator: an ART ``PyTorchClassifier`` of videos.
        layout: the layout of its videos, see ``video_layout``.

    Raises:
        ValueError: for a preprocessing defence that is not a ``PreprocessorPyTorch`` (no
            gradient can pass through it) and for mean/std that do not fit the videos.

    Example::

        >>> preprocess = EstimatorPreprocessing(classifier, video_layout(classifier))
        >>> normalized = preprocess(torch.rand(2, 3, 8, 16, 16))
    """

    def __init__(self, estimator, layout: VideoLayout):
        self.operations: List[Callable[[torch.Tensor], torch.Tensor]] = []
        input_shape = tuple(estimator.input_shape)

        for operation in estimator.preprocessing_operations:
            if not operation.apply_predict:
                continue

            if isinstance(operation, (StandardisationMeanStd, StandardisationMeanStdPyTorch)):
                mean, std = broadcast_mean_std(operation.mean, operation.std, input_shape, layout)
                if np.all(mean == 0) and np.all(std == 1):
                    continue
                self.operations.append(_Standardise(mean, std))
            elif isinstance(operation, PreprocessorPyTorch):
                samples = getattr(operation, "nb_samples", 1)
                if samples != 1:
                    raise ValueError(
                        f"the estimator's preprocessing {type(operation).__name__} has "
                        f"nb_samples={samples}, which changes the batch size, so the model's "
                        "logits no longer match the videos; use nb_samples=1"
                    )
                self.operations.append(_TorchDefence(operation))
            else:
                raise ValueError(
                    f"the estimator's preprocessing defence {type(operation).__name__} runs in "
                    "numpy, so no gradient can pass through it; use its PyTorch version (for "
                    "example SpatialSmoothingPyTorch) or remove it from preprocessing_defences"
                )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for operation in self.operations:
            x = operation(x)
        return x


class AttackInputModel(nn.Module):
    """``estimator.model`` behind the estimator's input mapping, for the torchattacks attacks.

    Takes videos in [0, 1] in the attack's axis order: (N, C, T, H, W), or (N, T, C, H, W) for
    a time-first estimator. The forward pass moves them to the estimator's axis order, maps
    [0, 1] onto ``(clip_min, clip_max)`` and applies the estimator's preprocessing. It returns
    the model's output unchanged. The user's model is the submodule ``model``, so
    ``MoEInspector`` finds its MoE routers under the path prefix ``"model."``.

    Args:
        model: ``estimator.model``.
        layout: the estimator's video layout.
        preprocessing: the estimator's preprocessing.
        clip_min, clip_max: the estimator's clip values. (Default: 0.0, 1.0)

    Example::

        >>> layout = video_layout(classifier)
        >>> wrapped = AttackInputModel(classifier.model, layout,
        ...                            EstimatorPreprocessing(classifier, layout), 0.0, 255.0)
        >>> logits = wrapped(torch.rand(2, 3, 8, 16, 16))
    """

    def __init__(
        self,
        model: nn.Module,
        layout: VideoLayout,
        preprocessing: EstimatorPreprocessing,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
    ):
        super().__init__()
        self.model = model
        self.layout = layout
        self.preprocessing = preprocessing
        self.clip_min = clip_min
        self.clip_max = clip_max

    def forward(self, videos: torch.Tensor):
        x = self.layout.from_attack(videos)

        if (self.clip_min, self.clip_max) != (0.0, 1.0):
            x = self.clip_min + x * (self.clip_max - self.clip_min)

        return self.model(self.preprocessing(x))


# -- labels and projection ---------------------------------------------------------------------


def index_labels(y, num_samples: int, nb_classes: int, name: str = "y") -> np.ndarray:
    """Convert ART labels to int64 class indices of shape (N,).

    Accepts indices of shape (N,) or (N, 1) and one-hot (or probability) rows of shape
    (N, nb_classes). Float indices are accepted when they are whole numbers.

    Raises:
        ValueError: for another shape, a wrong number of rows or values out of range.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == nb_classes and nb_classes > 1:
        labels = y.argmax(axis=1)
    elif y.ndim == 2 and y.shape[1] == 1:
        labels = y[:, 0]
    elif y.ndim == 1:
        labels = y
    else:
        raise ValueError(
            f"{name} has shape {y.shape}; pass class indices of shape ({num_samples},) or "
            f"one-hot labels of shape ({num_samples}, {nb_classes})"
        )

    if labels.shape[0] != num_samples:
        raise ValueError(
            f"{name} has {labels.shape[0]} labels for {num_samples} samples; pass one per sample"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"{name} must hold whole class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)

    if labels.size and (labels.min() < 0 or labels.max() >= nb_classes):
        raise ValueError(
            f"{name} must be in [0, {nb_classes - 1}] for a classifier with {nb_classes} "
            f"classes, got values from {labels.min()} to {labels.max()}"
        )
    return labels


def project_linf(x_adv: np.ndarray, x: np.ndarray, eps: float, low: float, high: float) -> np.ndarray:
    """Project float32 ``x_adv`` onto the L-infinity eps-ball around ``x`` and onto [low, high].

    The bound is exact in float32: ``abs(result - x) <= eps`` even where ``x + eps`` rounds
    up.
    """
    bound = np.float32(eps)
    if float(bound) > eps:
        bound = np.nextafter(bound, np.float32(0))

    upper = x + bound
    upper = np.where(upper - x > bound, np.nextafter(upper, x), upper)
    lower = x - bound
    lower = np.where(x - lower > bound, np.nextafter(lower, x), lower)

    projected = np.minimum(np.maximum(x_adv, lower), upper)
    return np.clip(projected, np.float32(low), np.float32(high)).astype(np.float32, copy=False)


def prefixed_paths(paths):
    """Return the user's module paths (a path, a list of paths or nested lists) as paths
    inside ``AttackInputModel``."""
    if paths is None:
        return None
    if isinstance(paths, str):
        return MODEL_PATH_PREFIX + paths
    return [prefixed_paths(path) for path in paths]
