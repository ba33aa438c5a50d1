"""ART's image-only attacks on video classifiers, through an image adapter.

ART 1.20.1's ``SquareAttack`` rejects 5-D input, so ``AutoAttack``, whose default list
includes it, fails on videos too (its APGD runs on 5-D input). ``as_image_classifier``
presents a video ``PyTorchClassifier`` as an image classifier of shape (N, C*T, H, W): each
(channel, frame) pair becomes one image channel, and the adapter's model reshapes the images back to
videos before the estimator's preprocessing and model run. ART's attacks then run unchanged
on the adapter, and ``VideoAutoAttack`` and ``VideoSquareAttack`` map the results back::

    video (N, C, T, H, W)  --reshape-->          image (N, C*T, H, W)
    video (N, T, C, H, W)  --reshape-->          image (N, T*C, H, W)
    video (N, T, H, W, C)  --to NTCHW, reshape-> image (N, T*C, H, W)

eps, eps_step and ``clip_values`` keep ART's meaning (units of x): the adapter has the same
``clip_values`` as the video estimator. The adapter folds the estimator's preprocessing into
its model and has none of its own, so ART's APGD, which rebuilds its estimator from
``estimator.model``, attacks the same function.
"""

import logging
from typing import List, Optional, Tuple

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.attacks.evasion import AutoAttack, SquareAttack
from art.estimators.classification import PyTorchClassifier
from torch import nn

from .inputs import (
    NTHWC,
    EstimatorPreprocessing,
    VideoLayout,
    check_estimator,
    clip_bounds,
    project_linf,
    video_layout,
)

__all__ = [
    "VideoAsImageModel",
    "VideoAutoAttack",
    "VideoSquareAttack",
    "as_image_classifier",
    "image_to_video",
    "video_to_image",
]

logger = logging.getLogger(__name__)


