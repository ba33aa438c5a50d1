"""Benchmark configuration: attack names, the embedded default, JSON config files and seeds.

A configuration is built in three layers, each overriding the one before: the embedded
default (``default.json`` in this package), an optional JSON file (``--config``) and the
command-line flags. Every layer uses the same keys:

* run keys: ``attacks``, ``eps`` (in units of 1/255), ``steps``, ``batch_size``, ``limit``,
  ``seed``, ``out``, ``force``, ``device``, ``attack_kwargs``;
* ``models``: a list of model entries, each with its data (see ``ModelEntry``);
* model keys at the top level (``model``, ``checkpoint``, ``data``, ``split``, ...). A layer
  that sets ``model`` replaces the list of models with that single entry. A layer that sets
  other model keys without ``model`` applies them to every model entry.

Every key replaces the value of the layer below, except ``attack_kwargs``, which is merged
per attack name. The embedded default sizes the full benchmark (two models, 15 attacks,
4 budgets) to finish within 15 minutes on 2 CPU cores (6 minutes measured). It uses 100 clips
per model and 5 steps.
Square (alone and inside AutoAttack) gets 50 queries, and APGD-T (alone and inside
AutoAttack) 3 target classes. Raise these for a full evaluation.

Example file::

    {"models": [{"model": "my_models:build_moe", "checkpoint": "moe.pt",
                 "data": "UCF-101", "split": "ucfTrainTestlist/testlist01.txt",
                 "num_frames": 16, "size": 112}],
     "attacks": "pgd,j-tlga", "eps": [4, 8], "steps": 10, "limit": 200}
"""

import copy
import hashlib
import json
import logging
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

logger = logging.getLogger(__name__)

__all__ = [
    "ATTACK_NAMES",
    "BASELINE_ATTACKS",
    "BenchConfig",
    "DATA_SOURCES",
    "LIBRARY_ATTACKS",
    "ModelEntry",
    "cell_id",
    "config_hash",
    "derive_seed",
    "file_sha256",
    "format_eps",
    "load_default_config",
    "parse_attacks",
    "parse_eps",
    "read_config_file",
    "resolve_config",
    "validate_paths",
]

# Baselines come from the registry ``tlga_attacks.baselines.BASELINES``.
BASELINE_ATTACKS = ("fgsm", "pgd", "autoattack", "apgd-ce", "apgd-t", "fab", "square", "tt")

# Attacks of this library, by benchmark name, as class names in ``tlga_attacks.attacks``.
LIBRARY_ATTACKS = {
    "pgd-r": "PGDR",
    "tla-r": "TLAR",
    "tlga-r": "TLGAR",
    "tla-e": "TLAE",
    "tla-m": "TLAM",
    "j-tla": "JTLA",
    "j-tlga": "JTLGA",
}

ATTACK_NAMES = BASELINE_ATTACKS + tuple(LIBRARY_ATTACKS)

# Data sources with a name; any other ``data`` value is a folder in the UCF-101 layout.
DATA_SOURCES = ("synthetic", "footage")

MODEL_KEYS = (
    "model",
    "checkpoint",
    "model_kwargs",
    "name",
    "data",
    "split",
    "num_frames",
    "size",
    "num_classes",
    "num_clips",
    "data_seed",
    "routers",
    "experts",
)
RUN_KEYS = (
    "models",
    "attacks",
    "eps",
    "steps",
    "batch_size",
    "limit",
    "seed",
    "out",
    "force",
    "device",
    "attack_kwargs",
)

