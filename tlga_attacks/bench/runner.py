"""Run the benchmark: every attack at every budget on every model, one cell at a time.

A cell is one (model, attack, eps). For each batch of clips the runner records the clean
forward pass with ``MoEInspector``, runs the attack, records the adversarial forward pass,
and adds the batch's sums (``metrics.batch_stats``). Both recorded passes are extra no-grad
forward passes outside the attack's cost accounting.

Determinism: a cell's seed is derived from the base seed, the model name, the attack and
eps. Batch ``b`` of the cell seeds its attack with ``derive_seed(cell_seed, b)``. Batches are
fixed slices of the selected clips, so every clip gets the same random start however the
clips are spread over processes, and a resumed run equals an uninterrupted one.

Multi-process runs (``torchrun --nproc-per-node N -m tlga_attacks.bench run ...``): process r
takes batches r, r + N, r + 2N, ...; the per-batch sums of all processes are gathered and
added in batch order, so N processes give exactly the sums of one. Only rank 0 writes files.

Files: each finished cell is written atomically to ``<out>/cells/<model>__<attack>__<eps>.json``
and records the hash of the configuration it measured. A rerun reuses a finished cell whose
hash matches, unless ``force`` is set. ``run.json`` holds the configuration, the list of cells
and the data report, from which ``report.render_report`` rebuilds the outputs.

Testing hook: with the environment variable ``TLGA_BENCH_STOP_AFTER_CELLS=k`` the run raises
``BenchInterrupted`` after computing k cells, as if the process had been killed there.
"""

import importlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .. import __version__
from .. import attacks as library_attacks
from ..hooks import MoEInspector, MoELayerRecord, RouterNotFoundError, find_moe_layers
from ..models import count_gflops
from ..outputs import logits_from_output
from .config import (
    BASELINE_ATTACKS,
    DATA_SOURCES,
    LIBRARY_ATTACKS,
    BenchConfig,
    ModelEntry,
    cell_id,
    config_hash,
    derive_seed,
    file_sha256,
    validate_paths,
)
from .metrics import BatchStats, batch_stats, cell_metrics, combine

logger = logging.getLogger(__name__)

__all__ = [
    "BenchInterrupted",
    "CELL_SCHEMA_VERSION",
    "STOP_AFTER_CELLS_ENV",
    "build_attack",
    "build_baseline",
    "load_checkpoint",
    "load_model",
    "run_benchmark",
    "select_clips",
    "write_json_atomic",
]

CELL_SCHEMA_VERSION = 1
STOP_AFTER_CELLS_ENV = "TLGA_BENCH_STOP_AFTER_CELLS"

DEFAULT_NUM_FRAMES = 16
DEFAULT_SIZE = 32
DEFAULT_SYNTHETIC_CLIPS = 400

# Clips and clean passes of a model stay in memory up to this size; beyond it each cell
# loads and decodes its clips again.
CACHE_BYTES = 1 << 30


class BenchInterrupted(RuntimeError):
    """The run stopped early on purpose (``TLGA_BENCH_STOP_AFTER_CELLS``)."""


# -- files ------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    Readers see either the old file or the complete new one, also after a crash.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("ignoring unreadable cell file %s (%s); the cell is computed again", path, error)
        return None


# -- models -----------------------------------------------------------------------------------


def _card_value(card: Any, key: str) -> Any:
    """Read ``key`` from a model card, or else from its ``data`` part.

    Cards of ``tlga_attacks.zoo`` keep the data settings (``num_frames``, ``size``,
    ``num_classes``, ``data_seed``) under ``card["data"]`` and the weights' ``sha256`` at
    the top level.
    """
    if card is None:
        return None
    for source in (card, _get(card, "data")):
        value = _get(source, key)
        if value is not None:
            return value
    return None


def _get(source: Any, key: str) -> Any:
    if isinstance(source, dict):
        return source.get(key)
    return getattr(source, key, None) if source is not None else None


