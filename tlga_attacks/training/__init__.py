"""Training of the reference video models: standard and adversarial methods, checkpoints, cards.

* :func:`train` with a :class:`TrainConfig` runs one training job on one process or under
  ``torchrun`` (``DistributedDataParallel``), resumes after interruptions, and saves
  ``model.safetensors``, ``model.pt`` and ``card.json``. The CLI is ``tlga-train``.
* ``METHODS`` maps method names (``standard``, ``atm``, ``atd``) to :class:`TrainingMethod`
  objects. Adding a method means adding one entry (see ``tlga_attacks.training.methods``).
* :func:`load_model` rebuilds a trained model from its weights and card.

Example:
    >>> from tlga_attacks.training import TrainConfig, train
    >>> card = train(TrainConfig(out="runs/moe", method="atm", epochs=5))  # doctest: +SKIP
    >>> card["clean_accuracy"], card["robust_accuracy"]  # doctest: +SKIP
"""

from .checkpoint import load_model, read_card, read_weights, save_model
from .methods import METHODS, StepContext, StepOutput, TrainingMethod, moe_aux_loss, task_loss
from .trainer import InterruptedForTesting, TrainConfig, evaluate, train

__all__ = [
    "METHODS",
    "InterruptedForTesting",
    "StepContext",
    "StepOutput",
    "TrainConfig",
    "TrainingMethod",
    "evaluate",
    "load_model",
    "moe_aux_loss",
    "read_card",
    "read_weights",
    "save_model",
    "task_loss",
    "train",
]
