"""Video file reading and writing on PyAV (FFmpeg).

A clip is a float32 tensor in [0, 1] of shape (C, T, H, W) with C = 3 (RGB).

Reading decodes every frame of the first video stream, resizes it, and then picks ``num_frames``
frames by presentation timestamp (``pts * time_base``), so variable frame rate files are read
correctly. Writing is lossless by default (FFV1 with the ``bgr0`` pixel format, which stores
RGB exactly). A lossy codec rounds away perturbations of a few gray levels, so it warns.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import tempfile
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, Sequence[int]]

SHORT_CLIP_RULES = ("loop", "pad")

# Encoder name, pixel format and whether the round trip keeps RGB uint8 values exactly.
# FFV1 accepts 8-bit RGB only as bgr0 (its planar gbrp needs 9 bits or more).
_CODECS = {
    "ffv1": ("ffv1", "bgr0", True),
    "h264": ("libx264", "yuv420p", False),
    "libx264": ("libx264", "yuv420p", False),
    "mpeg4": ("mpeg4", "yuv420p", False),
}

# File suffix -> (FFmpeg muxer, codecs the muxer accepts, default codec or None).
# The default is always lossless, so a suffix without a lossless codec has no default.
_CONTAINERS = {
    ".mkv": ("matroska", ("ffv1", "h264", "libx264", "mpeg4"), "ffv1"),
    ".avi": ("avi", ("ffv1", "h264", "libx264", "mpeg4"), "ffv1"),
    ".mp4": ("mp4", ("h264", "libx264", "mpeg4"), None),
    ".mov": ("mov", ("h264", "libx264", "mpeg4"), None),
}


class VideoDecodeError(ValueError):
    """A file exists but contains no decodable video (not a video, empty, or damaged)."""


class TruncatedVideoWarning(UserWarning):
    """A video ended before its declared end, so only the frames before the damage were used."""


@dataclass(frozen=True)
class VideoInfo:
    """Header facts of a video file, read without decoding frames.

    ``num_frames`` is 0 and ``duration`` is None where the container does not store them
    (Matroska stores no frame count, for example). ``fps`` is the stream's average rate.
    """

    path: Path
    width: int
    height: int
    num_frames: int
    duration: Optional[float]
    fps: Optional[float]
    codec: str


def check_size(size: Size, name: str = "size") -> Tuple[int, int]:
    """Validate a frame size and return it as ``(height, width)``.

    Args:
        size: an int for a square frame, or a pair ``(height, width)`` of positive ints.
        name: the parameter name used in the error message.

    Example:
        >>> check_size(112)
        (112, 112)
    """
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif (
        isinstance(size, Sequence)
        and not isinstance(size, str)
        and len(size) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(
            f"{name}={size!r} is invalid: pass an int for a square frame or a pair (height, width) "
            "of ints, for example 112 or (128, 171)."
        )

    if min(pair) < 1:
        raise ValueError(f"{name}={size!r} is invalid: height and width must be at least 1.")
    return pair


def _check_num_frames(num_frames: int) -> int:
    if not isinstance(num_frames, numbers.Integral) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} is invalid: pass an int of at least 1, for example 16.")
    return int(num_frames)


def _check_input_file(path: PathLike) -> Path:
    """Return ``path`` as a Path, or raise a clear error if it cannot hold a video."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Video file not found: {str(path)!r}. Check the path and the working directory.")
    if not path.is_file():
        raise VideoDecodeError(f"{str(path)!r} is not a regular file, so it cannot be read as a video.")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"Video file {str(path)!r} is empty (0 bytes).")
    return path


def _local_url(path: Path) -> str:
    # The "file:" prefix makes FFmpeg treat the name as a local file, never as a URL or a
    # special protocol such as "concat:" that a file name might happen to start with.
    return "file:" + str(path.resolve())


