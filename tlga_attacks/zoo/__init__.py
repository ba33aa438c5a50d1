"""Bundled trained checkpoints of the reference models, loaded without any download.

=======================  =====================================================================
name                     model
=======================  =====================================================================
``moe-synthetic``        tiny3d ``VideoMoE`` (4 experts, top-1) on ``SyntheticActions``,
                         standard training
``moe-synthetic-atm``    ``moe-synthetic`` fine-tuned with PGD adversarial training (ATM)
``dense-synthetic-atd``  the dense counterpart ``DenseVideoMoE``, started from the weights of
                         ``moe-synthetic`` and fine-tuned with PGD adversarial training (ATD)
``moe-footage``          tiny3d ``VideoMoE`` on ``FootageSpeed``, standard training
=======================  =====================================================================

Each checkpoint is ``<name>.safetensors`` with a model card ``<name>.json`` in this package.
The card records the architecture in ``card["model"]`` (the arguments of ``build_model``) and
the data set in ``card["data"]`` (``num_frames``, ``size``, ``num_classes``, ``data_seed`` and
clip counts). It also records the training settings, the accuracies measured on the test split
after training, the command that trained the model and the training time. :func:`card`
returns the card without loading the weights. ``benchmarks/train_zoo.py`` retrains these four.

Measured on the test splits: ``moe-synthetic`` 94.0% clean, ``moe-synthetic-atm`` 82.0%
clean and 30.0% under PGD-10 at 8/255, ``dense-synthetic-atd`` 83.5% and 26.8%.
``benchmarks/RESULTS.md`` has the commands, times and machine.

NOTE: ``moe-footage`` reached only 18.8% test accuracy (chance is 16.7%), because the model
memorizes its training windows of ``FootageSpeed``. Attacks on it measure little.

Other scripts may add checkpoints here in the same format, for example the defense
checkpoints of ``benchmarks/train_defense.py``.

Example:
    >>> from tlga_attacks import zoo
    >>> model, card = zoo.load("moe-synthetic-atm")
    >>> card["data"]["num_frames"], card["method"]
    (8, 'atm')
"""

import logging
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from tlga_attacks.training.checkpoint import file_sha256, load_model, read_card

logger = logging.getLogger(__name__)

ZOO_FOLDER = Path(__file__).resolve().parent


def names() -> Tuple[str, ...]:
    """Return the sorted names of the bundled checkpoints (those with weights and a card)."""
    return tuple(sorted(path.stem for path in ZOO_FOLDER.glob("*.json") if path.with_suffix(".safetensors").is_file()))


def card(name: str) -> Dict[str, Any]:
    """Return the model card of a bundled checkpoint without loading its weights.

    Raises:
        ValueError: ``name`` is not a bundled checkpoint.
    """
    _check_name(name)
    return read_card(ZOO_FOLDER / f"{name}.json")


def _check_name(name: str) -> None:
    available = names()
    if name not in available:
        raise ValueError(f"name={name!r} is not a bundled checkpoint: pass one of {', '.join(available)}.")


def load(name: str, device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a bundled checkpoint and its model card.

    The model is rebuilt with ``build_model(**card["model"])``, its weights are read with
    safetensors, and it is returned in eval mode on ``device``.

    Args:
        name: one of :func:`names`, for example ``"moe-synthetic"``.
        device: where to put the model. Default ``"cpu"``.

    Returns:
        ``(model, card)``. The model maps clips (N, 3, T, H, W) in [0, 1], with T, H and W
        from ``card["data"]``, to logits (N, K).

    Raises:
        ValueError: ``name`` is not a bundled checkpoint, or the weights do not match the
            SHA-256 digest in the card.

    Example:
        >>> model, card = load("moe-synthetic")
        >>> frames, size = card["data"]["num_frames"], card["data"]["size"]
        >>> model(torch.rand(2, 3, frames, size, size)).shape  # doctest: +SKIP
        torch.Size([2, 8])
    """
    _check_name(name)
    weights = ZOO_FOLDER / f"{name}.safetensors"
    model_card = read_card(ZOO_FOLDER / f"{name}.json")

    expected_digest = model_card.get("sha256")
    if expected_digest is not None and file_sha256(weights) != expected_digest:
        raise ValueError(
            f"the weights of {name!r} ({weights}) do not match the SHA-256 digest in its card: "
            "the package files are damaged or mixed up. Reinstall tlga-attacks or retrain with "
            "benchmarks/train_zoo.py."
        )

    model, model_card = load_model(weights, model_card, device=device)
    logger.debug("loaded %s from %s", name, weights)
    return model, model_card
