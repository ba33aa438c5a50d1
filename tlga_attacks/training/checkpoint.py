"""Saving and loading trained models, their model cards and resumable training state.

A finished run writes three files into its output folder:

* ``model.safetensors``: the state dict in the safetensors format.
* ``model.pt``: the same state dict saved with ``torch.save``, which loads with
  ``torch.load(path, weights_only=True)``.
* ``card.json``: the model card. ``card["model"]`` is the model's ``config``, so
  ``build_model(**card["model"])`` rebuilds the architecture, and the other fields record
  data, method, attack settings, accuracies, command, versions and training time.

During training, ``checkpoint.pt`` stores the state after the last finished epoch (model,
optimizer, random number generator states, history), which is what a resumed run reads. It
also loads with ``weights_only=True``. Every file is written to a temporary file in the same
folder, flushed to disk and moved into place with ``os.replace``, so an interrupted write
leaves the previous version intact.
"""

import hashlib
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tlga_attacks.models import build_model

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

WEIGHTS_FILE = "model.safetensors"
STATE_DICT_FILE = "model.pt"
CARD_FILE = "card.json"
TRAINING_STATE_FILE = "checkpoint.pt"

CARD_FORMAT_VERSION = 1


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Write a file so that readers see either the old or the complete new version.

    ``write(temporary_path)`` writes the content to a temporary file in the folder of
    ``path``. The temporary file is then flushed to disk and renamed onto ``path`` with
    ``os.replace``. On an error the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)

    try:
        write(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def file_sha256(path: PathLike) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Return the model's state dict as contiguous CPU tensors that share no memory."""
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}


def save_model(folder: PathLike, model: nn.Module, card: Dict[str, Any]) -> Dict[str, Path]:
    """Write ``model.safetensors``, ``model.pt`` and ``card.json`` into ``folder``.

    The card is written last and gains ``files`` (the two weight file names) and ``sha256``
    (digest of ``model.safetensors``), so a complete card always points to complete weights.

    Args:
        folder: output folder, created if missing.
        model: the trained model, unwrapped (not ``DistributedDataParallel``).
        card: JSON-serializable model card. It must contain ``"model"``, the model's
            ``config``.

    Returns:
        A dict with the paths under the keys ``"safetensors"``, ``"state_dict"`` and
        ``"card"``.
    """
    folder = Path(folder)
    state_dict = cpu_state_dict(model)
    paths = {
        "safetensors": folder / WEIGHTS_FILE,
        "state_dict": folder / STATE_DICT_FILE,
        "card": folder / CARD_FILE,
    }

    atomic_write(paths["safetensors"], lambda temporary: save_file(state_dict, temporary))
    atomic_write(paths["state_dict"], lambda temporary: torch.save(state_dict, temporary))

    card = dict(card)
    card["files"] = {"safetensors": WEIGHTS_FILE, "state_dict": STATE_DICT_FILE}
    card["sha256"] = file_sha256(paths["safetensors"])
    write_card(paths["card"], card)

    logger.info("saved model and card to %s", folder)
    return paths


def write_card(path: PathLike, card: Dict[str, Any]) -> None:
    """Write a model card as indented JSON, atomically."""
    text = json.dumps(card, indent=2, sort_keys=False) + "\n"

    def write(temporary: str) -> None:
        Path(temporary).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def read_card(path: PathLike) -> Dict[str, Any]:
    """Read a model card.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON object with a ``"model"`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model card not found: {str(path)!r}. Pass the card.json written by tlga-train.")

    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"model card {str(path)!r} is not valid JSON: {error}.") from error

    if not isinstance(card, dict) or not isinstance(card.get("model"), dict):
        raise ValueError(
            f"model card {str(path)!r} has no 'model' object with the architecture arguments. "
            "pass a card.json written by tlga-train."
        )
    return card


def read_weights(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or from a ``torch.save`` file, onto the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file does not contain a mapping from names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {str(path)!r}.")

    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"weights {str(path)!r} could not be read with torch.load(weights_only=True): {error}") from error
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"weights {str(path)!r} do not contain a state dict (a mapping from names to tensors).")
    return state_dict


def load_model(
    weights: PathLike,
    card: Union[PathLike, Dict[str, Any]],
    device: Union[str, torch.device] = "cpu",
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a trained model from its weights and model card.

    Args:
        weights: ``model.safetensors`` or ``model.pt``.
        card: the card dict, or the path of its ``card.json``.
        device: where to put the model. Default ``"cpu"``.

    Returns:
        ``(model, card)``, the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: the card or the weights are invalid, or the weights do not fit the
            architecture of the card.

    Example:
        >>> model, card = load_model("runs/moe/model.safetensors", "runs/moe/card.json")
        >>> card["clean_accuracy"]  # doctest: +SKIP
        0.93
    """
    if not isinstance(card, dict):
        card = read_card(card)

    model = build_model(**card["model"])
    state_dict = read_weights(weights)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"weights {str(weights)!r} do not fit the architecture of the card ({card['model']}): {error}"
        ) from error

    return model.to(device).eval(), card


def save_training_state(path: PathLike, state: Dict[str, Any]) -> None:
    """Save a resumable training state with ``torch.save``, atomically.

    ``state`` may contain only what ``torch.load(weights_only=True)`` reads back: tensors,
    numbers, strings, None, and lists, tuples and dicts of those.
    """
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def load_training_state(path: PathLike) -> Dict[str, Any]:
    """Load a training state written by :func:`save_training_state`, onto the CPU.

    Raises:
        ValueError: the file cannot be read, for example because it is damaged.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"training checkpoint {str(path)!r} could not be read: {error}. "
            "Delete it to start the run from scratch, or pass another --out folder."
        ) from error
