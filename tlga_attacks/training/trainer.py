"""Training loop for the reference video models, on one process or under ``torchrun``.

:func:`train` builds the data and the model from a :class:`TrainConfig` and runs the epochs
of a training method from ``METHODS``, with a resumable checkpoint after every epoch. At the
end it measures clean accuracy on the test split (and, for adversarial methods, robust
accuracy under PGD) and saves the model with its card.

Multi-process training. Started with ``torchrun --nproc-per-node P``, which sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``, :func:`train` joins a process group (gloo on the CPU,
nccl on GPUs) and wraps the model in ``DistributedDataParallel``:

* each process trains on ``batch_size / P`` clips of every global batch, drawn by a
  ``DistributedSampler`` seeded with ``seed``. A single process uses the same sampler with
  P = 1, so it sees the same global batches in the same order. The sampler repeats a few
  clips when the number of clips is not a multiple of P, so the two match exactly only when
  it is a multiple of the global batch size;
* DDP averages the gradients over the processes, so an update equals the single-process
  update on the global batch whenever the loss is a mean over clips and every process has the
  same number of clips. Batch normalization in training mode normalizes with per-process
  batch statistics, and the MoE load-balancing loss is computed per process, so those two
  parts differ from one process;
* ``find_unused_parameters=True``, because sparse dispatch leaves the experts that no clip
  of a process selected without gradients. Without it DDP raises an error in the next
  iteration, since it expects a gradient for every parameter;
* adversarial examples are computed on the unwrapped model (``model.module``), because a
  forward pass through the wrapper prepares a gradient all-reduce that an input-gradient
  pass never performs;
* only rank 0 writes files. Resuming works as in one process. Each process restores its own
  random number generator state when the number of processes is unchanged.
"""

import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torchattacks
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from tlga_attacks.models import build_model

from .checkpoint import (
    CARD_FORMAT_VERSION,
    TRAINING_STATE_FILE,
    file_sha256,
    load_training_state,
    read_weights,
    save_model,
    save_training_state,
)
from .methods import METHODS, StepContext, TrainingMethod

logger = logging.getLogger(__name__)

MODEL_CHOICES = ("moe", "dense", "transformer")
DATA_NAMES = ("synthetic", "footage")
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "sgd")

# Default clip counts per data set: (train, test).
_DEFAULT_CLIPS = {"synthetic": (2000, 400), "footage": (600, 240)}

# Robust accuracy is measured with torchattacks PGD at alpha 2/255 and 10 steps.
EVAL_ALPHA = 2 / 255
EVAL_STEPS = 10

# Test hook: after this many batches in one run, train() raises InterruptedForTesting, which
# simulates a crash in the middle of an epoch.
STOP_AFTER_BATCHES_ENV = "TLGA_TRAIN_STOP_AFTER_BATCHES"

# Settings that a resumed run may change, because the finished epochs do not depend on them.
# With the cosine schedule, epochs must stay the same.
_RESUME_IGNORED = ("epochs", "out", "workers", "device", "cache", "progress", "robust_eval", "command")


class InterruptedForTesting(RuntimeError):
    """Raised when the batch limit of the test hook ``TLGA_TRAIN_STOP_AFTER_BATCHES`` is reached."""