MAX_EPS = 255.0
NAME_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ModelEntry:
    """One model of a benchmark and the data it is evaluated on.

    Attributes:
        model: a bundled checkpoint name (resolved by ``tlga_attacks.zoo.load``) or
            ``"module:factory"``, a callable that returns an ``nn.Module``.
        checkpoint: state dict to load into the model (``torch.load`` with
            ``weights_only=True``, or a ``.safetensors`` file). Default None.
        model_kwargs: keyword arguments of the factory. Default {}.
        name: label of the model in file names and tables. Default: derived from ``model``.
        data: ``"synthetic"``, ``"footage"`` or a folder with one subfolder per class.
        split: split name (``"test"``) for ``synthetic`` and ``footage``. For a folder it
            is a UCF-101 list file, or a folder of split files whose test split (fold 1)
            is used.
        num_frames, size: clip shape T and H x W (an int or ``[height, width]``). Default:
            the model card's values for a bundled model, else 16 and 32.
        num_classes: classes of the synthetic data. Default: the model card's, else 8.
        num_clips: clips of the synthetic or footage data set; the first ``limit`` of them
            are used. Default: the ``limit``, else 400 synthetic clips or the footage
            data set's default.
        data_seed: seed of the synthetic data. Default: the model card's, else 0.
        routers, experts: module paths of the MoE routers and experts, for models whose
            routers the hooks do not find by themselves. Default None.
    """

    model: str
    checkpoint: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    data: str = "synthetic"
    split: Optional[str] = None
    num_frames: Optional[int] = None
    size: Optional[Union[int, List[int]]] = None
    num_classes: Optional[int] = None
    num_clips: Optional[int] = None
    data_seed: Optional[int] = None
    routers: Optional[List[str]] = None
    experts: Optional[List[Any]] = None

    @property
    def is_zoo(self) -> bool:
        return ":" not in self.model

    @property
    def label(self) -> str:
        """The model's name in file names, tables and plots."""
        if self.name:
            return NAME_PATTERN.sub("-", self.name)
        if self.is_zoo:
            base = self.model
        else:
            base = self.model.rsplit(":", 1)[1]
            if self.checkpoint:
                base = f"{base}-{Path(self.checkpoint).stem}"
        return NAME_PATTERN.sub("-", base)


@dataclass
class BenchConfig:
    """A resolved benchmark configuration; see the module docstring for the keys.

    Attributes:
        models: the model entries.
        attacks: attack names from ``ATTACK_NAMES``.
        eps: budgets in units of 1/255, ascending.
        steps: attack iterations.
        batch_size: clips per attack call.
        limit: clips per model, or None for the whole split.
        seed: base seed; every cell derives its own from it.
        out: output folder.
        force: recompute cells that are already finished.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        attack_kwargs: per attack name, extra keyword arguments of the attack.
    """

    models: List[ModelEntry]
    attacks: List[str]
    eps: List[float]
    steps: int
    batch_size: int
    limit: Optional[int]
    seed: int
    out: str
    force: bool = False
    device: str = "auto"
    attack_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# -- parsing of single values -----------------------------------------------------------------