@contextlib.contextmanager
def _open_input(path: PathLike) -> Iterator[Tuple[av.container.InputContainer, av.video.stream.VideoStream, Path]]:
    """Open ``path`` for reading and yield the container, its first video stream and the Path.

    The container is closed when the block exits, also on errors.
    """
    path = _check_input_file(path)
    try:
        container = av.open(_local_url(path), mode="r")
    except av.FFmpegError as error:
        raise VideoDecodeError(f"Cannot open {str(path)!r} as a video: {error}") from error

    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{str(path)!r} contains no video stream.")
        yield container, container.streams.video[0], path


def probe_video(path: PathLike) -> VideoInfo:
    """Read the header of a video file without decoding any frame.

    This is cheap (about a millisecond for a short clip) and catches missing, empty and
    non-video files, but not damage later in the file.

    Args:
        path: the video file.

    Returns:
        A :class:`VideoInfo`.

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file is empty, is not a video, or has no video stream.

    Example:
        >>> info = probe_video("clip.mkv")
        >>> info.width, info.height
    """
    with _open_input(path) as (container, stream, path):
        duration = _declared_end(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path=path,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            num_frames=int(stream.frames or 0),
            duration=duration,
            fps=float(rate) if rate else None,
            codec=stream.codec_context.name,
        )


def _declared_end(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Optional[float]:
    """Return the end time in seconds that the header declares for ``stream``, or None."""
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base)

    # The container duration covers all streams, so it only describes the video stream
    # when that is the only stream (an audio track may run longer than the video).
    if container.duration is not None and len(container.streams) == 1:
        start = container.start_time or 0
        return (start + container.duration) / av.time_base
    return None


def _frame_to_rgb(frame: av.VideoFrame, size: Optional[Tuple[int, int]]) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")

    # Area interpolation averages the source pixels under each output pixel, which avoids
    # aliasing when a large frame is shrunk to a small model input. Equal sizes copy exactly.
    height, width = size
    resized = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    return resized.to_ndarray()


