"""A video dataset in the UCF-101 / HMDB-51 folder layout, decoded with PyAV."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch.utils.data import Dataset

from tlga_attacks.data.io import PathLike, Size, VideoDecodeError, check_size, probe_video, read_video

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ogv")

# HMDB-51 split files are named "<class>_test_split<fold>.txt". Each line is "<video> <id>",
# with id 1 for train, 2 for test and 0 for videos left out of that fold.
_HMDB_SPLIT_IDS = {"train": "1", "test": "2"}


class VideoFolder(Dataset):
    """Video classification dataset with one folder per class (UCF-101 / HMDB-51 layout).

    ``root/<class>/<video>``: classes are the sorted names of the subfolders of ``root`` and
    label ``i`` is the ``i``-th of them. Videos are the files below each class folder whose
    suffix is in ``extensions``; hidden files (name starting with ".") are ignored.

    Splits. ``split_file`` selects the videos of one split:

    * a UCF-101 list file (``trainlist01.txt``, ``testlist01.txt``): one video per line as
      ``Class/video.avi`` with an optional number after it. The number is ignored, because the
      label always comes from the class folder (UCF-101's ``classInd.txt`` numbers the classes
      from 1 in the same sorted order). ``split`` must be None, since the file is the split.
    * a folder of split files with ``split="train"`` or ``"test"`` and ``fold`` 1, 2 or 3:
      either UCF-101 style (``{split}list{fold:02d}.txt``) or HMDB-51 style
      (``<class>_test_split{fold}.txt`` files with lines ``<video> <0|1|2>``, where 1 marks
      train, 2 test and 0 unused videos).

    Unreadable videos are reported and skipped, never fatal. At construction a listed file
    that does not exist is skipped, and with ``probe=True`` (default) each file's header is
    read (about a millisecond per file), which catches empty, non-video and badly damaged
    files. A file that fails later, in ``__getitem__``, is skipped for good and the next
    index is returned instead, trying at most ``max_skips`` files before raising. Each skip
    logs a warning that names the file and the error and is appended to ``skipped`` as
    ``(path, reason)``.

    Args:
        root: the dataset folder that contains one folder per class.
        num_frames: T, the frames per clip, spread uniformly over each whole video.
        size: frame size, an int (square) or ``(height, width)``; the aspect ratio is not kept.
        split: None (default), ``"train"`` or ``"test"``; needs a folder ``split_file``.
        split_file: None (default: every video), a UCF-101 list file, or a folder of split files.
        fold: which official split a folder ``split_file`` selects (default 1).
        transform: optional callable applied to each clip of shape (3, T, H, W).
        short_clip: rule for videos with fewer than ``num_frames`` frames, ``"loop"`` (default,
            repeat from the start) or ``"pad"`` (repeat the last frame).
        extensions: video file suffixes to include, compared case-insensitively.
        probe: read each file's header at construction (default True).
        max_skips: how many consecutive unreadable files ``__getitem__`` skips before it raises
            (default 10).

    Items are ``(clip, label)``: float32 clip in [0, 1] of shape (3, T, H, W) and an int label.

    Example:
        >>> train = VideoFolder("UCF-101", 16, 112, split_file="ucfTrainTestlist/trainlist01.txt")
        >>> clip, label = train[0]
        >>> loader = torch.utils.data.DataLoader(train, batch_size=8)  # (8, 3, 16, 112, 112)
    """

    def __init__(
        self,
        root: PathLike,
        num_frames: int,
        size: Size,
        split: Optional[str] = None,
        split_file: Optional[PathLike] = None,
        *,
        fold: int = 1,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        short_clip: str = "loop",
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        probe: bool = True,
        max_skips: int = 10,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Dataset root not found or not a folder: {str(self.root)!r}.")
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} is invalid: pass an int of at least 1, for example 16.")
        if short_clip not in ("loop", "pad"):
            raise ValueError(f"short_clip={short_clip!r} is invalid: pass 'loop' or 'pad'.")
        if not isinstance(max_skips, int) or max_skips < 1:
            raise ValueError(f"max_skips={max_skips!r} is invalid: pass an int of at least 1.")
        if fold not in (1, 2, 3):
            raise ValueError(f"fold={fold!r} is invalid: UCF-101 and HMDB-51 define folds 1, 2 and 3.")

        self.num_frames = num_frames
        self.size = check_size(size)
        self.split = split
        self.transform = transform
        self.short_clip = short_clip
        self.max_skips = max_skips
        self.extensions = tuple(extension.lower() for extension in extensions)
        self.skipped: List[Tuple[Path, str]] = []
        self._failed: Set[int] = set()

        self.classes = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        if not self.classes:
            raise ValueError(f"No class folders in {str(self.root)!r}: put each class's videos in root/<class>/.")
        self.class_to_idx: Dict[str, int] = {name: index for index, name in enumerate(self.classes)}

        candidates = self._list_candidates(split, split_file, fold)
        self.samples: List[Tuple[Path, int]] = self._keep_readable(candidates, probe)
        if not self.samples:
            raise ValueError(
                f"No readable video in {str(self.root)!r} (split_file={split_file!r}, extensions={list(self.extensions)}); "
                f"{len(self.skipped)} files were skipped, see the logged warnings."
            )
        self.targets = [label for _, label in self.samples]

        present = set(self.targets)
        for name in self.classes:
            if self.class_to_idx[name] not in present:
                logger.warning("class %r has no readable video in %s", name, self.root)

    def _list_candidates(self, split: Optional[str], split_file: Optional[PathLike], fold: int) -> List[Tuple[Path, int]]:
        """Return the (path, label) pairs that the split selects, sorted by path."""
        if split_file is None:
            if split is not None:
                raise ValueError(
                    f"split={split!r} needs split_file: pass the list file (for example trainlist01.txt) or the "
                    "folder of split files, or pass split=None to use every video."
                )
            return self._scan_folders()

        split_file = Path(split_file)
        if split_file.is_file():
            if split is not None:
                raise ValueError(
                    f"split={split!r} must be None when split_file is a list file ({str(split_file)!r}), "
                    "because the list file already selects the videos."
                )
            return self._read_ucf_list(split_file)

        if not split_file.is_dir():
            raise FileNotFoundError(f"split_file not found: {str(split_file)!r}.")
        if split not in _HMDB_SPLIT_IDS:
            raise ValueError(f"split={split!r} is invalid with a folder of split files: pass 'train' or 'test'.")

        ucf_list = split_file / f"{split}list{fold:02d}.txt"
        if ucf_list.is_file():
            return self._read_ucf_list(ucf_list)
        hmdb_files = sorted(split_file.glob(f"*_test_split{fold}.txt"))
        if hmdb_files:
            return self._read_hmdb_lists(hmdb_files, fold, _HMDB_SPLIT_IDS[split])
        raise FileNotFoundError(
            f"No split files for fold {fold} in {str(split_file)!r}: expected {ucf_list.name!r} (UCF-101) "
            f"or '<class>_test_split{fold}.txt' files (HMDB-51)."
        )

    def _is_video(self, path: Path) -> bool:
        return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in self.extensions

    def _scan_folders(self) -> List[Tuple[Path, int]]:
        samples = []
        for name in self.classes:
            videos = sorted(path for path in (self.root / name).rglob("*") if self._is_video(path))
            samples.extend((path, self.class_to_idx[name]) for path in videos)
        return samples

    def _label_for(self, class_name: str, listed_in: Path, line_number: int) -> int:
        if class_name not in self.class_to_idx:
            raise ValueError(
                f"{str(listed_in)!r} line {line_number} names class {class_name!r}, which has no folder in "
                f"{str(self.root)!r}: check that the split file belongs to this dataset."
            )
        return self.class_to_idx[class_name]

    def _read_ucf_list(self, list_file: Path) -> List[Tuple[Path, int]]:
        samples = []
        for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            relative = fields[0].replace("\\", "/")
            if "/" not in relative:
                raise ValueError(
                    f"{str(list_file)!r} line {line_number} is {line!r}: a UCF-101 list line is "
                    "'Class/video.avi' with an optional label after it."
                )
            class_name = relative.split("/", 1)[0]
            samples.append((self.root / relative, self._label_for(class_name, list_file, line_number)))
        return samples

    def _read_hmdb_lists(self, split_files: List[Path], fold: int, split_id: str) -> List[Tuple[Path, int]]:
        samples = []
        for split_file in split_files:
            class_name = re.sub(rf"_test_split{fold}\.txt$", "", split_file.name)
            for line_number, line in enumerate(split_file.read_text().splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                    raise ValueError(
                        f"{str(split_file)!r} line {line_number} is {line!r}: an HMDB-51 split line is "
                        "'<video> <0|1|2>'."
                    )
                if fields[1] == split_id:
                    label = self._label_for(class_name, split_file, line_number)
                    samples.append((self.root / class_name / fields[0], label))
        return sorted(samples)

    def _keep_readable(self, candidates: List[Tuple[Path, int]], probe: bool) -> List[Tuple[Path, int]]:
        readable = []
        for path, label in candidates:
            try:
                if probe:
                    probe_video(path)
                elif not path.is_file():
                    raise FileNotFoundError(f"Video file not found: {str(path)!r}.")
            except (OSError, VideoDecodeError) as error:
                self._report_skip(path, error)
                continue
            readable.append((path, label))
        return readable

    def _report_skip(self, path: Path, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        logger.warning("skipping unreadable video %s (%s)", path, reason)
        self.skipped.append((path, reason))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """Return ``(clip, label)`` for ``index``, or for the next readable video.

        A video that fails to decode is skipped from then on and the following index (wrapping
        around) is tried, at most ``max_skips`` times.

        NOTE: with DataLoader workers, a skip found in a worker process updates that worker's
        copy of ``skipped``, not the copy in the main process. The logged warning still appears.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} videos.")
        index %= len(self)

        for attempt in range(self.max_skips + 1):
            position = (index + attempt) % len(self)
            if position in self._failed:
                continue
            path, label = self.samples[position]
            try:
                clip = read_video(path, self.num_frames, self.size, short_clip=self.short_clip)
            except (OSError, VideoDecodeError) as error:
                self._failed.add(position)
                self._report_skip(path, error)
                continue

            if self.transform is not None:
                clip = self.transform(clip)
            return clip, label

        raise RuntimeError(
            f"{self.max_skips + 1} videos in a row from index {index} could not be read; see the skipped "
            "attribute and the logged warnings, or raise max_skips."
        )
