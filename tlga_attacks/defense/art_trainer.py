"""J-TLAT as an ART ``Trainer`` for a ``PyTorchClassifier`` of videos, on numpy arrays.

The trainer runs ``tlga_attacks.defense.JTLAT`` on an ``AttackInputModel``: the classifier's
torch model behind its input mapping (axis order, ``clip_values`` range and predict-time
preprocessing), the same function that the ART attacks of this library attack. ``eps`` is in
the units of ``x``, as everywhere in ART.
"""

import logging
import numbers
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from art.defences.trainer.trainer import Trainer
from art.estimators.classification import PyTorchClassifier
from torch import nn
from tqdm.auto import tqdm

from ..art.inputs import (
    AttackInputModel,
    EstimatorPreprocessing,
    check_estimator,
    clip_bounds,
    index_labels,
    prefixed_paths,
    video_layout,
)
from ..validation import RANGE_TOLERANCE
from .jtlat import DEFAULT_GROUP_LAM, JTLAT
from .tlat import DEFAULT_ATTACK_STEPS, DEFAULT_MODEL_LAM, check_int

__all__ = ["JTLATTrainer"]

logger = logging.getLogger(__name__)


class JTLATTrainer(Trainer):
    """J-TLAT adversarial training of a video MoE wrapped in an ART ``PyTorchClassifier``.

    Each batch runs the three J-TLAT updates (router on TLA-R examples, weak experts on
    TLGA-R examples, whole model on J-TLGA examples), as ``tlga_attacks.defense.JTLAT``
    describes.
    Update 3 steps the classifier's own optimizer. The router and each expert get optimizers
    of the same class and hyperparameters, unless ``group_optimizer`` builds them. The loss of
    the classifier is not used: every update has its own cross-entropy and Lipschitz loss.

    The training forward passes apply the classifier's predict-time preprocessing (mean/std
    standardisation and PyTorch preprocessing defences with ``apply_predict``), the function
    that the attacks see, rather than the fit-time preprocessing of ``PyTorchClassifier.fit``.

    Arguments:
        classifier (PyTorchClassifier): the video classifier, with ``clip_values``, an
            ``optimizer``, and ``input_shape`` of one video: (C, T, H, W) or (T, C, H, W)
            with ``channels_first=True``, (T, H, W, C) with ``channels_first=False``.
        eps (float): L-infinity radius in the units of x. (Default: 8/255)
        alpha (float): attack step size relative to eps. (Default: 0.5)
        attack_steps (int): iterations of each attack. (Default: 5)
        beta (float): decay of the temporal adaptive step. (Default: 0.9)
        gamma1 (float): weight of the weakest-expert guidance. (Default: 1.0)
        gamma2 (float): weight of the router objective in J-TLGA. (Default: 1.0)
        lam (float): weight of Lip(R) and Lip(E_i) in updates 1 and 2. (Default: 1e-3)
        model_lam (float): weight of Lip(F) in update 3, e.g. 1e-4. (Default: 0.0, see
            ``DEFAULT_MODEL_LAM``)
        attack_lam (float, optional): weight of the Lipschitz terms of the attacks.
            (Default: None, each attack's default)
        expert_top_k (int): experts per clip trained in update 2. (Default: 2)
        aux_weight (float): weight of the MoE load-balancing loss in update 3. (Default: 0.0)
        time_dim (int, optional): 1 for (T, C, H, W) videos with ``channels_first=True``.
            (Default: None, from ``channels_first``)
        routers, experts, top_k: module paths of the MoE layers in ``classifier.model``, for
            MoEs that ``MoEInspector`` cannot discover. (Default: None)
        group_optimizer (callable, optional): builds the router and expert optimizers from a
            list of parameters. (Default: None)

    Raises:
        EstimatorError: when ``classifier`` is not a ``PyTorchClassifier``.
        RouterNotFoundError: (a ``ValueError``) when its model has no MoE router.
        ValueError: for invalid settings, no ``clip_values`` or no optimizer.

    Example::

        >>> classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(),
        ...     optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        ...     input_shape=(3, 16, 32, 32), nb_classes=8, clip_values=(0.0, 1.0))
        >>> trainer = JTLATTrainer(classifier, eps=8 / 255)
        >>> trainer.fit(x_train, y_train, batch_size=32, nb_epochs=5)
        >>> trainer.history[-1]["loss"]  # mean whole-model loss of the last epoch
    """

    def __init__(
        self,
        classifier: PyTorchClassifier,
        eps: float = 8 / 255,
        alpha: float = 0.5,
        attack_steps: int = DEFAULT_ATTACK_STEPS,
        beta: float = 0.9,
        gamma1: float = 1.0,
        gamma2: float = 1.0,
        lam: float = DEFAULT_GROUP_LAM,
        model_lam: float = DEFAULT_MODEL_LAM,
        attack_lam: Optional[float] = None,
        expert_top_k: int = 2,
        aux_weight: float = 0.0,
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        group_optimizer: Optional[Callable[[List[nn.Parameter]], torch.optim.Optimizer]] = None,
    ):
        check_estimator(classifier, JTLATTrainer)
        super().__init__(classifier)

        low, high = clip_bounds(classifier)
        span = high - low
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps <= span:
            raise ValueError(
                f"eps={eps!r} is invalid: pass a number in (0, clip_max - clip_min = {span:g}], in "
                "the units of x (for example 8/255 for clip_values=(0, 1), 8 for (0, 255))."
            )
        if classifier.optimizer is None:
            raise ValueError(
                "the classifier has no optimizer, which J-TLAT's whole-model update steps. Create "
                "the PyTorchClassifier with optimizer=torch.optim.Adam(model.parameters(), lr=...)."
            )

        self.eps = eps
        self.layout = video_layout(classifier, time_dim)
        self.clip_min, self.clip_max = low, high
        self.model = AttackInputModel(
            classifier.model, self.layout, EstimatorPreprocessing(classifier, self.layout), low, high
        )
        self.jtlat = JTLAT(
            self.model,
            optimizer=classifier.optimizer,
            group_optimizer=group_optimizer,
            eps=eps / span,
            alpha=alpha,
            attack_steps=attack_steps,
            beta=beta,
            gamma1=gamma1,
            gamma2=gamma2,
            lam=lam,
            model_lam=model_lam,
            attack_lam=attack_lam,
            expert_top_k=expert_top_k,
            aux_weight=aux_weight,
            time_dim=self.layout.attack_time_dim,
            routers=prefixed_paths(routers),
            experts=prefixed_paths(experts),
            top_k=top_k,
        )
        self.history: List[Dict[str, float]] = []

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 32,
        nb_epochs: int = 1,
        shuffle: bool = True,
        verbose: bool = False,
        **kwargs,
    ) -> None:
        """Train the classifier's model with J-TLAT.

        Args:
            x: videos of shape (N, *classifier.input_shape) within ``clip_values``.
            y: labels, class indices (N,) or one-hot (N, nb_classes).
            batch_size: clips per J-TLAT step. (Default: 32)
            nb_epochs: passes over the data. (Default: 1)
            shuffle: draw a new order of the clips each epoch with numpy's global random
                generator. (Default: True)
            verbose: show a tqdm progress bar. (Default: False)

        The model is in training mode during ``fit`` and gets its previous mode back after.
        ``history`` gains one dict per epoch with the mean of each loss over the batches.
        """
        if kwargs:
            raise ValueError(
                f"JTLATTrainer.fit got unsupported keyword arguments {sorted(kwargs)}. Pass only x, "
                "y, batch_size, nb_epochs, shuffle and verbose."
            )
        check_int("batch_size", batch_size, 1)
        check_int("nb_epochs", nb_epochs, 1)
        videos = self._check_x(x)
        labels = index_labels(y, videos.shape[0], self.classifier.nb_classes)
        device = self.classifier.device

        flags = [(module, module.training) for module in self.model.modules()]
        self.model.train()
        try:
            for epoch in range(nb_epochs):
                order = np.random.permutation(videos.shape[0]) if shuffle else np.arange(videos.shape[0])
                sums: Dict[str, float] = {}
                starts = range(0, videos.shape[0], batch_size)

                for start in tqdm(starts, desc=f"J-TLAT epoch {epoch + 1}/{nb_epochs}", disable=not verbose):
                    indices = order[start:start + batch_size]
                    batch = self._to_unit(torch.from_numpy(videos[indices]).to(device))
                    batch_labels = torch.from_numpy(labels[indices]).to(device)

                    losses = self.jtlat.step(self.model, batch, batch_labels)
                    for key, value in losses.items():
                        sums[key] = sums.get(key, 0.0) + value

                epoch_means = {key: value / len(starts) for key, value in sums.items()}
                self.history.append(epoch_means)
                logger.info("J-TLAT epoch %d/%d: loss %.4f", epoch + 1, nb_epochs, epoch_means["loss"])
        finally:
            for module, flag in flags:
                module.training = flag

    def _to_unit(self, batch: torch.Tensor) -> torch.Tensor:
        """Move a batch to the attack's axis order and map ``clip_values`` onto [0, 1]."""
        unit = self.layout.to_attack(batch)
        if (self.clip_min, self.clip_max) != (0.0, 1.0):
            unit = ((unit - self.clip_min) / (self.clip_max - self.clip_min)).clamp(0.0, 1.0)
        return unit

    def _check_x(self, x) -> np.ndarray:
        x = np.asarray(x)
        input_shape = tuple(self.classifier.input_shape)
        if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape or x.shape[0] == 0:
            raise ValueError(
                f"x has shape {x.shape}, but the classifier's input_shape is {input_shape}. Pass "
                f"at least one video, as an array of shape (N, {', '.join(map(str, input_shape))})."
            )
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")

        videos = x.astype(np.float32)
        if not np.isfinite(videos).all():
            raise ValueError("x contains NaN or infinite values. Pass finite videos.")

        tolerance = RANGE_TOLERANCE * (self.clip_max - self.clip_min)
        if videos.min() < self.clip_min - tolerance or videos.max() > self.clip_max + tolerance:
            raise ValueError(
                f"x has values from {videos.min():.6g} to {videos.max():.6g}, outside the "
                f"classifier's clip_values ({self.clip_min:g}, {self.clip_max:g}). Pass "
                "unnormalized videos in that range, which the classifier's preprocessing normalizes."
            )
        return np.clip(videos, np.float32(self.clip_min), np.float32(self.clip_max))