def video_to_image(videos: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """Reshape a batch of videos in ``layout`` to images (N, C*T, H, W)."""
    if layout is NTHWC:
        videos = videos.permute(0, 1, 4, 2, 3)
    batch, first, second, height, width = videos.shape
    return videos.reshape(batch, first * second, height, width)


def image_to_video(images: torch.Tensor, layout: VideoLayout, input_shape: Tuple[int, ...]) -> torch.Tensor:
    """Reshape images (N, C*T, H, W) back to videos of ``input_shape`` in ``layout``."""
    if layout is NTHWC:
        frames, height, width, channels = input_shape
        videos = images.reshape(images.shape[0], frames, channels, height, width)
        return videos.permute(0, 1, 3, 4, 2)
    return images.reshape((images.shape[0],) + tuple(input_shape))


def _image_shape(input_shape: Tuple[int, ...], layout: VideoLayout) -> Tuple[int, int, int]:
    if layout is NTHWC:
        frames, height, width, channels = input_shape
        return frames * channels, height, width
    first, second, height, width = input_shape
    return first * second, height, width


class VideoAsImageModel(nn.Module):
    """A video model seen as an image model: (N, C*T, H, W) images in, the model's output out.

    Reshapes the images to videos in the estimator's layout, applies the estimator's
    preprocessing and runs ``model`` (a submodule, so its routers keep their paths under
    ``"model."``).

    Args:
        model: ``estimator.model`` of a video ``PyTorchClassifier``.
        layout: the estimator's video layout.
        input_shape: ``estimator.input_shape``, one video.
        preprocessing: the estimator's preprocessing.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: VideoLayout,
        input_shape: Tuple[int, ...],
        preprocessing: EstimatorPreprocessing,
    ):
        super().__init__()
        self.model = model
        self.layout = layout
        self.input_shape = tuple(input_shape)
        self.preprocessing = preprocessing

    def forward(self, images: torch.Tensor):
        videos = image_to_video(images, self.layout, self.input_shape)
        return self.model(self.preprocessing(videos))


def as_image_classifier(estimator: PyTorchClassifier, time_dim: Optional[int] = None) -> PyTorchClassifier:
    """Present a video ``PyTorchClassifier`` as an image classifier of shape (N, C*T, H, W).

    The returned classifier is a plain ART ``PyTorchClassifier`` (channels first) whose model
    is a ``VideoAsImageModel`` around ``estimator.model``. It shares the model, loss,
    optimizer, ``nb_classes``, ``clip_values``, postprocessing defences and device with
    ``estimator``, and applies the estimator's preprocessing inside its model.

    Args:
        estimator: a video ``PyTorchClassifier``; layouts as in ``tlga_attacks.art.inputs``.
        time_dim: None (from ``channels_first``), 2 for (N, C, T, H, W), 1 for time-first
            layouts. (Default: None)

    Returns:
        The image classifier. Convert arrays with ``video_to_image`` / ``image_to_video``.

    Raises:
        EstimatorError: when ``estimator`` is not a ``PyTorchClassifier``.
        ValueError: for unsupported layouts, clip values or preprocessing.

    Example::

        >>> images = as_image_classifier(video_classifier)
        >>> attack = SquareAttack(images, eps=8 / 255, max_iter=100)
    """
    check_estimator(estimator, as_image_classifier)
    layout = video_layout(estimator, time_dim)
    input_shape = tuple(estimator.input_shape)
    bounds = clip_bounds(estimator, required=False)

    model = VideoAsImageModel(
        estimator.model, layout, input_shape, EstimatorPreprocessing(estimator, layout)
    )
    return PyTorchClassifier(
        model=model,
        loss=estimator.loss,
        input_shape=_image_shape(input_shape, layout),
        nb_classes=estimator.nb_classes,
        optimizer=estimator.optimizer,
        channels_first=True,
        clip_values=bounds,
        postprocessing_defences=estimator.postprocessing_defences,
        preprocessing=None,
        # NOTE: ART picks the current CUDA device for "gpu", which can differ from the
        # estimator's device on machines with several GPUs.
        device_type="cpu" if estimator.device.type == "cpu" else "gpu",
    )


class _ImageAttackOnVideo(EvasionAttack):
    """Runs an ART image attack on the image adapter of a video classifier.

    Subclasses build ``self._attack`` on ``self.image_classifier``. Parameters are read and set
    on that inner attack.
    """

    _estimator_requirements = (PyTorchClassifier,)

    def __init__(self, estimator: PyTorchClassifier, time_dim: Optional[int]):
        check_estimator(estimator, type(self))
        super().__init__(estimator=estimator)
        self.time_dim = time_dim
        self._layout = video_layout(estimator, time_dim)
        self.image_classifier = as_image_classifier(estimator, time_dim)
        self._attack: Optional[EvasionAttack] = None

    @property
    def attack(self) -> EvasionAttack:
        """The ART attack that runs on ``image_classifier``."""
        return self._attack

    @property
    def targeted(self) -> bool:
        return self._attack.targeted if self._attack is not None else False

    @targeted.setter
    def targeted(self, targeted: bool) -> None:
        self._attack.set_params(targeted=targeted)

    def set_params(self, **kwargs) -> None:
        """Set parameters of the inner ART attack, which checks them."""
        self._attack.set_params(**kwargs)

    def __getattr__(self, name: str):
        # Reading the inner attack's parameters (eps, max_iter, ...) through the wrapper.
        if name != "_attack" and name in type(self).attack_params and self.__dict__.get("_attack") is not None:
            return getattr(self._attack, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def generate(self, x: np.ndarray, y: Optional[np.ndarray] = None, **kwargs) -> np.ndarray:
        """Generate adversarial videos with the inner ART attack.

        Args:
            x: videos of shape (N, *estimator.input_shape); converted to float32.
            y: labels as the inner attack takes them: class indices (N,) or one-hot
                (N, nb_classes); None uses the classifier's predictions.
            kwargs: passed to the inner attack's ``generate``. A ``mask`` of the shape of x
                or of one video is reshaped like x.

        Returns:
            float32 array of the shape of x. For the L-infinity norm, within the eps-ball of x
            and within ``clip_values`` exactly.
        """
        input_shape = tuple(self.estimator.input_shape)
        x = np.asarray(x)
        if x.ndim != 5 or tuple(x.shape[1:]) != input_shape:
            raise ValueError(
                f"x has shape {x.shape}, but the estimator's input_shape is {input_shape}; pass "
                f"videos of shape (N, {', '.join(map(str, input_shape))})"
            )

        videos = torch.from_numpy(x.astype(np.float32))
        images = video_to_image(videos, self._layout).numpy()

        mask = kwargs.get("mask")
        if mask is not None:
            kwargs["mask"] = self._mask_to_image(np.asarray(mask), x.shape)

        adv_images = self._attack.generate(images, y=y, **kwargs)

        adv_images = torch.from_numpy(np.asarray(adv_images, dtype=np.float32))
        adv = np.ascontiguousarray(image_to_video(adv_images, self._layout, input_shape).numpy())

        if self._attack.norm in (np.inf, "inf"):
            # ART's float32 arithmetic can overshoot eps by one rounding error (SquareAttack
            # in ART 1.20.1 does); the projection removes only such overshoots.
            bounds = clip_bounds(self.estimator, required=False) or (-np.inf, np.inf)
            adv = project_linf(adv, x.astype(np.float32), self._attack.eps, *bounds)
        return adv

    def _mask_to_image(self, mask: np.ndarray, video_batch_shape) -> np.ndarray:
        if mask.shape == tuple(video_batch_shape):
            return video_to_image(torch.from_numpy(mask), self._layout).numpy()
        if mask.shape == tuple(video_batch_shape[1:]):
            return video_to_image(torch.from_numpy(mask[None]), self._layout).numpy()[0]
        raise ValueError(
            f"mask has shape {mask.shape}; pass a mask of the shape of x {tuple(video_batch_shape)} "
            f"or of one video {tuple(video_batch_shape[1:])}"
        )


class VideoSquareAttack(_ImageAttackOnVideo):
    """ART's ``SquareAttack`` (Andriushchenko et al., ECCV 2020) on a video classifier.

    Runs ``art.attacks.evasion.SquareAttack`` unchanged on ``as_image_classifier(estimator)``,
    so each square patch spans all frames' channels at one spatial position.

    Args:
        estimator: a video ``PyTorchClassifier`` with ``clip_values``.
        norm: perturbation norm, np.inf, "inf", 1 or 2. (Default: np.inf)
        adv_criterion, loss: as in ART's ``SquareAttack``. (Default: None, ART's)
        max_iter: maximum iterations. (Default: 100)
        eps: maximum perturbation, in the units of x. (Default: 0.3, as ART)
        p_init: initial fraction of elements. (Default: 0.8)
        nb_restarts: restarts. (Default: 1)
        batch_size: batch size of the classifier's evaluations. (Default: 128)
        verbose: show progress bars. (Default: True)
        time_dim: None (from ``channels_first``), 2 or 1. (Default: None)

    Shape: x (N, *estimator.input_shape) -> float32 of the same shape.

    Example::

        >>> attack = VideoSquareAttack(video_classifier, eps=8 / 255, max_iter=200)
        >>> x_adv = attack.generate(x, y)
    """

    attack_params = SquareAttack.attack_params

    def __init__(
        self,
        estimator: PyTorchClassifier,
        norm=np.inf,
        adv_criterion=None,
        loss=None,
        max_iter: int = 100,
        eps: float = 0.3,
        p_init: float = 0.8,
        nb_restarts: int = 1,
        batch_size: int = 128,
        verbose: bool = True,
        time_dim: Optional[int] = None,
    ):
        super().__init__(estimator, time_dim)
        self._attack = SquareAttack(
            self.image_classifier,
            norm=norm,
            adv_criterion=adv_criterion,
            loss=loss,
            max_iter=max_iter,
            eps=eps,
            p_init=p_init,
            nb_restarts=nb_restarts,
            batch_size=batch_size,
            verbose=verbose,
        )


class VideoAutoAttack(_ImageAttackOnVideo):
    """ART's ``AutoAttack`` (Croce and Hein, ICML 2020) on a video classifier.

    Runs ``art.attacks.evasion.AutoAttack`` unchanged on ``as_image_classifier(estimator)``.
    With ``attacks=None`` that is ART's default list (APGD-CE and APGD-DLR with 100 iterations
    and 5 restarts, DeepFool, Square with 5000 iterations and 5 restarts), which is slow on
    video models. To run a smaller list, build the attacks on
    ``attack.image_classifier`` of a first ``VideoAutoAttack``, or on any
    ``as_image_classifier(estimator)``, and pass them as ``attacks``.

    Args:
        estimator: a video ``PyTorchClassifier`` with ``clip_values``.
        norm: perturbation norm, np.inf, "inf", 1 or 2. (Default: np.inf)
        eps: maximum perturbation, in the units of x. (Default: 0.3, as ART)
        eps_step: step size of the default attacks. (Default: 0.1)
        attacks: ART evasion attacks on an image adapter of ``estimator``. (Default: None,
            ART's default list)
        batch_size: batch size. (Default: 32)
        estimator_orig: a video ``PyTorchClassifier`` that the examples are judged on, for
            transfer attacks. (Default: None, ``estimator``)
        targeted: also run targeted attacks against every other class. (Default: False)
        parallel_pool_size: processes for ART's parallel mode; 0 runs in this process.
            (Default: 0)
        time_dim: None (from ``channels_first``), 2 or 1. (Default: None)

    Shape: x (N, *estimator.input_shape) -> float32 of the same shape.

    Example::

        >>> from art.attacks.evasion import AutoProjectedGradientDescent
        >>> images = as_image_classifier(video_classifier)
        >>> apgd = AutoProjectedGradientDescent(images, eps=8 / 255, eps_step=2 / 255, max_iter=20)
        >>> attack = VideoAutoAttack(video_classifier, eps=8 / 255, attacks=[apgd])
        >>> x_adv = attack.generate(x, y)
    """

    attack_params = AutoAttack.attack_params

    def __init__(
        self,
        estimator: PyTorchClassifier,
        norm=np.inf,
        eps: float = 0.3,
        eps_step: float = 0.1,
        attacks: Optional[List[EvasionAttack]] = None,
        batch_size: int = 32,
        estimator_orig: Optional[PyTorchClassifier] = None,
        targeted: bool = False,
        parallel_pool_size: int = 0,
        time_dim: Optional[int] = None,
    ):
        super().__init__(estimator, time_dim)
        for index, attack in enumerate(attacks or []):
            self._check_inner_attack(index, attack)

        image_orig = None
        if estimator_orig is not None:
            image_orig = as_image_classifier(estimator_orig, time_dim)

        self._attack = AutoAttack(
            self.image_classifier,
            norm=norm,
            eps=eps,
            eps_step=eps_step,
            attacks=attacks,
            batch_size=batch_size,
            estimator_orig=image_orig,
            targeted=targeted,
            parallel_pool_size=parallel_pool_size,
        )

    @property
    def best_attacks(self) -> np.ndarray:
        """Per video of the latest ``generate``: index of the attack that fooled it, -1 if
        none did, -2 if the clean video was already misclassified (ART's codes)."""
        return self._attack.best_attacks

    def _check_inner_attack(self, index: int, attack) -> None:
        model = getattr(getattr(attack, "estimator", None), "model", None)
        if isinstance(model, VideoAsImageModel) and model.model is self.estimator.model:
            return
        raise ValueError(
            f"attacks[{index}] ({type(attack).__name__}) does not run on an image adapter of "
            "this estimator; build it on as_image_classifier(estimator) or on the "
            "image_classifier of a VideoAutoAttack of this estimator"
        )