@dataclass
class TrainConfig:
    """Settings of one training run. The CLI ``tlga-train`` fills one from its flags.

    Args:
        out: output folder for checkpoints, weights and the model card.
        model: ``"moe"`` (``VideoMoE``), ``"dense"`` (``DenseVideoMoE``) or ``"transformer"``
            (``MoEVideoTransformer``). Default ``"moe"``. Method ``atd`` trains ``"dense"``.
        expert: expert backbone of ``moe`` and ``dense``. Default ``"tiny3d"``.
        num_experts: experts M per MoE layer. Default 4.
        top_k: experts per routing unit. Default None: the model's default, which is 1 for
            ``moe`` and 2 for ``transformer``. Not used by ``dense``.
        data: ``"synthetic"`` (``SyntheticActions``), ``"footage"`` (``FootageSpeed``) or
            the path of a class-folder data set (``VideoFolder``). A folder either contains
            ``train/`` and ``test/`` class folders, or is split by ``split_file``.
        split_file: folder of official split files for a folder data set. Default None.
        fold: split fold for ``split_file``. Default 1.
        num_classes: classes of ``synthetic``, 2 to 12. Default None (8). Other data sets
            take the number of classes from the data.
        num_frames: frames T per clip. Default 8.
        size: frame size in pixels, an int or ``(height, width)``. Default 32.
        clips: training clips. Default None: 2000 for synthetic, 600 for footage, all for a
            folder.
        test_clips: test clips. Default None: 400 for synthetic, 240 for footage, all for a
            folder.
        data_seed: seed of the synthetic and footage data sets. Default 0.
        method: a name in ``METHODS``: ``"standard"``, ``"atm"`` or ``"atd"``. Default
            ``"standard"``.
        eps: L-infinity radius of adversarial training and of the robust-accuracy PGD, as a
            fraction of the [0, 1] range. Default 8/255.
        attack_steps: PGD steps in adversarial training. Default 3.
        attack_alpha: PGD step size in adversarial training, as a fraction of the [0, 1]
            range; for ``tlat`` and ``jtlat``, the step of a frame with the clip's mean
            gradient norm under the temporal adaptive step. Default None:
            ``2.5 * eps / attack_steps``.
        eps_warmup: epochs over which the training radius (and the PGD step size with it)
            grows linearly from 0 to ``eps``, updated per batch. Default 0: full ``eps``
            from the first batch.
        init: path of a state dict (``.safetensors`` or ``torch.save``) that initializes the
            model, for example a standard-trained model to fine-tune adversarially. The keys
            must match the model's. A ``moe`` state dict also fits its ``dense`` counterpart,
            which has the same parameters. Default None: random initialization.
        epochs: training epochs. Default 10.
        batch_size: global batch size, split evenly over the processes. Default 32.
        optimizer: ``"adamw"`` or ``"sgd"`` (with momentum 0.9). Default ``"adamw"``. AdamW
            turns rounding noise in a zero gradient into full-size steps, so only SGD
            repeats a single-process run to rounding error under ``torchrun``.
        lr: learning rate. Default 3e-3.
        weight_decay: weight decay (decoupled for AdamW). Default 1e-4.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decays to 0 over ``epochs``, updated
            per batch). Default ``"constant"``. A cosine run cannot be resumed with other
            ``epochs``, because the schedule depends on them.
        aux_weight: weight of the MoE load-balancing loss. Default 0.01.
        seed: seed of model initialization, data order and attack noise. Default 0.
        device: ``"auto"`` (a GPU when available), ``"cpu"`` or ``"cuda"``. Default ``"auto"``.
        workers: DataLoader worker processes. Default 0.
        cache: keep every decoded or rendered clip in memory after its first use. Default
            None: on for synthetic and footage, off for a folder. Used only with
            ``workers=0``.
        progress: show tqdm progress bars on rank 0. Default False.
        robust_eval: measure robust accuracy under PGD-10 after training. Default None: only
            for adversarial methods.
        command: the command line that started the run, stored in the card.

    Example:
        >>> config = TrainConfig(out="runs/moe", data="synthetic", epochs=5)
        >>> card = train(config)  # doctest: +SKIP
    """

    out: Union[str, Path]
    model: str = "moe"
    expert: str = "tiny3d"
    num_experts: int = 4
    top_k: Optional[int] = None
    data: str = "synthetic"
    split_file: Optional[str] = None
    fold: int = 1
    num_classes: Optional[int] = None
    num_frames: int = 8
    size: Union[int, Tuple[int, int]] = 32
    clips: Optional[int] = None
    test_clips: Optional[int] = None
    data_seed: int = 0
    method: str = "standard"
    eps: float = 8 / 255
    attack_steps: int = 3
    attack_alpha: Optional[float] = None
    eps_warmup: int = 0
    init: Optional[str] = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    aux_weight: float = 0.01
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    cache: Optional[bool] = None
    progress: bool = False
    robust_eval: Optional[bool] = None
    command: Optional[str] = None

    def __post_init__(self) -> None:
        self.out = str(self.out)
        if self.init is not None:
            self.init = str(self.init)
        if isinstance(self.size, list):
            self.size = tuple(self.size)
        self.validate()

    @property
    def training_method(self) -> TrainingMethod:
        return METHODS[self.method]

    @property
    def model_name(self) -> str:
        """The architecture that is trained: the method's counterpart, if it has one."""
        return self.training_method.model or self.model

    @property
    def alpha(self) -> float:
        """The PGD step size of adversarial training."""
        return self.attack_alpha if self.attack_alpha is not None else 2.5 * self.eps / self.attack_steps

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        _check_choice("model", self.model, MODEL_CHOICES)
        _check_choice("method", self.method, tuple(METHODS))
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        method = self.training_method
        if method.model is not None and self.model not in (method.model, "moe"):
            raise ValueError(
                f"model={self.model!r} cannot be trained with method={self.method!r}, which trains the "
                f"{method.model!r} counterpart of the clip-routed MoE: pass model='moe' or '{method.model}'."
            )
        if self.model_name == "transformer" and self.expert != "tiny3d":
            raise ValueError(
                f"expert={self.expert!r} does not apply to model='transformer', whose experts are MLPs: "
                "leave expert at its default."
            )
        if self.model_name == "dense" and self.top_k is not None:
            raise ValueError(f"top_k={self.top_k!r} does not apply to model='dense', which runs every expert: pass None.")

        if self.data not in DATA_NAMES and not Path(self.data).is_dir():
            raise ValueError(
                f"data={self.data!r} is invalid: pass 'synthetic', 'footage' or the path of an existing "
                "class-folder data set."
            )
        if self.data not in DATA_NAMES and self.split_file is None:
            for split in ("train", "test"):
                if not (Path(self.data) / split).is_dir():
                    raise ValueError(
                        f"data={self.data!r} has no {split}/ folder: give the data set train/ and test/ class "
                        "folders, or pass split_file (a folder of official split files)."
                    )
        if self.split_file is not None and self.data in DATA_NAMES:
            raise ValueError(f"split_file={self.split_file!r} applies only to a folder data set, not data={self.data!r}.")
        if self.num_classes is not None and self.data != "synthetic":
            raise ValueError(
                f"num_classes={self.num_classes!r} applies only to data='synthetic', because other data sets "
                "take the number of classes from the data. Pass None."
            )

        _check_int("num_experts", self.num_experts, 1)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        _check_int("fold", self.fold, 1)
        _check_int("num_frames", self.num_frames, 2)
        for name in ("clips", "test_clips"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("data_seed", self.data_seed, 0)
        _check_int("attack_steps", self.attack_steps, 1)
        _check_int("eps_warmup", self.eps_warmup, 0)
        if self.init is not None and not Path(self.init).is_file():
            raise FileNotFoundError(
                f"init={self.init!r}: file not found. Pass the model.safetensors or model.pt of a finished run."
            )
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("workers", self.workers, 0)

        _check_number("eps", self.eps, 0.0, 1.0, "a fraction of the [0, 1] range such as 8/255")
        if self.method != "standard" and self.eps == 0:
            raise ValueError(f"eps=0 is invalid for method={self.method!r}: pass a positive radius such as 8/255.")
        if self.attack_alpha is not None:
            _check_number("attack_alpha", self.attack_alpha, 0.0, 1.0, "a positive step such as 2/255", open_low=True)
        _check_number("lr", self.lr, 0.0, math.inf, "a positive learning rate such as 3e-3", open_low=True)
        _check_number("weight_decay", self.weight_decay, 0.0, math.inf, "a number >= 0 such as 1e-4")
        _check_number("aux_weight", self.aux_weight, 0.0, math.inf, "a number >= 0 such as 0.01")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ValueError(f"device={self.device!r} is invalid: pass 'auto', 'cpu' or 'cuda'.")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} is invalid: no CUDA device is available. Pass 'cpu' or 'auto'.")

    def resume_fingerprint(self) -> Dict[str, Any]:
        """Return the settings that a resumed run must share with the run that it continues."""
        settings = asdict(self)
        ignored = set(_RESUME_IGNORED)
        if self.lr_schedule == "cosine":
            ignored.discard("epochs")
        settings = {key: value for key, value in settings.items() if key not in ignored}
        settings["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        return settings


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: pass one of {', '.join(choices)}.")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: pass an int >= {minimum}.")