def _import_zoo():
    try:
        return importlib.import_module("tlga_attacks.zoo")
    except ImportError as error:
        raise ValueError(
            "bundled models need the module tlga_attacks.zoo, which this installation lacks "
            f"({error}); pass model='module:factory' with a checkpoint instead."
        ) from None


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model`` (strict key match).

    ``.safetensors`` files are read with safetensors; any other file with
    ``torch.load(weights_only=True)``, which accepts a state dict or ``{"state_dict": ...}``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read, or its keys or shapes do not fit the model.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}. Pass the path of a saved state dict.")

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises several types for damaged or foreign files
        raise ValueError(f"checkpoint {path!r} could not be read as a state dict: {error}") from None

    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} contains a {type(state).__name__}, not a state dict.")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path!r} does not fit the model: {error}") from None


def load_model(entry: ModelEntry, device: torch.device) -> Tuple[nn.Module, Any]:
    """Build the model of ``entry`` on ``device`` in eval mode, and return ``(model, card)``.

    A bundled name is resolved by ``tlga_attacks.zoo.load(name)``, which returns the model
    and its card. ``"module:factory"`` imports ``module`` (the current directory is searched
    too) and calls ``factory(**entry.model_kwargs)``; its card is None. A checkpoint, when
    given, is loaded afterwards.

    Raises:
        ValueError: the module, the factory or the zoo cannot be used.
        FileNotFoundError: the checkpoint does not exist.
    """
    card = None
    if entry.is_zoo:
        model, card = _import_zoo().load(entry.model)
    else:
        module_name, _, factory_name = entry.model.rpartition(":")
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"model={entry.model!r}: module {module_name!r} cannot be imported ({error}); check PYTHONPATH "
                "and the spelling of 'module:factory'."
            ) from None
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise ValueError(f"model={entry.model!r}: module {module_name!r} has no callable {factory_name!r}.")
        model = factory(**entry.model_kwargs)

    if not isinstance(model, nn.Module):
        raise ValueError(f"model={entry.model!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    if entry.checkpoint is not None:
        load_checkpoint(model, entry.checkpoint)
    return model.to(device).eval(), card


def _model_fingerprint(entry: ModelEntry, card: Any) -> Dict[str, Any]:
    return {
        "model": entry.model,
        "model_kwargs": entry.model_kwargs,
        "checkpoint_sha256": file_sha256(entry.checkpoint) if entry.checkpoint else None,
        "card_version": _card_value(card, "version") or _card_value(card, "sha256"),
        "routers": entry.routers,
        "experts": entry.experts,
    }


# -- data -------------------------------------------------------------------------------------


@dataclass
class DataSource:
    """The data set of one model entry and the clips the benchmark uses from it."""

    dataset: Any
    indices: List[int]
    num_frames: int
    size: Any
    description: Dict[str, Any]

    @property
    def skipped(self) -> List[Tuple[str, str]]:
        return [(str(path), reason) for path, reason in getattr(self.dataset, "skipped", [])]


def select_clips(num_available: int, limit: Optional[int], spread: bool = True) -> List[int]:
    """Pick ``limit`` clip indices from ``range(num_available)``.

    With ``spread`` the indices are evenly spaced, which keeps every class of a data set
    sorted by class (a folder data set). Otherwise they are the first ``limit``, which suits
    data sets whose labels cycle through the classes (synthetic and footage data). Without
    a limit every clip is used.

    Example:
        >>> select_clips(10, 4)
        [0, 2, 5, 7]
    """
    if limit is None or limit >= num_available:
        return list(range(num_available))
    if not spread:
        return list(range(limit))
    return [(index * num_available) // limit for index in range(limit)]


def _output_classes(model: nn.Module, num_frames: int, size: Any) -> int:
    """Number of classes K of ``model``, from one no-grad pass on a black clip."""
    height, width = (size, size) if isinstance(size, int) else size
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    with torch.no_grad():
        logits = logits_from_output(model(torch.zeros(1, 3, num_frames, height, width, device=device)))
    return int(logits.shape[1])


def load_data(entry: ModelEntry, card: Any, limit: Optional[int], model: nn.Module) -> DataSource:
    """Build the data set of ``entry`` and select the clips to evaluate.

    Clip shape and synthetic-data settings come from the entry, else from the model card,
    else from the defaults: 16 frames of 32 x 32, data seed 0, and as many synthetic
    classes as the model has outputs (at most 12).

    Raises:
        FileNotFoundError: a data folder or split file does not exist.
        ValueError: the data set cannot be built or contains no readable video.
    """
    num_frames = entry.num_frames or _card_value(card, "num_frames") or DEFAULT_NUM_FRAMES
    size = entry.size or _card_value(card, "size") or DEFAULT_SIZE
    description: Dict[str, Any] = {"data": entry.data, "split": entry.split, "num_frames": num_frames, "size": size}

    if entry.data == "synthetic":
        from ..data.synthetic import MOTIONS, SyntheticActions

        num_classes = entry.num_classes or _card_value(card, "num_classes")
        if num_classes is None:
            num_classes = min(_output_classes(model, num_frames, size), len(MOTIONS))
        data_seed = entry.data_seed if entry.data_seed is not None else (_card_value(card, "data_seed") or 0)
        num_clips = entry.num_clips or limit or DEFAULT_SYNTHETIC_CLIPS
        dataset = SyntheticActions(
            num_clips, num_frames=num_frames, size=size, num_classes=num_classes, seed=data_seed,
            split=entry.split or "test",
        )
        description.update(split=entry.split or "test", num_classes=num_classes, data_seed=data_seed, num_clips=num_clips)
    elif entry.data == "footage":
        from ..data.footage import FootageSpeed

        data_seed = entry.data_seed if entry.data_seed is not None else (_card_value(card, "data_seed") or 0)
        dataset = FootageSpeed(
            split=entry.split or "test", num_frames=num_frames, size=size, num_clips=entry.num_clips or limit,
            seed=data_seed,
        )
        description.update(split=entry.split or "test", data_seed=data_seed, num_clips=len(dataset))
    else:
        from ..data.folder import VideoFolder

        split_file = entry.split
        split = "test" if split_file is not None and Path(split_file).is_dir() else None
        dataset = VideoFolder(entry.data, num_frames, size, split=split, split_file=split_file)
        description["files"] = config_hash([str(path) for path, _ in dataset.samples])

    indices = select_clips(len(dataset), limit, spread=entry.data not in DATA_SOURCES)
    return DataSource(dataset, indices, num_frames, size, description)


# -- attacks ----------------------------------------------------------------------------------


def build_baseline(name: str, model: nn.Module, eps: float, steps: int, seed: int, **kwargs):
    """Build a baseline attack from the registry ``tlga_attacks.baselines.BASELINES``.

    Every registry entry is a factory ``factory(model, eps, steps, seed, **kwargs)`` that
    returns a torchattacks attack on video; this is the one place the benchmark calls it.
    """
    from ..baselines import BASELINES

    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} is not in the registry: it has {', '.join(sorted(BASELINES))}.")
    return BASELINES[name](model, eps, steps, seed, **kwargs)


def attack_uses_router(name: str) -> bool:
    """Return whether the attack ``name`` needs a router, so that it cannot run on a model without one."""
    if name in LIBRARY_ATTACKS:
        return getattr(library_attacks, LIBRARY_ATTACKS[name]).uses_router
    return False


def build_attack(
    name: str,
    model: nn.Module,
    eps: float,
    steps: int,
    seed: int,
    kwargs: Optional[Dict[str, Any]] = None,
    routers: Optional[Sequence[str]] = None,
    experts: Optional[Sequence[Any]] = None,
):
    """Build the attack ``name`` with budget ``eps`` in pixel units ([0, 1] scale).

    Attacks of this library get ``routers``/``experts`` when given; baselines get ``seed``.
    """
    kwargs = dict(kwargs or {})
    if name in BASELINE_ATTACKS:
        return build_baseline(name, model, eps, steps, seed, **kwargs)

    attack_class = getattr(library_attacks, LIBRARY_ATTACKS[name])
    if attack_class.uses_router:
        if routers is not None:
            kwargs.setdefault("routers", routers)
        if experts is not None:
            kwargs.setdefault("experts", experts)
    return attack_class(model, eps=eps, steps=steps, **kwargs)


def clip_passes(attack: Any, batch_size: int) -> Tuple[int, int]:
    """Forward and backward passes of the latest attack call, summed over its clips.

    Uses ``attack.passes``: the baselines count clips themselves (``forward_clips``), and
    the attacks of this library count batch passes, each of which covers every clip.
    """
    passes = getattr(attack, "passes", None) or {}
    if "forward_clips" in passes:
        return int(passes["forward_clips"]), int(passes["backward_clips"])
    return int(passes.get("forward", 0)) * batch_size, int(passes.get("backward", 0)) * batch_size


# -- processes --------------------------------------------------------------------------------


@dataclass
class Context:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, value: Any) -> List[Any]:
        if self.world_size == 1:
            return [value]
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        if self.world_size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def _resolve_device(option: str, local_rank: int) -> torch.device:
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={option!r} needs CUDA, which is not available here: pass device='cpu'.")
    if option in ("auto", "cuda"):
        return torch.device("cuda", local_rank)
    return torch.device(option)