def decode_video(path: PathLike, size: Optional[Size] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode every frame of the first video stream of a file.

    Frames are returned in presentation order with their timestamps ``pts * time_base``.
    A frame without a pts gets the previous timestamp plus the nominal frame interval.
    If decoding fails after some frames, or the file ends before the end time its header
    declares, the frames decoded before the damage are returned with a
    :class:`TruncatedVideoWarning`.

    Args:
        path: the video file.
        size: None (default) keeps the stored size. An int resizes to a square frame and a pair
            ``(height, width)`` to that size, without keeping the aspect ratio.

    Returns:
        ``(frames, times)``: uint8 tensor of shape (T, H, W, 3) in RGB order, and float64 tensor
        of shape (T,) with each frame's timestamp in seconds.

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file is empty, is not a video, or no frame could be decoded.

    Example:
        >>> frames, times = decode_video("clip.mp4", size=(64, 96))
        >>> frames.shape  # (T, 64, 96, 3)
    """
    decoded = _decode(path, None if size is None else check_size(size))
    if decoded.damage is not None:
        warnings.warn(decoded.damage, TruncatedVideoWarning, stacklevel=2)
    return decoded.frames, decoded.times


@dataclass
class _Decoded:
    frames: torch.Tensor  # uint8, (T, H, W, 3)
    times: torch.Tensor  # float64, (T,), sorted
    end: float  # time at which the last frame stops being displayed
    damage: Optional[str]  # warning message for a damaged or truncated file


def _decode(path: PathLike, size: Optional[Tuple[int, int]]) -> _Decoded:
    frames = []
    times = []
    last_duration = None
    error = None

    with _open_input(path) as (container, stream, path):
        declared_end = _declared_end(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        nominal_interval = float(1 / rate) if rate else None

        try:
            for frame in container.decode(stream):
                times.append(_frame_time(frame, times, nominal_interval))
                frames.append(_frame_to_rgb(frame, size))
                last_duration = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
        except av.FFmpegError as decode_error:
            error = decode_error

    if not frames:
        reason = f": {error}" if error is not None else ""
        raise VideoDecodeError(f"No decodable video frame in {str(path)!r}{reason}")

    order = np.argsort(np.asarray(times), kind="stable")
    times = torch.as_tensor(np.asarray(times)[order], dtype=torch.float64)
    frames = torch.from_numpy(np.stack([frames[i] for i in order]))
    end = float(times[-1]) + (last_duration or _typical_interval(times, nominal_interval))

    damage = None
    if error is not None:
        damage = (
            f"Decoding {str(path)!r} failed after {len(frames)} frames ({error}); "
            f"using the {len(frames)} frames decoded before the damage."
        )
    elif declared_end is not None and declared_end - end > _truncation_tolerance(times, nominal_interval):
        damage = (
            f"{str(path)!r} ends at {end:.3f} s but its header declares {declared_end:.3f} s, so the file "
            f"is probably truncated; using the {len(frames)} frames decoded before the damage."
        )
    return _Decoded(frames, times, end, damage)


def _frame_time(frame: av.VideoFrame, previous: list, nominal_interval: Optional[float]) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    step = nominal_interval if nominal_interval else 0.0
    return previous[-1] + step if previous else 0.0


def _typical_interval(times: torch.Tensor, nominal_interval: Optional[float]) -> float:
    """Return the median gap between frames, else the nominal interval, else 0."""
    gaps = torch.diff(times)
    gaps = gaps[gaps > 0]
    if len(gaps):
        return float(gaps.median())
    return nominal_interval or 0.0


def _truncation_tolerance(times: torch.Tensor, nominal_interval: Optional[float]) -> float:
    # Headers round durations and some muxers count a trailing frame differently, so only
    # a gap of more than two frame intervals (and 1 % of the length) counts as truncation.
    return 2 * _typical_interval(times, nominal_interval) + 0.01 * float(times[-1] - times[0]) + 1e-6


def sample_frame_indices(
    times: torch.Tensor, num_frames: int, end: Optional[float] = None, *, short_clip: str = "loop"
) -> torch.Tensor:
    """Choose ``num_frames`` frame indices spread uniformly in time.

    With at least ``num_frames`` frames, the target times are ``t0 + k * (end - t0) / num_frames``
    for ``k = 0 .. num_frames - 1``, where ``t0`` is the first timestamp, and each target takes
    the frame with the nearest timestamp (the earlier one on a tie). When ``num_frames`` equals
    the frame count of a constant-rate video, every frame is chosen once, in order. A variable
    frame rate video may repeat a frame that stays on screen over several targets.

    With fewer frames than ``num_frames`` the rule ``short_clip`` applies: ``"loop"`` repeats
    the video from its start (0, 1, 2, 0, 1, ...), ``"pad"`` repeats the last frame
    (0, 1, 2, 2, 2, ...).

    Args:
        times: sorted float tensor of shape (F,) with the frame timestamps in seconds, F >= 1.
        num_frames: how many indices to return.
        end: the end time of the video in seconds. Default: the last timestamp plus the median
            frame interval.
        short_clip: ``"loop"`` (default) or ``"pad"``.

    Returns:
        int64 tensor of shape (num_frames,).

    Example:
        >>> sample_frame_indices(torch.arange(10) / 25.0, 5)
        tensor([0, 2, 4, 6, 8])
    """
    num_frames = _check_num_frames(num_frames)
    if short_clip not in SHORT_CLIP_RULES:
        raise ValueError(f"short_clip={short_clip!r} is invalid: pass 'loop' or 'pad'.")
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"times has shape {tuple(times.shape)}: pass a 1-D tensor with at least one timestamp.")

    count = len(times)
    steps = torch.arange(num_frames)
    if count < num_frames:
        if short_clip == "loop":
            return steps % count
        return steps.clamp(max=count - 1)

    if end is None:
        end = float(times[-1]) + _typical_interval(times, None)
    start = float(times[0])
    if end <= start:
        # All frames share one timestamp, so spread the choice by index instead.
        return (steps * count) // num_frames

    targets = start + steps.to(torch.float64) * ((end - start) / num_frames)
    after = torch.searchsorted(times, targets).clamp(max=count - 1)
    before = (after - 1).clamp(min=0)
    take_before = (targets - times[before]) <= (times[after] - targets)
    return torch.where(take_before, before, after)


def read_video(path: PathLike, num_frames: int, size: Size, *, short_clip: str = "loop") -> torch.Tensor:
    """Read a clip of ``num_frames`` frames spread uniformly over a whole video file.

    Frames are chosen by presentation timestamp over the decoded duration of the video
    stream (see :func:`sample_frame_indices`), so variable frame rate files are read
    correctly. Each frame is resized to ``size`` with area interpolation, without keeping the
    aspect ratio. A video with fewer decodable frames than ``num_frames`` is extended by the
    rule ``short_clip``: ``"loop"`` repeats it from the start, ``"pad"`` repeats its last frame.

    Args:
        path: the video file (any container and codec that FFmpeg decodes).
        num_frames: T, the number of frames of the clip.
        size: an int for a square frame, or ``(height, width)``.
        short_clip: ``"loop"`` (default) or ``"pad"``.

    Returns:
        float32 tensor in [0, 1] of shape (3, T, H, W), RGB.

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file is empty, is not a video, or no frame could be decoded.

    A damaged file whose first frames decode yields those frames with a
    :class:`TruncatedVideoWarning`.

    Example:
        >>> clip = read_video("v_ApplyEyeMakeup_g01_c01.avi", num_frames=16, size=112)
        >>> clip.shape
        torch.Size([3, 16, 112, 112])
    """
    num_frames = _check_num_frames(num_frames)
    size = check_size(size)
    if short_clip not in SHORT_CLIP_RULES:
        raise ValueError(f"short_clip={short_clip!r} is invalid: pass 'loop' or 'pad'.")

    # NOTE: every frame is decoded and kept at the output size before sampling, so memory grows
    # with the video length, about 1.2 MB per 100 frames at 64x64. That suits clips of seconds
    # such as UCF-101 but not feature films.
    decoded = _decode(path, size)
    if decoded.damage is not None:
        warnings.warn(decoded.damage, TruncatedVideoWarning, stacklevel=2)

    indices = sample_frame_indices(decoded.times, num_frames, decoded.end, short_clip=short_clip)

    clip = decoded.frames[indices].permute(3, 0, 1, 2)
    return clip.to(torch.float32).div_(255.0).contiguous()



def _video_to_uint8(video: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """Convert a (C, T, H, W) video to a uint8 array of shape (T, H, W, 3)."""
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(video)
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video has type {type(video).__name__}: pass a torch.Tensor or numpy array of shape (C, T, H, W).")
    video = video.detach().cpu()

    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(
            f"video has shape {tuple(video.shape)}: pass (C, T, H, W) with C = 3 (RGB) or C = 1 (gray); "
            "for a batch, write one clip at a time."
        )
    if min(video.shape[1:]) < 1:
        raise ValueError(f"video has shape {tuple(video.shape)}: T, H and W must all be at least 1.")

    if video.dtype == torch.uint8:
        pixels = video
    elif video.is_floating_point():
        low, high = float(video.min()), float(video.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(
                f"video values span [{low}, {high}]: a float video must lie in [0, 1]; clamp it first."
            )
        pixels = video.to(torch.float64).mul(255.0).round().to(torch.uint8)
    else:
        raise ValueError(f"video has dtype {video.dtype}: pass float values in [0, 1] or uint8.")

    pixels = pixels.expand(3, -1, -1, -1) if pixels.shape[0] == 1 else pixels
    return np.ascontiguousarray(pixels.permute(1, 2, 3, 0).numpy())


def _resolve_codec(path: Path, codec: Optional[str]) -> Tuple[str, str, str, bool]:
    """Return (muxer, encoder, pixel format, lossless) for ``path`` and ``codec``."""
    suffix = path.suffix.lower()
    if suffix not in _CONTAINERS:
        raise ValueError(
            f"Unsupported video file suffix {path.suffix!r} in {str(path)!r}: use one of {sorted(_CONTAINERS)} "
            "(.mkv keeps frames exactly)."
        )
    muxer, accepted, default = _CONTAINERS[suffix]

    if codec is None:
        if default is None:
            raise ValueError(
                f"No lossless codec for {suffix!r} files: write a .mkv or .avi file (FFV1, exact), or pass "
                f"codec={accepted[0]!r} to accept lossy compression."
            )
        codec = default

    codec = codec.lower()
    if codec not in accepted:
        raise ValueError(
            f"codec={codec!r} with suffix {suffix!r} is unsupported: {suffix!r} accepts {list(accepted)}; "
            "FFV1 (codec='ffv1') needs .mkv or .avi."
        )
    encoder, pixel_format, lossless = _CODECS[codec]
    return muxer, encoder, pixel_format, lossless


def write_video(
    path: PathLike,
    video: Union[torch.Tensor, np.ndarray],
    fps: Union[int, float, Fraction] = 25,
    codec: Optional[str] = None,
) -> Path:
    """Encode a clip to a video file, losslessly by default.

    The container comes from the suffix: ``.mkv`` and ``.avi`` default to FFV1 with the
    ``bgr0`` pixel format, which stores RGB uint8 values exactly, so writing and reading back
    at the same size and frame count returns the same frames. ``.mp4`` and ``.mov`` have no
    lossless codec here and need an explicit ``codec``. Lossy codecs (``"h264"``, which runs
    libx264, and ``"mpeg4"``) convert to YUV 4:2:0 and quantize, which erases most of an
    adversarial perturbation of a few gray levels, so they warn, and they need even H and W.

    The file is written to a temporary file in the same folder and then renamed, so readers
    never see a half-written file and a failed write leaves any old file unchanged.

    Args:
        path: the output file; its suffix picks the container (.mkv, .avi, .mp4, .mov).
        video: tensor or array of shape (C, T, H, W) with C = 3 (RGB) or 1 (gray), float in
            [0, 1] (rounded to the nearest of 256 levels) or uint8.
        fps: frame rate in frames per second (default 25).
        codec: None (default: the lossless codec of the suffix), ``"ffv1"``, ``"h264"`` or
            ``"mpeg4"``.

    Returns:
        The written path.

    Raises:
        ValueError: an invalid video, fps, suffix, or codec and suffix combination.
        FileNotFoundError: the output folder does not exist.

    Example:
        >>> write_video("adv.mkv", adversarial_clip, fps=25)
    """
    path = Path(path)
    muxer, encoder, pixel_format, lossless = _resolve_codec(path, codec)
    if isinstance(fps, bool) or not isinstance(fps, (numbers.Real, Fraction)) or not np.isfinite(float(fps)) or fps <= 0:
        raise ValueError(f"fps={fps!r} is invalid: pass a positive frame rate, for example 25.")
    rate = Fraction(fps).limit_denominator(1001)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder not found: {str(path.parent)!r}. Create it before writing {path.name!r}.")

    frames = _video_to_uint8(video)
    height, width = frames.shape[1:3]
    if pixel_format == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(
            f"codec={codec or encoder!r} stores 4:2:0 chroma and needs an even height and width, but the video is "
            f"{height}x{width}: crop or pad it, or write .mkv with codec='ffv1'."
        )
    if not lossless:
        warnings.warn(
            f"codec={codec!r} is lossy: it erases most of an adversarial perturbation of a few gray levels. "
            "Write .mkv with codec='ffv1' to keep the frames exactly.",
            UserWarning,
            stacklevel=2,
        )

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        _encode(temporary, frames, rate, muxer, encoder, pixel_format)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()

    logger.debug("wrote %d frames of %dx%d to %s with %s", len(frames), height, width, path, encoder)
    return path


def _encode(path: Path, frames: np.ndarray, rate: Fraction, muxer: str, encoder: str, pixel_format: str) -> None:
    with av.open(_local_url(path), mode="w", format=muxer) as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pixel_format
        stream.codec_context.time_base = 1 / rate

        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            frame.time_base = stream.codec_context.time_base
            container.mux(stream.encode(frame))

        container.mux(stream.encode(None))