def _check_number(name: str, value: Any, low: float, high: float, hint: str, open_low: bool = False) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if valid:
        valid = (value > low if open_low else value >= low) and value <= high
    if not valid:
        raise ValueError(f"{name}={value!r} is invalid: pass {hint}.")


# -- data ----------------------------------------------------------------------------------


class CachedDataset(Dataset):
    """Keep each item of a deterministic data set in memory after its first use.

    Rendering a synthetic clip or cropping footage costs milliseconds, which adds up over
    epochs. The cache lives in the process that reads the items, so it helps only when the
    DataLoader has no worker processes.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.items: Dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


def build_datasets(config: TrainConfig) -> Tuple[Dataset, Dataset, Dict[str, Any]]:
    """Build the train and test splits of ``config.data``.

    Returns:
        ``(train, test, data_card)``. ``data_card`` records the data set name, its arguments
        (``num_frames``, ``size``, ``num_classes``, ``data_seed``) and the clip counts, for the
        model card.
    """
    # Imported here so that importing the trainer does not decode or probe any video.
    from tlga_attacks.data.folder import VideoFolder
    from tlga_attacks.data.footage import FootageSpeed
    from tlga_attacks.data.synthetic import SyntheticActions

    size = config.size
    if config.data == "synthetic":
        train_clips, test_clips = _clip_counts(config)
        num_classes = config.num_classes if config.num_classes is not None else 8
        common = dict(num_frames=config.num_frames, size=size, num_classes=num_classes, seed=config.data_seed)
        train_set = SyntheticActions(train_clips, split="train", **common)
        test_set = SyntheticActions(test_clips, split="test", **common)
    elif config.data == "footage":
        train_clips, test_clips = _clip_counts(config)
        common = dict(num_frames=config.num_frames, size=size, seed=config.data_seed)
        train_set = FootageSpeed("train", num_clips=train_clips, **common)
        test_set = FootageSpeed("test", num_clips=test_clips, **common)
        num_classes = len(train_set.classes)
    else:
        if config.split_file is not None:
            common = dict(split_file=config.split_file, fold=config.fold)
            train_set = VideoFolder(config.data, config.num_frames, size, split="train", **common)
            test_set = VideoFolder(config.data, config.num_frames, size, split="test", **common)
        else:
            train_set = VideoFolder(Path(config.data) / "train", config.num_frames, size)
            test_set = VideoFolder(Path(config.data) / "test", config.num_frames, size)
        if train_set.classes != test_set.classes:
            raise ValueError(
                f"data={config.data!r}: the train and test splits have different classes "
                f"({len(train_set.classes)} and {len(test_set.classes)}). Give both the same class folders."
            )
        num_classes = len(train_set.classes)
        train_set = _first(train_set, config.clips)
        test_set = _first(test_set, config.test_clips)

    data_card = {
        "name": config.data if config.data in DATA_NAMES else "folder",
        "num_frames": config.num_frames,
        "size": list(size) if isinstance(size, tuple) else size,
        "num_classes": num_classes,
        "data_seed": config.data_seed,
        "train_clips": len(train_set),
        "test_clips": len(test_set),
    }
    if config.data not in DATA_NAMES:
        data_card.update(root=str(Path(config.data).resolve()), split_file=config.split_file, fold=config.fold)
    return train_set, test_set, data_card


def _clip_counts(config: TrainConfig) -> Tuple[int, int]:
    default_train, default_test = _DEFAULT_CLIPS[config.data]
    train_clips = config.clips if config.clips is not None else default_train
    test_clips = config.test_clips if config.test_clips is not None else default_test
    return train_clips, test_clips


def _first(dataset: Dataset, count: Optional[int]) -> Dataset:
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


# -- processes -----------------------------------------------------------------------------


@dataclass
class ProcessGroup:
    """Rank, world size and device of this process, and whether :func:`train` started the group."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process_group(device: str = "auto") -> ProcessGroup:
    """Join the process group that ``torchrun`` describes, or run as a single process.

    With ``WORLD_SIZE`` > 1 in the environment (set by ``torchrun`` together with ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), the process group is initialized
    from the environment: nccl when this process uses a GPU (``cuda:LOCAL_RANK``), else gloo.
    An already initialized group is used as it is.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        index = local_rank if device in ("auto", "cuda") else torch.device(device).index or 0
        torch_device = torch.device("cuda", index)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")

    owns_group = False
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    elif world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
        owns_group = True
        logger.info("joined a %s process group as rank %d of %d", backend, rank, world_size)

    return ProcessGroup(rank=rank, world_size=world_size, device=torch_device, owns_group=owns_group)


def _all_reduce_sum(values: List[float], group: ProcessGroup) -> List[float]:
    """Sum a list of numbers over all processes (identity for one process)."""
    if not group.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=group.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather_rng_states(group: ProcessGroup) -> List[Dict[str, torch.Tensor]]:
    """Return the random number generator state of every process, in rank order."""
    state = _rng_state(group.device)
    if not group.distributed:
        return [state]
    states: List[Any] = [None] * group.world_size
    dist.all_gather_object(states, {key: value.cpu() for key, value in state.items()})
    return states


# -- evaluation ----------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    eps: Optional[float] = None,
    seed: int = 0,
    group: Optional[ProcessGroup] = None,
    progress: bool = False,
) -> Dict[str, Optional[float]]:
    """Measure clean accuracy and, with ``eps``, robust accuracy under PGD-10.

    The attack is torchattacks ``PGD`` with ``eps``, alpha 2/255, 10 steps and a uniform
    random start drawn after seeding with ``seed`` (inside ``torch.random.fork_rng``, so the
    caller's generator state is unchanged). Under ``torchrun`` each process evaluates every
    P-th clip and the counts are summed.

    Args:
        model: the unwrapped model. It is put in eval mode.
        dataset: items ``(clip, label)`` with clips (C, T, H, W).
        batch_size: clips per forward pass. Default 32.
        device: where the model is. Default ``"cpu"``.
        eps: L-infinity radius in [0, 1] units, or None to skip the attack. Default None.
        seed: seed of the attack's random start. Default 0.
        group: the process group from :func:`setup_process_group`. Default None: one process.
        progress: show a tqdm bar. Default False.

    Returns:
        ``{"clean_accuracy": float, "robust_accuracy": float or None}``.

    Example:
        >>> evaluate(model, SyntheticActions(64, split="test", num_frames=8), eps=8 / 255)  # doctest: +SKIP
        {'clean_accuracy': 0.91, 'robust_accuracy': 0.33}
    """
    device = torch.device(device)
    rank, world_size = (group.rank, group.world_size) if group is not None else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    model.eval()

    attack = None
    if eps is not None:
        attack = torchattacks.PGD(model, eps=eps, alpha=EVAL_ALPHA, steps=EVAL_STEPS, random_start=True)

    clean_correct = robust_correct = total = 0
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices, device_type=device.type):
        torch.manual_seed(seed)
        for videos, labels in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            videos, labels = videos.to(device), labels.to(device)

            with torch.no_grad():
                clean_correct += (model(videos).argmax(dim=1) == labels).sum().item()
            total += labels.numel()

            if attack is not None:
                adversarial_videos = attack(videos, labels)
                with torch.no_grad():
                    robust_correct += (model(adversarial_videos).argmax(dim=1) == labels).sum().item()

    if group is not None:
        clean_correct, robust_correct, total = _all_reduce_sum([clean_correct, robust_correct, total], group)
    return {
        "clean_accuracy": clean_correct / total,
        "robust_accuracy": robust_correct / total if attack is not None else None,
    }


# -- training ------------------------------------------------------------------------------


def build_training_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """Build the randomly initialized model that ``config`` trains (after seeding)."""
    name = config.model_name
    kwargs: Dict[str, Any] = {"num_experts": config.num_experts}
    if name in ("moe", "dense"):
        kwargs["expert"] = config.expert
    if name == "transformer":
        height, width = (config.size, config.size) if isinstance(config.size, int) else config.size
        kwargs["clip_size"] = (config.num_frames, height, width)
    if config.top_k is not None:
        kwargs["top_k"] = config.top_k
    return build_model(name, num_classes, **kwargs)


def _load_init(module: nn.Module, path: str) -> None:
    """Load the initial weights of ``module`` from ``path`` (strict key match)."""
    try:
        module.load_state_dict(read_weights(path))
    except RuntimeError as error:
        raise ValueError(
            f"init={path!r} does not fit the {type(module).__name__} being trained: {error}. Pass the weights of a "
            "model with the same architecture arguments."
        ) from error
    logger.info("initialized the model from %s", path)


def _attack_settings(config: TrainConfig, epoch: int, batch: int, batches_per_epoch: int) -> Tuple[float, float]:
    """Return (eps, alpha) of adversarial training for a batch, scaled up over ``eps_warmup`` epochs."""
    scale = 1.0
    if config.eps_warmup > 0:
        scale = min(1.0, (epoch + (batch + 1) / batches_per_epoch) / config.eps_warmup)
    return config.eps * scale, config.alpha * scale


def build_optimizer(config: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """Return the optimizer of ``config`` over all parameters of ``module``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    total_steps = config.epochs * steps_per_epoch
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _method_state(context: StepContext) -> Dict[str, Any]:
    """Collect the state dicts of the objects in ``context.state`` that have one (e.g.
    J-TLAT's router and expert optimizers) by key. Entries restored from a checkpoint that
    no batch has loaded yet are kept."""
    saved = dict(context.restored)
    for key, value in context.state.items():
        if callable(getattr(value, "state_dict", None)):
            saved[key] = value.state_dict()
    return saved


def _resume(
    path: Path,
    config: TrainConfig,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    group: ProcessGroup,
) -> Tuple[int, List[Dict[str, Any]], Dict[str, Any]]:
    """Load the last finished epoch from ``path`` and return (epochs done, history, the
    saved state dicts of the training method's objects)."""
    state = load_training_state(path)

    saved = state["config"]
    current = config.resume_fingerprint()
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
        raise ValueError(
            f"out={config.out!r} contains a checkpoint of a run with other settings ({details}). "
            "Pass another --out folder, or delete its checkpoint.pt to start over."
        )
    if state["epoch"] > config.epochs:
        raise ValueError(
            f"epochs={config.epochs} is invalid: the checkpoint in {config.out!r} has already finished "
            f"{state['epoch']} epochs. Pass epochs >= {state['epoch']}."
        )

    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])

    rng_states = state["rng"]
    if len(rng_states) == group.world_size:
        _set_rng_state(rng_states[group.rank], group.device)
    else:
        logger.warning(
            "the checkpoint was written by %d processes and this run has %d, so random number generators are "
            "reseeded and the run will not repeat an uninterrupted one exactly",
            len(rng_states),
            group.world_size,
        )
        torch.manual_seed(config.seed + 1 + group.rank + 1000 * state["epoch"])

    logger.info("resuming %s after epoch %d of %d", config.out, state["epoch"], config.epochs)
    return state["epoch"], list(state["history"]), dict(state.get("method_state", {}))


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train the model of ``config`` and save its weights and model card to ``config.out``.

    Resumes from ``config.out/checkpoint.pt`` when it exists and was written with the same
    settings. ``epochs`` may grow, except with the cosine schedule. A run whose checkpoint
    already has all epochs only evaluates and saves again.

    Returns:
        The model card (also written to ``config.out/card.json`` by rank 0).

    Raises:
        ValueError: invalid settings, a global batch that the processes cannot share evenly,
            or a checkpoint of a run with other settings.
        InterruptedForTesting: the test hook ``TLGA_TRAIN_STOP_AFTER_BATCHES`` stopped the run.
    """
    group = setup_process_group(config.device)
    try:
        return _train(config, group)
    finally:
        if group.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, group: ProcessGroup) -> Dict[str, Any]:
    if config.batch_size % group.world_size != 0:
        raise ValueError(
            f"batch_size={config.batch_size} is invalid for {group.world_size} processes: pass a global batch "
            f"size divisible by {group.world_size}."
        )
    out = Path(config.out)
    method = config.training_method
    progress = config.progress and group.is_main

    # Data.
    train_set, test_set, data_card = build_datasets(config)
    cache = config.cache if config.cache is not None else config.data in DATA_NAMES
    if cache and config.workers == 0:
        train_set, test_set = CachedDataset(train_set), CachedDataset(test_set)
    sampler = DistributedSampler(train_set, num_replicas=group.world_size, rank=group.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size // group.world_size,
        sampler=sampler,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
    )

    # Model, optimizer and schedule. Every process builds the same initial weights.
    torch.manual_seed(config.seed)
    module = build_training_model(config, data_card["num_classes"])
    if config.init is not None:
        _load_init(module, config.init)
    module = module.to(group.device)
    optimizer = build_optimizer(config, module)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, len(loader)))
    model: nn.Module = module
    if group.distributed:
        device_ids = [group.device.index] if group.device.type == "cuda" else None
        model = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    # Attack noise differs between processes, so that no two processes draw the same start.
    torch.manual_seed(config.seed + 1 + group.rank)
    start_epoch, history, method_state = 0, [], {}
    checkpoint_path = out / TRAINING_STATE_FILE
    if checkpoint_path.is_file():
        start_epoch, history, method_state = _resume(checkpoint_path, config, module, optimizer, scheduler, group)

    context = StepContext(
        model=model,
        module=module,
        optimizer=optimizer,
        eps=config.eps,
        attack_steps=config.attack_steps,
        attack_alpha=config.alpha,
        aux_weight=config.aux_weight,
        restored=method_state,
    )
    stop_after = int(os.environ.get(STOP_AFTER_BATCHES_ENV, "0"))
    batches_run = 0

    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        record, batches_run = _train_epoch(config, context, loader, scheduler, group, epoch, progress, batches_run, stop_after)
        history.append(record)

        rng_states = _gather_rng_states(group)
        if group.is_main:
            state = {
                "epoch": epoch + 1,
                "config": config.resume_fingerprint(),
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_states,
                "history": history,
                "method_state": _method_state(context),
            }
            save_training_state(checkpoint_path, state)
        if group.distributed:
            dist.barrier()

    # Evaluation on the test split.
    robust_eval = config.robust_eval if config.robust_eval is not None else method.adversarial
    eval_started = time.perf_counter()
    metrics = evaluate(
        module,
        test_set,
        batch_size=max(1, config.batch_size // group.world_size),
        device=group.device,
        eps=config.eps if robust_eval else None,
        seed=config.seed,
        group=group,
        progress=progress,
    )
    eval_seconds = time.perf_counter() - eval_started
    logger.info("test clean accuracy %.4f, robust accuracy %s", metrics["clean_accuracy"], metrics["robust_accuracy"])

    card = _model_card(config, module, data_card, metrics, history, eval_seconds, group)
    if group.is_main:
        save_model(out, module, card)
    if group.distributed:
        dist.barrier()
    return card


def _train_epoch(
    config: TrainConfig,
    context: StepContext,
    loader: DataLoader,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    group: ProcessGroup,
    epoch: int,
    progress: bool,
    batches_run: int,
    stop_after: int,
) -> Tuple[Dict[str, Any], int]:
    """Train one epoch and return its history record and the batch count of this run so far."""
    method = config.training_method
    context.module.train()
    started = time.perf_counter()
    loss_sum = correct = seen = 0.0

    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    for batch, (videos, labels) in enumerate(bar):
        videos, labels = videos.to(group.device), labels.to(group.device)
        context.eps, context.attack_alpha = _attack_settings(config, epoch, batch, len(loader))

        output = method.step(context, videos, labels)
        scheduler.step()

        loss_sum += output.loss.item()
        correct += (output.logits.argmax(dim=1) == labels).sum().item()
        seen += labels.numel()
        bar.set_postfix(loss=f"{output.loss.item():.3f}")

        batches_run += 1
        if stop_after and batches_run >= stop_after:
            raise InterruptedForTesting(f"{STOP_AFTER_BATCHES_ENV}={stop_after} reached in epoch {epoch + 1}")

    # The mean over processes of their mean batch losses: with equal shares of every batch,
    # this equals the single-process mean loss on the same global batches.
    loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], group)
    record = {
        "epoch": epoch + 1,
        "loss": loss_sum / (len(loader) * group.world_size),
        "train_accuracy": correct / seen,
        "seconds": time.perf_counter() - started,
        "lr": scheduler.get_last_lr()[0],
    }
    logger.info(
        "epoch %d/%d: loss %.4f, train accuracy %.3f, %.1f s",
        record["epoch"],
        config.epochs,
        record["loss"],
        record["train_accuracy"],
        record["seconds"],
    )
    return record, batches_run


def _model_card(
    config: TrainConfig,
    module: nn.Module,
    data_card: Dict[str, Any],
    metrics: Dict[str, Optional[float]],
    history: List[Dict[str, Any]],
    eval_seconds: float,
    group: ProcessGroup,
) -> Dict[str, Any]:
    from tlga_attacks import __version__

    settings = {field.name: getattr(config, field.name) for field in fields(config)}
    adversarial = config.training_method.adversarial
    return {
        "format_version": CARD_FORMAT_VERSION,
        "model": dict(module.config),
        "data": data_card,
        "method": config.method,
        "eps": config.eps,
        "attack_steps": config.attack_steps if adversarial else None,
        "attack_alpha": config.alpha if adversarial else None,
        "eps_warmup": config.eps_warmup,
        "init": config.init,
        "init_sha256": file_sha256(config.init) if config.init is not None else None,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "lr_schedule": config.lr_schedule,
        "aux_weight": config.aux_weight,
        "seed": config.seed,
        "clean_accuracy": metrics["clean_accuracy"],
        "robust_accuracy": metrics["robust_accuracy"],
        "robust_eval": (
            {"attack": "torchattacks.PGD", "eps": config.eps, "alpha": EVAL_ALPHA, "steps": EVAL_STEPS, "random_start": True}
            if metrics["robust_accuracy"] is not None
            else None
        ),
        "history": history,
        "train_seconds": sum(record["seconds"] for record in history),
        "eval_seconds": eval_seconds,
        "command": settings["command"],
        "world_size": group.world_size,
        "device": str(group.device),
        "library_version": __version__,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} logical CPUs",
    }