def init_context(device_option: str) -> Context:
    """Set up this process: under torchrun (``WORLD_SIZE`` > 1) join the process group,
    with the gloo backend on the CPU and nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(device_option, local_rank)
    if world_size == 1:
        return Context(device=device)

    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    logger.info("process %d of %d on %s", rank, world_size, device)
    return Context(rank=rank, world_size=world_size, device=device, owns_process_group=owns)


# -- one model --------------------------------------------------------------------------------


def has_moe_router(model: nn.Module, routers=None, experts=None) -> bool:
    """Return whether the hooks find a MoE router in ``model`` (or at the given module paths)."""
    try:
        find_moe_layers(model, routers, experts)
    except RouterNotFoundError:
        return False
    return True


def recorded_forward(
    model: nn.Module, x: torch.Tensor, has_router: bool, routers=None, experts=None
) -> Tuple[torch.Tensor, Optional[List[MoELayerRecord]]]:
    """Run one no-grad forward pass and return the logits and, for a MoE, its layer records."""
    with torch.no_grad():
        if not has_router:
            return logits_from_output(model(x)), None
        with MoEInspector(model, routers, experts, record_experts=False) as inspector:
            logits = logits_from_output(model(x))
            return logits, inspector.require_layers()


@dataclass
class _Batch:
    x: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    layers: Optional[List[MoELayerRecord]]


class ModelRun:
    """A loaded model with its clips, batches and clean forward passes."""

    def __init__(self, entry: ModelEntry, config: BenchConfig, context: Context):
        self.entry = entry
        self.context = context
        self.model, self.card = load_model(entry, context.device)
        self.data = load_data(entry, self.card, config.limit, self.model)
        self.batch_size = config.batch_size
        self.has_router = self._find_router()
        self.fingerprint = {"model": _model_fingerprint(entry, self.card), "data": self.data.description}
        self._cache: Dict[int, _Batch] = {}

        first_clip, _ = self.data.dataset[self.data.indices[0]]
        self.clip_shape = tuple(first_clip.shape)
        clip_bytes = first_clip.numel() * first_clip.element_size()
        self._use_cache = clip_bytes * len(self.data.indices) <= CACHE_BYTES
        self.gflops = self._count_gflops()

    def _find_router(self) -> bool:
        found = has_moe_router(self.model, self.entry.routers, self.entry.experts)
        if not found:
            logger.info("model %s has no router: routing metrics are null", self.entry.label)
        return found

    def _count_gflops(self) -> Optional[float]:
        try:
            return count_gflops(self.model, self.clip_shape)
        except Exception as error:  # an exotic model may not run under FlopCounterMode
            logger.warning("GFLOPs of %s could not be counted: %s", self.entry.label, error)
            return None

    @property
    def num_batches(self) -> int:
        return -(-len(self.data.indices) // self.batch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[List[MoELayerRecord]]]:
        return recorded_forward(self.model, x, self.has_router, self.entry.routers, self.entry.experts)

    def batch(self, index: int) -> _Batch:
        """Batch ``index``: its clips, labels and clean forward pass."""
        if index in self._cache:
            return self._cache[index]

        positions = self.data.indices[index * self.batch_size:(index + 1) * self.batch_size]
        # NOTE: VideoFolder replaces a video that fails to decode only here (after its header
        # probe passed) with the next readable one, so that clip is counted twice; the skip
        # is still listed in the report.
        items = [self.data.dataset[position] for position in positions]
        x = torch.stack([clip for clip, _ in items]).to(self.context.device)
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.long, device=self.context.device)
        logits, layers = self.forward(x)
        if int(labels.max()) >= logits.shape[1]:
            raise ValueError(
                f"the data of model {self.entry.label!r} has label {int(labels.max())}, but the model outputs "
                f"{logits.shape[1]} classes: choose data with matching classes (num_classes for synthetic data)."
            )

        batch = _Batch(x, labels, logits, layers)
        if self._use_cache:
            self._cache[index] = batch
        return batch


# -- cells ------------------------------------------------------------------------------------


@dataclass
class CellPlan:
    """One cell to run or reuse."""

    id: str
    kind: str
    attack: str
    eps: float
    steps: int
    seed: int
    config_hash: str
    batches: List[int]


def _plan_cells(run: ModelRun, config: BenchConfig) -> List[CellPlan]:
    label = run.entry.label
    plans = []
    for attack in config.attacks:
        budgets = [("cell", eps) for eps in config.eps]
        if 0 not in config.eps:
            budgets.insert(0, ("eps0_check", 0.0))

        for kind, eps in budgets:
            identifier = cell_id(label, attack, "eps0-check" if kind == "eps0_check" else eps)
            batches = list(range(run.num_batches))
            steps = config.steps
            if kind == "eps0_check":
                # At eps 0 every step must return the clean clip, so one step on the first
                # batch tests the guard at a fraction of a cell's cost.
                batches, steps = [0], min(config.steps, 1)
            payload = {
                "schema_version": CELL_SCHEMA_VERSION,
                "library_version": __version__,
                "kind": kind,
                "attack": attack,
                "eps": eps,
                "steps": steps,
                "batch_size": config.batch_size,
                "limit": config.limit,
                "seed": config.seed,
                "attack_kwargs": config.attack_kwargs.get(attack, {}),
                **run.fingerprint,
            }
            seed = derive_seed(config.seed, label, attack, eps)
            plans.append(CellPlan(identifier, kind, attack, eps, steps, seed, config_hash(payload), batches))
    return plans


def _run_batches(run: ModelRun, plan: CellPlan, config: BenchConfig) -> Tuple[List[Tuple[int, Dict]], Optional[str]]:
    """Attack this process's share of a cell's batches; returns per-batch sums or an error."""
    results = []
    eps = plan.eps / 255
    device = run.context.device
    fork_devices = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]

    for index in plan.batches[run.context.rank::run.context.world_size]:
        batch = run.batch(index)
        batch_seed = derive_seed(plan.seed, index)
        try:
            attack = build_attack(
                plan.attack, run.model, eps, plan.steps, batch_seed, config.attack_kwargs.get(plan.attack),
                run.entry.routers, run.entry.experts,
            )
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(batch_seed)
                start = time.perf_counter()
                adv = attack(batch.x, batch.labels)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - start
        except Exception as error:  # one failing attack must not end the whole benchmark
            logger.exception("cell %s failed on batch %d", plan.id, index)
            return results, f"{type(error).__name__}: {error}"

        forward, backward = clip_passes(attack, batch.x.shape[0])
        adv_logits, adv_layers = run.forward(adv)
        stats = batch_stats(
            batch.x, adv, batch.labels, batch.logits, adv_logits, eps,
            batch.layers, adv_layers, forward, backward, seconds,
        )
        results.append((index, stats.to_dict()))
    return results, None


def _base_record(run: ModelRun, plan: CellPlan, config: BenchConfig) -> Dict[str, Any]:
    return {
        "schema_version": CELL_SCHEMA_VERSION,
        "id": plan.id,
        "kind": plan.kind,
        "model": run.entry.label,
        "attack": plan.attack,
        "eps": plan.eps,
        "steps": plan.steps,
        "seed": plan.seed,
        "config_hash": plan.config_hash,
        "gflops_per_clip": run.gflops,
    }


def _compute_cell(run: ModelRun, plan: CellPlan, config: BenchConfig) -> Optional[Dict[str, Any]]:
    """Compute one cell on every process; returns the record on rank 0, None elsewhere."""
    record = _base_record(run, plan, config)
    if attack_uses_router(plan.attack) and not run.has_router:
        record.update(status="not_applicable", reason=f"{plan.attack} attacks the router, and the model has none")
        return record if run.context.is_main else None

    batches, error = _run_batches(run, plan, config)
    gathered = run.context.gather({"batches": batches, "error": error})
    if not run.context.is_main:
        return None

    errors = [part["error"] for part in gathered if part["error"]]
    if errors:
        record.update(status="error", reason=errors[0])
        return record

    ordered = sorted((index, values) for part in gathered for index, values in part["batches"])
    total = combine(BatchStats.from_dict(values) for _, values in ordered)
    record.update(status="ok", reason=None, **cell_metrics(total, run.has_router), counts=total.to_dict())
    return record


def _reusable(path: Path, plan: CellPlan, force: bool) -> Optional[Dict[str, Any]]:
    if force:
        return None
    record = _read_json(path)
    if record is None or record.get("config_hash") != plan.config_hash:
        return None
    if record.get("status") not in ("ok", "not_applicable"):
        return None
    return record


# -- the run ----------------------------------------------------------------------------------


def _package_versions() -> Dict[str, Optional[str]]:
    versions = {}
    for name in ("torch", "torchvision", "torchattacks", "adversarial-robustness-toolbox", "av", "numpy",
                 "matplotlib", "safetensors", "tqdm"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _machine(context: Context) -> Dict[str, Any]:
    device = context.device
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": context.world_size,
    }


def _stop_after() -> Optional[int]:
    value = os.environ.get(STOP_AFTER_CELLS_ENV)
    if value is None or value == "":
        return None
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{STOP_AFTER_CELLS_ENV}={value!r} is invalid: set it to an int of at least 1, or unset it.") from None
    if count < 1:
        raise ValueError(f"{STOP_AFTER_CELLS_ENV}={value!r} is invalid: set it to an int of at least 1, or unset it.")
    return count


def run_benchmark(config: BenchConfig, progress: bool = False) -> Optional[Dict[str, Any]]:
    """Run every cell of ``config`` and write the output folder.

    Args:
        config: a resolved configuration (``config.resolve_config``).
        progress: show a tqdm progress bar over the cells (rank 0 only). Default False.

    Returns:
        The content of ``results.json`` on rank 0, None on the other ranks.

    Raises:
        FileNotFoundError: a checkpoint, data folder or split file is missing.
        ValueError: a model or data set cannot be built.
        BenchInterrupted: the testing hook ``TLGA_BENCH_STOP_AFTER_CELLS`` stopped the run.

    Example:
        >>> config = resolve_config({"model": "my_models:tiny", "attacks": "pgd,j-tlga", "eps": "4,8"})
        >>> results = run_benchmark(config)
        >>> results["records"][0]["robust_accuracy"]
    """
    from .report import write_outputs

    validate_paths(config)
    stop_after = _stop_after()
    context = init_context(config.device)
    try:
        return _run(config, context, progress, stop_after, write_outputs)
    finally:
        context.close()


def _run(config, context, progress, stop_after, write_outputs) -> Optional[Dict[str, Any]]:
    out = Path(config.out)
    cells_dir = out / "cells"
    if context.is_main:
        cells_dir.mkdir(parents=True, exist_ok=True)
    context.barrier()

    run_info: Dict[str, Any] = {
        "schema_version": CELL_SCHEMA_VERSION,
        "library": {"name": "tlga-attacks", "version": __version__},
        "packages": _package_versions(),
        "machine": _machine(context),
        "config": config.to_dict(),
        "cells": [],
        "datasets": {},
    }
    checks_per_model = len(config.attacks) if 0 not in config.eps else 0
    total_cells = len(config.models) * (len(config.attacks) * len(config.eps) + checks_per_model)
    bar = tqdm(total=total_cells, desc="tlga-bench", unit="cell", disable=not (progress and context.is_main))
    computed = 0
    records: List[Dict[str, Any]] = []

    try:
        for entry in config.models:
            logger.info("loading model %s (%s)", entry.label, entry.model)
            run = ModelRun(entry, config, context)
            plans = _plan_cells(run, config)

            skipped = context.gather(run.data.skipped)
            run_info["datasets"][entry.label] = {
                **run.data.description,
                "clips": len(run.data.indices),
                "clip_shape": list(run.clip_shape),
                "has_router": run.has_router,
                "gflops_per_clip": run.gflops,
                "skipped": sorted({tuple(item) for part in skipped for item in part}),
            }
            run_info["cells"].extend(plan.id for plan in plans)
            if context.is_main:
                write_json_atomic(out / "run.json", run_info)

            reuse = [_reusable(cells_dir / f"{plan.id}.json", plan, config.force) if context.is_main else None for plan in plans]
            reuse = context.broadcast(reuse)

            for plan, reused in zip(plans, reuse):
                bar.set_postfix_str(plan.id)
                if reused is not None:
                    logger.info("cell %s: reusing the finished result", plan.id)
                    records.append(reused)
                    bar.update(1)
                    continue

                logger.info("cell %s: running %s at eps %g/255 on %d clips", plan.id, plan.attack, plan.eps,
                            len(run.data.indices))
                record = _compute_cell(run, plan, config)
                if context.is_main:
                    write_json_atomic(cells_dir / f"{plan.id}.json", record)
                    records.append(record)
                    if record["status"] == "error":
                        logger.error("cell %s failed: %s", plan.id, record["reason"])
                context.barrier()
                bar.update(1)

                computed += 1
                if stop_after is not None and computed >= stop_after:
                    raise BenchInterrupted(
                        f"stopped after {computed} cells because {STOP_AFTER_CELLS_ENV}={stop_after}; "
                        "run the same command again to finish"
                    )

            # The data set may have skipped more videos while the cells loaded clips.
            skipped = context.gather(run.data.skipped)
            run_info["datasets"][entry.label]["skipped"] = sorted({tuple(item) for part in skipped for item in part})
    finally:
        bar.close()

    if not context.is_main:
        return None
    return write_outputs(out, run_info, records)


# -- one video file ---------------------------------------------------------------------------


@dataclass
class VideoAttackResult:
    """Outcome of ``attack_video``.

    Attributes:
        output: the written adversarial video file.
        label: the label the attack moved away from (given, or the clean prediction).
        clean_prediction, adversarial_prediction, decoded_prediction: predicted classes of
            the clean clip, of the adversarial clip as written (uint8 levels), and of the
            written file decoded again.
        clean_experts, adversarial_experts, decoded_experts: per MoE layer, the top-1 expert
            of each routing unit; empty lists for a model without a router.
        max_linf: L-infinity norm of the written perturbation, in pixel units.
        pixel_difference: largest difference between the written clip and the decoded file.
        round_trip_ok: the decoded file gets the adversarial prediction.
    """

    output: Path
    label: int
    clean_prediction: int
    adversarial_prediction: int
    decoded_prediction: int
    clean_experts: List[List[int]]
    adversarial_experts: List[List[int]]
    decoded_experts: List[List[int]]
    max_linf: float
    pixel_difference: float

    @property
    def fooled(self) -> bool:
        return self.adversarial_prediction != self.label

    @property
    def round_trip_ok(self) -> bool:
        return self.decoded_prediction == self.adversarial_prediction


def quantize_to_eps_ball(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Round a clip to the 256 levels of an 8-bit video while staying in the eps-ball of ``x``.

    Each value goes to the nearest level k/255 that lies within ``eps`` of ``x`` (and in
    [0, 1]), so a lossless 8-bit file stores the returned clip exactly.
    """
    # The allowance of 1e-6 levels absorbs float32 rounding of x values that are levels.
    levels = torch.round(adv.double() * 255)
    lowest = torch.ceil((x.double() - eps) * 255 - 1e-6).clamp(min=0)
    highest = torch.floor((x.double() + eps) * 255 + 1e-6).clamp(max=255)
    return (torch.minimum(torch.maximum(levels, lowest), highest) / 255).to(adv.dtype)