def parse_attacks(value: Union[str, Sequence[str]]) -> List[str]:
    """Parse attack names from a comma-separated string or a list, keeping their order.

    Raises:
        ValueError: an unknown or empty name; the message lists the allowed names.

    Example:
        >>> parse_attacks("pgd, J-TLGA")
        ['pgd', 'j-tlga']
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"attacks={value!r} is invalid: pass a comma-separated string or a list of names.")

    names: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"attacks={value!r} is invalid: every attack name must be a string, got {item!r}.")
        name = item.strip().lower()
        if name not in ATTACK_NAMES:
            raise ValueError(
                f"attack {item!r} is unknown: pass a comma-separated list of {', '.join(ATTACK_NAMES)}."
            )
        if name not in names:
            names.append(name)

    if not names:
        raise ValueError(f"attacks={value!r} names no attack: pass at least one of {', '.join(ATTACK_NAMES)}.")
    return names


def parse_eps(value: Union[str, float, Sequence[float]]) -> List[float]:
    """Parse L-infinity budgets in units of 1/255 from a comma-separated string or a list.

    Returns the distinct values in ascending order.

    Raises:
        ValueError: a value that is not a finite number from 0 to 255.

    Example:
        >>> parse_eps("8,4")
        [4.0, 8.0]
    """
    if isinstance(value, str):
        items: Sequence[Any] = [item for item in value.split(",")]
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"eps={value!r} is invalid: pass numbers in units of 1/255, for example '8,10,12'.")

    budgets: List[float] = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise TypeError
            budget = float(item.strip()) if isinstance(item, str) else float(item)
        except (TypeError, ValueError):
            raise ValueError(
                f"eps value {item!r} is not a number: pass budgets in units of 1/255 from 0 to {MAX_EPS:g}, "
                "for example '8,10,12'."
            ) from None
        if not math.isfinite(budget) or not 0.0 <= budget <= MAX_EPS:
            raise ValueError(
                f"eps value {item!r} is out of range: pass budgets in units of 1/255 from 0 to {MAX_EPS:g}, "
                "for example '8,10,12'."
            )
        budgets.append(budget)

    if not budgets:
        raise ValueError(f"eps={value!r} names no budget: pass at least one, for example '8'.")
    return sorted(set(budgets))


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        hint = " or null" if allow_none else ""
        raise ValueError(f"{name}={value!r} is invalid: pass an int of at least {low}{hint}.")
    return int(value)


def _check_size(value: Any) -> Optional[Union[int, List[int]]]:
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return [int(v) for v in value]
    raise ValueError(f"size={value!r} is invalid: pass an int for square frames or [height, width].")


def format_eps(eps: float) -> str:
    """Format a budget in units of 1/255 for file names and tables: 8.0 -> '8', 0.5 -> '0.5'."""
    return f"{eps:g}"


def cell_id(model: str, attack: str, eps: Union[float, str]) -> str:
    """Name of a cell file (without suffix): ``<model>__<attack>__<eps>``."""
    eps_text = eps if isinstance(eps, str) else format_eps(eps)
    return f"{model}__{attack}__{eps_text}"


# -- seeds and hashes -------------------------------------------------------------------------


def derive_seed(*parts: Any) -> int:
    """Derive a seed in [0, 2**31) from any JSON-serializable parts, the same on every machine.

    Example:
        >>> derive_seed(0, "moe", "pgd", 8.0) == derive_seed(0, "moe", "pgd", 8.0)
        True
    """
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def config_hash(payload: Any) -> str:
    """Return the SHA-256 of the canonical JSON of ``payload`` (hex, first 16 digits)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Union[str, Path]) -> str:
    """Return the SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- layers -----------------------------------------------------------------------------------


def load_default_config() -> Dict[str, Any]:
    """Return the embedded default configuration as a dict (a fresh copy)."""
    text = resources.files("tlga_attacks.bench").joinpath("default.json").read_text()
    return json.loads(text)


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a JSON configuration file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON object, or has unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}. Check the path passed to --config.")
    try:
        layer = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}.") from None
    if not isinstance(layer, dict):
        raise ValueError(f"config file {str(path)!r} contains a JSON {type(layer).__name__}: it must contain a JSON object.")
    _check_keys(layer, RUN_KEYS + MODEL_KEYS, f"config file {str(path)!r}")
    return layer


def _check_keys(layer: Dict[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(layer) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}: allowed keys are {', '.join(allowed)}.")


def _apply_layer(merged: Dict[str, Any], layer: Dict[str, Any]) -> None:
    """Apply one configuration layer to ``merged`` in place (see the module docstring)."""
    layer = {key: value for key, value in layer.items() if value is not None or key in ("limit", "checkpoint")}
    model_keys = {key: layer[key] for key in MODEL_KEYS if key in layer}

    if "models" in layer:
        merged["models"] = copy.deepcopy(layer["models"])
    if "model" in model_keys:
        merged["models"] = [model_keys]
    elif model_keys:
        for entry in merged["models"]:
            entry.update(copy.deepcopy(model_keys))

    for key in RUN_KEYS:
        if key in layer and key not in ("models", "attack_kwargs"):
            merged[key] = copy.deepcopy(layer[key])
    if "attack_kwargs" in layer:
        if not isinstance(layer["attack_kwargs"], dict):
            raise ValueError(
                f"attack_kwargs={layer['attack_kwargs']!r} is invalid: pass an object that maps attack names to "
                'keyword arguments, for example {"j-tlga": {"lam": 0.001}}.'
            )
        merged["attack_kwargs"] = {**merged.get("attack_kwargs", {}), **copy.deepcopy(layer["attack_kwargs"])}


def _model_entry(raw: Any, index: int) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"model": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"models[{index}]={raw!r} is invalid: pass an object with at least a 'model' key.")
    _check_keys(raw, MODEL_KEYS, f"models[{index}]")
    if not isinstance(raw.get("model"), str) or not raw["model"].strip():
        raise ValueError(
            f"models[{index}] has model={raw.get('model')!r}: pass a bundled model name or 'module:factory'."
        )
    if ":" in raw["model"]:
        module, _, factory = raw["model"].partition(":")
        if not module or not factory:
            raise ValueError(
                f"model={raw['model']!r} is invalid: write 'module:factory', for example 'my_models:build_moe'."
            )
    if not isinstance(raw.get("model_kwargs", {}), dict):
        raise ValueError(f"model_kwargs={raw['model_kwargs']!r} is invalid: pass a JSON object of keyword arguments.")
    if not isinstance(raw.get("data", "synthetic"), str):
        raise ValueError(f"data={raw['data']!r} is invalid: pass 'synthetic', 'footage' or a folder path.")

    entry = ModelEntry(**raw)
    entry.model = entry.model.strip()
    entry.model_kwargs = dict(entry.model_kwargs or {})
    entry.checkpoint = str(entry.checkpoint) if entry.checkpoint is not None else None
    entry.split = str(entry.split) if entry.split is not None else None
    entry.num_frames = _check_int("num_frames", entry.num_frames, 1, allow_none=True)
    entry.size = _check_size(entry.size)
    entry.num_classes = _check_int("num_classes", entry.num_classes, 2, allow_none=True)
    entry.num_clips = _check_int("num_clips", entry.num_clips, 1, allow_none=True)
    entry.data_seed = _check_int("data_seed", entry.data_seed, 0, allow_none=True)
    return entry


def resolve_config(*layers: Optional[Dict[str, Any]]) -> BenchConfig:
    """Merge configuration layers over the embedded default and validate the result.

    Args:
        *layers: dicts with the keys of a config file, applied in order; None is skipped.

    Returns:
        A validated ``BenchConfig``.

    Raises:
        ValueError: a key or value is invalid; the message names it and what is allowed.

    Example:
        >>> config = resolve_config({"model": "my_models:tiny", "attacks": "pgd", "eps": "8"})
        >>> [entry.model for entry in config.models]
        ['my_models:tiny']
    """
    merged = load_default_config()
    for layer in layers:
        if layer is None:
            continue
        _check_keys(layer, RUN_KEYS + MODEL_KEYS, "configuration")
        _apply_layer(merged, layer)

    if not isinstance(merged.get("models"), list) or not merged["models"]:
        raise ValueError(f"models={merged.get('models')!r} is invalid: pass a non-empty list of model entries.")
    models = [_model_entry(raw, index) for index, raw in enumerate(merged["models"])]
    labels = [entry.label for entry in models]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"model names {duplicates} occur more than once: give each model entry its own 'name'.")

    attacks = parse_attacks(merged["attacks"])
    attack_kwargs = merged.get("attack_kwargs") or {}
    if not isinstance(attack_kwargs, dict) or not all(isinstance(v, dict) for v in attack_kwargs.values()):
        raise ValueError(
            f"attack_kwargs={attack_kwargs!r} is invalid: pass an object that maps attack names to keyword "
            'arguments, for example {"j-tlga": {"lam": 0.001}}.'
        )
    for name in attack_kwargs:
        if name not in ATTACK_NAMES:
            raise ValueError(f"attack_kwargs names attack {name!r}, which is unknown: use one of {', '.join(ATTACK_NAMES)}.")

    device = merged.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device={device!r} is invalid: pass 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if not isinstance(merged.get("out"), str) or not merged["out"]:
        raise ValueError(f"out={merged.get('out')!r} is invalid: pass the path of the output folder.")
    if not isinstance(merged.get("force", False), bool):
        raise ValueError(f"force={merged['force']!r} is invalid: pass true or false.")

    return BenchConfig(
        models=models,
        attacks=attacks,
        eps=parse_eps(merged["eps"]),
        steps=_check_int("steps", merged["steps"], 0),
        batch_size=_check_int("batch_size", merged["batch_size"], 1),
        limit=_check_int("limit", merged.get("limit"), 1, allow_none=True),
        seed=_check_int("seed", merged["seed"], 0),
        out=merged["out"],
        force=merged.get("force", False),
        device=device,
        attack_kwargs={name: dict(kwargs) for name, kwargs in attack_kwargs.items()},
    )


def validate_paths(config: BenchConfig) -> None:
    """Check that every checkpoint, data folder and split file of ``config`` exists.

    Raises:
        FileNotFoundError: naming the missing path and the model entry it belongs to.
    """
    for entry in config.models:
        if entry.checkpoint is not None and not Path(entry.checkpoint).is_file():
            raise FileNotFoundError(
                f"checkpoint not found: {entry.checkpoint!r} (model {entry.label!r}). Pass the path of a "
                "saved state dict (.pt, .pth or .safetensors)."
            )
        if entry.data in DATA_SOURCES:
            continue
        if not Path(entry.data).is_dir():
            raise FileNotFoundError(
                f"data folder not found: {entry.data!r} (model {entry.label!r}). Pass 'synthetic', 'footage' "
                "or a folder with one subfolder of videos per class."
            )
        if entry.split is not None and not Path(entry.split).exists():
            raise FileNotFoundError(
                f"split file not found: {entry.split!r} (model {entry.label!r}). Pass a UCF-101 list file such "
                "as testlist01.txt, a folder of split files, or no split to use every video."
            )