def _top1_experts(layers: Optional[List[MoELayerRecord]]) -> List[List[int]]:
    if not layers:
        return []
    return [layer.router_logits[0].argmax(dim=-1).tolist() for layer in layers]


def attack_video(
    video: str,
    entry: ModelEntry,
    output: str,
    attack: str = "j-tlga",
    eps: float = 8.0,
    steps: int = 10,
    seed: int = 0,
    label: Optional[int] = None,
    device: str = "auto",
    attack_kwargs: Optional[Dict[str, Any]] = None,
) -> VideoAttackResult:
    """Attack one video file end to end and check the written file.

    The steps: decode ``video`` with ``read_video``, attack the clip, and round it to 8-bit
    levels inside the eps-ball. Then write it losslessly with ``write_video``, decode the
    written file again and classify it. The check passes when the decoded file gets the
    same prediction as the adversarial clip.

    Args:
        video: input video file.
        entry: the model (``model``, ``checkpoint``, ``num_frames``, ``size``).
        output: output file; ``.mkv`` or ``.avi`` for lossless FFV1.
        attack: attack name from ``ATTACK_NAMES``. Default ``"j-tlga"``.
        eps: budget in units of 1/255. Default 8.
        steps: attack iterations. Default 10.
        seed: seed of the random start. Default 0.
        label: true class; default None uses the clean prediction.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Default ``"auto"``.
        attack_kwargs: extra keyword arguments of the attack. Default None.

    Returns:
        A ``VideoAttackResult``.

    Raises:
        FileNotFoundError: the video, the checkpoint or the output folder does not exist.
        ValueError: the video cannot be decoded, or an argument is invalid.

    Example:
        >>> result = attack_video("clip.mkv", ModelEntry("moe-synthetic-atm"), "clip_adv.mkv")
        >>> result.round_trip_ok
        True
    """
    from ..data.io import read_video, write_video

    context_device = _resolve_device(device, 0)
    model, card = load_model(entry, context_device)
    num_frames = entry.num_frames or _card_value(card, "num_frames") or DEFAULT_NUM_FRAMES
    size = entry.size or _card_value(card, "size") or DEFAULT_SIZE
    has_router = has_moe_router(model, entry.routers, entry.experts)

    def forward(clip: torch.Tensor):
        return recorded_forward(model, clip, has_router, entry.routers, entry.experts)

    # Decode and classify the clean clip.
    x = read_video(video, num_frames, size).unsqueeze(0).to(context_device)
    clean_logits, clean_layers = forward(x)
    clean_prediction = int(clean_logits.argmax(dim=1))
    if label is None:
        label = clean_prediction
    num_classes = clean_logits.shape[1]
    if not 0 <= label < num_classes:
        raise ValueError(f"label={label} is invalid: the model has {num_classes} classes, pass 0 to {num_classes - 1}.")

    # Attack, then round to the levels that an 8-bit file can store.
    atk = build_attack(attack, model, eps / 255, steps, seed, attack_kwargs, entry.routers, entry.experts)
    labels = torch.tensor([label], device=context_device)
    with torch.random.fork_rng(devices=[context_device.index or 0] if context_device.type == "cuda" else []):
        torch.manual_seed(seed)
        adv = atk(x, labels)
    adv = quantize_to_eps_ball(adv, x, eps / 255)
    adv_logits, adv_layers = forward(adv)

    # Write losslessly, decode again and classify the decoded clip.
    path = write_video(output, adv[0].cpu())
    decoded = read_video(path, num_frames, size).unsqueeze(0).to(context_device)
    decoded_logits, decoded_layers = forward(decoded)

    result = VideoAttackResult(
        output=Path(path),
        label=label,
        clean_prediction=clean_prediction,
        adversarial_prediction=int(adv_logits.argmax(dim=1)),
        decoded_prediction=int(decoded_logits.argmax(dim=1)),
        clean_experts=_top1_experts(clean_layers),
        adversarial_experts=_top1_experts(adv_layers),
        decoded_experts=_top1_experts(decoded_layers),
        max_linf=float((adv - x).abs().max()),
        pixel_difference=float((decoded - adv).abs().max()),
    )
    logger.info("attacked %s with %s at eps %g/255: %s", video, attack, eps, result)
    return result

