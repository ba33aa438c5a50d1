"""torchattacks' image-only attacks on video models, and the video conventions of the baselines.

torchattacks 3.5.1 assumes images of shape (N, C, H, W). On a video model of shape
(N, C, T, H, W), ``APGD``, ``APGDT`` and ``AutoAttack`` fail an assertion because they add a
batch dimension to 5-D input, ``Square`` fails to unpack the shape, and
``set_normalization_used`` reshapes mean and std to (1, C, 1, 1), which raises on 5-D input
unless T == C, where it silently normalizes frame t with the statistics of channel t.

This module fixes both problems:

* ``VideoAttackMixin`` gives a torchattacks attack the video conventions of this library.
  Normalization is per channel and broadcast over the channel axis of 5-D input. Logits are
  taken from tuple or dict outputs. The model's state is restored after the call, also when
  the call raises. Results are projected exactly onto the eps-ball, and forward and
  backward passes are counted.
* ``VideoAsImage`` presents a video model as an image model of shape (N, C*T, H, W), so that
  torchattacks' image attacks run unchanged. ``VideoAdapted`` runs such an attack and maps
  its result back to video; ``VideoAPGD``, ``VideoAPGDT``, ``VideoFAB``, ``VideoSquare`` and
  ``VideoAutoAttack`` configure it from the model: the number of classes comes from one probe
  forward pass, and Square's window fits the frame.
"""

import contextlib
import logging
import math
import numbers
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchattacks
from torch import nn
from torchattacks.attack import Attack
from torchattacks.wrappers.multiattack import MultiAttack

from ..attacks.base import ModelState
from ..normalization import VideoNormalizationMixin
from ..outputs import logits_from_output
from ..steps import project
from ..validation import check_labels, check_model_output, check_videos

__all__ = [
    "AUTOATTACK_VERSIONS",
    "PassCounter",
    "VideoAPGD",
    "VideoAPGDT",
    "VideoAdapted",
    "VideoAsImage",
    "VideoAttack",
    "VideoAttackMixin",
    "VideoAutoAttack",
    "VideoFAB",
    "VideoSquare",
    "image_to_video",
    "square_p_init",
    "video_to_image",
]

logger = logging.getLogger(__name__)

AUTOATTACK_VERSIONS = ("standard", "plus", "rand")

# The DLR loss divides by the gap between the largest and the third largest logit, and its
# targeted form by the gap to the mean of the third and fourth largest.
MIN_CLASSES_DLR = 3
MIN_CLASSES_TARGETED_DLR = 4

# The original AutoAttack (Croce and Hein, 2020) attacks the 9 most likely wrong classes in
# APGD-T and FAB-T; torchattacks 3.5.1 attacks n_classes - 1 of them.
DEFAULT_TARGET_CLASSES = 9


# -- parameter checks ------------------------------------------------------------------------


def _check_real(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be in {left}{low}, {high}], got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_seed(seed, allow_none: bool = True) -> None:
    if seed is None and allow_none:
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        allowed = "an int >= 0 or None" if allow_none else "an int >= 0"
        raise ValueError(f"seed must be {allowed}, got {seed!r}")


def _check_time_dim(time_dim) -> None:
    if isinstance(time_dim, bool) or time_dim not in (1, 2):
        raise ValueError(
            f"time_dim must be 2 for (N, C, T, H, W) input or 1 for (N, T, C, H, W) input, "
            f"got {time_dim!r}"
        )


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# -- random number generators ----------------------------------------------------------------


@contextlib.contextmanager
def _rng_scope(device: torch.device, seed: Optional[int] = None):
    """Run a block on a private copy of the RNG state of the CPU and of ``device``.

    torchattacks' APGD, APGDT, FAB and Square call ``torch.manual_seed`` on the global
    generator; inside this block that leaves the caller's random stream untouched. With
    ``seed``, the block starts from that seed.
    """
    devices: List[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]

    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


# -- pass counting ---------------------------------------------------------------------------


class PassCounter:
    """Forward and backward passes of a model, counted as calls and as clips.

    ``record(logits)`` is called once per forward pass. When the logits require gradients,
    a hook on them counts every backward pass that reaches them, so a loss differentiated
    several times (FAB takes one gradient per class) counts once per gradient.

    Attributes:
        forward, backward: model calls, whatever their batch size.
        forward_clips, backward_clips: clips passed forward and backward, summed over calls.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0
        self.forward_clips = 0
        self.backward_clips = 0

    def record(self, logits: torch.Tensor) -> None:
        """Count one forward pass that produced ``logits`` (N, K), and its backward passes."""
        clips = logits.shape[0]
        self.forward += 1
        self.forward_clips += clips

        if logits.requires_grad:
            logits.register_hook(lambda grad: self._count_backward(clips))

    def _count_backward(self, clips: int) -> None:
        self.backward += 1
        self.backward_clips += clips

    def as_dict(self) -> Dict[str, int]:
        return {
            "forward": self.forward,
            "backward": self.backward,
            "forward_clips": self.forward_clips,
            "backward_clips": self.backward_clips,
        }


# -- video conventions for torchattacks attacks ------------------------------------------------


class VideoAttackMixin(VideoNormalizationMixin):
    """Video conventions for a ``torchattacks.attack.Attack`` subclass.

    Put it first among the base classes and call ``_init_video`` at the end of ``__init__``.
    It overrides:

    * ``set_normalization_used(mean, std)``: per-channel statistics broadcast over the
      channel axis of 5-D input (axis 1, or axis 2 with ``time_dim=1``). As in torchattacks
      3.5.1, the attack is then called on normalized videos and returns normalized videos,
      while eps and [0, 1] apply to the unnormalized pixels.
    * ``get_logits``: takes the logits from a tensor, tuple or dict output (see
      ``tlga_attacks.outputs.logits_from_output``) and counts the pass.
    * ``__call__``: saves the model's training flags, ``requires_grad`` flags and (when a
      module is in training mode) its buffers, and restores them after the call, also when
      the call raises. With ``seed`` set, the call runs on a private generator seeded with it.
    * ``get_output_with_eval_nograd`` (used to pick targets): restores per-module training
      flags instead of calling ``model.train()``.

    Subclasses use ``_prepare`` and ``_finish`` in ``forward`` to check the input and to
    project the result exactly onto the eps-ball and [0, 1].
    """

    def _init_video(
        self,
        eps: float,
        time_dim: int = 2,
        output_to_logits: Optional[Callable] = None,
        seed: Optional[int] = None,
    ) -> None:
        _check_real("eps", eps, 0.0, 1.0)
        _check_time_dim(time_dim)
        _check_seed(seed)
        self.eps = eps
        self.time_dim = time_dim
        self.seed = seed
        self._output_to_logits = output_to_logits or logits_from_output
        self._pass_counter = PassCounter()

    @property
    def passes(self) -> Dict[str, int]:
        """Forward and backward passes of the model during the latest call; see ``PassCounter``."""
        return self._pass_counter.as_dict()

    # -- normalization -----------------------------------------------------------------------

    def _preprocess(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """Return the normalization to apply before the model, or None."""
        return self.normalize if self._normalization_applied is False else None

    # -- model calls -------------------------------------------------------------------------

    def get_logits(self, inputs: torch.Tensor, labels=None, *args, **kwargs) -> torch.Tensor:
        if self._normalization_applied is False:
            inputs = self.normalize(inputs)
        logits = self._output_to_logits(self.model(inputs))
        check_model_output(logits, inputs.shape[0])
        self._pass_counter.record(logits)
        return logits

    @torch.no_grad()
    def get_output_with_eval_nograd(self, inputs: torch.Tensor) -> torch.Tensor:
        # torchattacks 3.5.1 ends this with model.train() when the model was training. That
        # would put the BatchNorm and Dropout layers that set_model_training_mode keeps in
        # evaluation mode back into training mode, so the per-module flags are restored here.
        flags = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            return self.get_logits(inputs)
        finally:
            for module, flag in flags:
                module.training = flag

    def __call__(self, inputs, labels=None, *args, **kwargs):
        state = ModelState(self.model)
        device = self.device
        if device is None:
            device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
        try:
            self._change_model_mode(state.training)
            state.save_buffers_if_training()

            rng = contextlib.nullcontext() if self.seed is None else _rng_scope(device, self.seed)
            with rng:
                if self._normalization_applied is not True:
                    return self.forward(inputs, labels, *args, **kwargs)

                if not isinstance(inputs, torch.Tensor):
                    check_videos(inputs, self.time_dim)
                self._set_normalization_applied(False)
                try:
                    adv = self.forward(self.inverse_normalize(inputs), labels, *args, **kwargs)
                finally:
                    self._set_normalization_applied(True)
                return self.normalize(adv)
        finally:
            state.restore()

    # -- input and output --------------------------------------------------------------------

    def _prepare(self, inputs, labels) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Check a batch and move it to the model's device.

        Returns ``(videos, x, labels)``: the checked videos (values within rounding of [0, 1]
        clipped), a detached copy on the attack's device, and int64 labels on that device.
        Missing labels become the model's predictions, except in ``targeted(label)`` mode,
        where the labels are the targets and are required.
        """
        self._pass_counter.reset()
        videos = check_videos(inputs, self.time_dim)
        if labels is not None:
            check_labels(labels, videos.shape[0])
        elif self.attack_mode == "targeted(label)":
            raise ValueError("labels=None in targeted(label) mode; pass the target labels")

        device = self.device if self.device is not None else videos.device
        x = videos.detach().to(device)
        if videos.shape[0] == 0:
            return videos, x, labels

        if labels is None:
            with torch.no_grad():
                labels = self.get_logits(x).argmax(dim=1)
        return videos, x, labels.detach().to(device).long()

    def _finish(self, adv: torch.Tensor, x: torch.Tensor, videos: torch.Tensor, inputs):
        """Project onto the eps-ball of ``x`` and [0, 1] in ``x``'s dtype, and return the
        result with the dtype, device and memory layout of the input."""
        adv = project(adv.detach().to(dtype=x.dtype, device=x.device), x, self.eps)
        out = torch.empty_like(videos)
        out.copy_(adv)
        return out.to(inputs.device) if out.device != inputs.device else out


class VideoAttack(VideoAttackMixin, Attack):
    """Base class of the video attacks of this package that have their own loop."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        eps: float = 8 / 255,
        time_dim: int = 2,
        output_to_logits: Optional[Callable] = None,
        seed: Optional[int] = None,
    ):
        Attack.__init__(self, name, model)
        self._init_video(eps, time_dim, output_to_logits, seed)


# -- the image view --------------------------------------------------------------------------


def video_to_image(videos: torch.Tensor) -> torch.Tensor:
    """Merge the channel and time axes: (N, C, T, H, W) -> (N, C*T, H, W).

    With (N, T, C, H, W) input the result is (N, T*C, H, W). Image channel ``c * T + t``
    (``t * C + c`` for time-first input) contains channel c of frame t.
    """
    batch, first, second, height, width = videos.shape
    return videos.reshape(batch, first * second, height, width)


def image_to_video(images: torch.Tensor, clip_shape: Sequence[int]) -> torch.Tensor:
    """Undo ``video_to_image``: (N, C*T, H, W) -> (N, *clip_shape)."""
    return images.reshape((images.shape[0],) + tuple(clip_shape))


class VideoAsImage(nn.Module):
    """A video classifier seen as an image classifier of shape (N, C*T, H, W).

    The forward pass reshapes the images to clips of ``clip_shape``, casts them to ``dtype``,
    applies ``preprocess`` (the attack's normalization), runs ``model`` and returns its logits
    in the dtype of the images. ``model`` is a submodule, so ``eval()`` and ``train()`` reach
    it.

    Args:
        model (nn.Module): the video model.
        clip_shape (tuple): one clip, (C, T, H, W) or (T, C, H, W).
        preprocess (callable, optional): applied to the clips before the model.
            (Default: None)
        output_to_logits (callable, optional): maps the model's output to logits.
            (Default: None, see ``tlga_attacks.outputs.logits_from_output``)
        counter (PassCounter, optional): records every forward pass. (Default: None)
        dtype (torch.dtype, optional): dtype of the clips given to the model; FAB casts its
            input to float32. (Default: None, no cast)

    Shape:
        - images: (N, C*T, H, W).
        - output: (N, K) logits.

    Examples::
        >>> image_model = VideoAsImage(video_model, clip_shape=(3, 8, 112, 112))
        >>> logits = image_model(video_to_image(videos))
    """

    def __init__(
        self,
        model: nn.Module,
        clip_shape: Sequence[int],
        preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        output_to_logits: Optional[Callable] = None,
        counter: Optional[PassCounter] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if len(clip_shape) != 4:
            raise ValueError(
                f"clip_shape must be (C, T, H, W) or (T, C, H, W), got {tuple(clip_shape)}"
            )
        self.model = model
        self.clip_shape = tuple(int(size) for size in clip_shape)
        self.preprocess = preprocess
        self.output_to_logits = output_to_logits or logits_from_output
        self.counter = counter
        self.dtype = dtype

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """One image, (C*T, H, W)."""
        first, second, height, width = self.clip_shape
        return first * second, height, width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, self.image_shape))}) for clips "
                f"of shape {self.clip_shape}, got {tuple(images.shape)}"
            )

        videos = image_to_video(images, self.clip_shape)
        if self.dtype is not None and videos.dtype != self.dtype:
            videos = videos.to(self.dtype)
        if self.preprocess is not None:
            videos = self.preprocess(videos)

        logits = self.output_to_logits(self.model(videos))
        check_model_output(logits, images.shape[0])
        if logits.is_floating_point() and logits.dtype != images.dtype:
            logits = logits.to(images.dtype)
        if self.counter is not None:
            self.counter.record(logits)
        return logits


# -- running an image attack on the image view ------------------------------------------------

ImageAttackFactory = Callable[[VideoAsImage, int], Attack]


class VideoAdapted(VideoAttack):
    """Run a torchattacks image attack on a video model through ``VideoAsImage``.

    Each call probes the model once (without gradients) for the number of classes K and,
    when labels are missing, for the labels. It then builds the image attack with
    ``attack_factory(image_model, K)`` on the image view of the batch, runs it on the clips
    reshaped to images, reshapes the result back and projects it exactly onto the eps-ball
    and [0, 1]. The image attack runs on a private copy of the random generator state,
    because torchattacks' APGD, APGDT, FAB and Square reseed the global generator.

    Only torchattacks' default (untargeted) mode is supported.

    Arguments:
        model (nn.Module): the video model. Its forward may return logits, a tuple
            ``(logits, ...)`` or a dict with ``"logits"``.
        attack_factory (callable): ``attack_factory(image_model, num_classes)`` returns a
            ``torchattacks.attack.Attack`` on ``image_model``. Its eps must equal ``eps``.
        eps (float): maximum L-infinity perturbation in [0, 1] pixel units, used for the final
            projection. (Default: 8/255)
        name (str): the attack's name. (Default: "VideoAdapted")
        time_dim (int): 2 for (N, C, T, H, W) models, 1 for (N, T, C, H, W). (Default: 2)
        output_to_logits (callable, optional): maps the model's output to logits.
            (Default: None, see ``tlga_attacks.outputs.logits_from_output``)

    Shape:
        - videos: (N, C, T, H, W) (or (N, T, C, H, W) with ``time_dim=1``), float in [0, 1].
        - labels: (N,) int64 class indices, or None for the model's predictions.
        - output: same shape, dtype, device and memory layout as the videos, within the
          eps-ball of the input and within [0, 1].

    Cost: ``passes`` counts every forward and backward pass of the model exactly, the probe
    included (see ``PassCounter``).

    Examples::
        >>> atk = VideoAdapted(model, lambda image_model, k: torchattacks.PGDL2(image_model))
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(
        self,
        model: nn.Module,
        attack_factory: Optional[ImageAttackFactory] = None,
        eps: float = 8 / 255,
        name: str = "VideoAdapted",
        time_dim: int = 2,
        output_to_logits: Optional[Callable] = None,
    ):
        super().__init__(name, model, eps=eps, time_dim=time_dim, output_to_logits=output_to_logits)
        if attack_factory is not None and not callable(attack_factory):
            raise ValueError(
                f"attack_factory must be callable as attack_factory(image_model, num_classes), "
                f"got {type(attack_factory).__name__}"
            )
        self.attack_factory = attack_factory
        # NOTE: targeted modes are not forwarded to the image attack. torchattacks 3.5.1's FAB
        # in single-target mode indexes the full batch's targets with positions in the subset
        # of clips still correct, so it would attack wrong targets.
        self.supported_mode = ["default"]

    def check_params(self) -> None:
        """Check the parameters; called at construction and at every call."""
        _check_real("eps", self.eps, 0.0, 1.0)
        _check_time_dim(self.time_dim)

    def build_image_attack(self, image_model: VideoAsImage, num_classes: int) -> Attack:
        """Build the torchattacks attack that runs on ``image_model`` for K = ``num_classes``."""
        if self.attack_factory is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no attack_factory; pass one or override "
                "build_image_attack"
            )
        return self.attack_factory(image_model, num_classes)

    def forward(self, inputs, labels=None) -> torch.Tensor:
        """Attack a batch of videos; see the class docstring."""
        self.check_params()
        self._pass_counter.reset()
        videos = check_videos(inputs, self.time_dim)
        if labels is not None:
            check_labels(labels, videos.shape[0])
        if videos.shape[0] == 0:
            return inputs.clone()

        device = self.device if self.device is not None else videos.device
        x = videos.detach().to(device)
        image_model = VideoAsImage(
            self.model, x.shape[1:], self._preprocess(), self._output_to_logits,
            self._pass_counter, dtype=x.dtype,
        )
        # Only the flag of the view itself: the image attack reads it as "the model was
        # training" and restores it, while the video model keeps its per-module flags.
        image_model.training = self.model.training
        images = video_to_image(x)

        with torch.no_grad():
            probe = image_model(images)
        num_classes = probe.shape[1]
        if num_classes < 2:
            raise ValueError(
                f"the model returns {num_classes} logit per clip; the attacks need at least "
                "2 classes"
            )
        labels = probe.argmax(dim=1) if labels is None else labels.detach().to(device)
        labels = check_labels(labels, x.shape[0], num_classes)

        image_attack = self.build_image_attack(image_model, num_classes)
        self._check_image_attack(image_attack, image_model)
        image_attack.set_model_training_mode(
            self._model_training, self._batchnorm_training, self._dropout_training
        )
        with _rng_scope(x.device):
            adv_images = image_attack(images, labels)

        # NOTE: the image attack checked its decisions before this projection. With the same
        # eps the projection moves a pixel by at most one rounding step of x + eps, but a
        # clip exactly on the decision boundary could still flip back.
        adv = image_to_video(adv_images.detach(), x.shape[1:])
        return self._finish(adv, x, videos, inputs)

    def _check_image_attack(self, image_attack, image_model: VideoAsImage) -> None:
        if not isinstance(image_attack, Attack):
            raise ValueError(
                f"attack_factory must return a torchattacks.attack.Attack, got "
                f"{type(image_attack).__name__}"
            )
        if image_attack.model is not image_model:
            raise ValueError(
                "attack_factory must build the attack on the image_model it receives, not on "
                "another model"
            )
        image_eps = getattr(image_attack, "eps", None)
        if isinstance(image_eps, numbers.Real) and image_eps > self.eps:
            logger.warning(
                "%s: the image attack's eps=%g exceeds eps=%g; its result is projected onto "
                "the smaller ball", self.attack, image_eps, self.eps,
            )


# -- the named attacks ------------------------------------------------------------------------


def _target_classes(requested: Optional[int], num_classes: int) -> int:
    """At most K - 1 target classes; None means min(9, K - 1)."""
    if requested is None:
        return min(DEFAULT_TARGET_CLASSES, num_classes - 1)
    return min(requested, num_classes - 1)


def square_p_init(p_init: float, height: int, width: int) -> float:
    """Largest window fraction <= ``p_init`` whose square window fits an H x W frame.

    torchattacks' Square draws squares of side ``round(sqrt(p * H * W))``; a side larger than
    min(H, W) gives negative window positions. The result keeps that side at most min(H, W).
    """
    return min(p_init, min(height, width) ** 2 / (height * width))


def _resolve_seed(seed: Optional[int]) -> int:
    """Return ``seed``, or the clock's seconds for None (torchattacks' AutoAttack default)."""
    return int(time.time()) if seed is None else seed


def _apgd(image_model, eps, steps, n_restarts, seed, loss, eot_iter=1, rho=0.75) -> Attack:
    return torchattacks.APGD(
        image_model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts,
        seed=_resolve_seed(seed),
        loss=loss, eot_iter=eot_iter, rho=rho, verbose=False,
    )


def _apgdt(image_model, eps, steps, n_restarts, seed, num_classes, n_target_classes, rho=0.75):
    attack = torchattacks.APGDT(
        image_model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts,
        seed=_resolve_seed(seed), rho=rho, verbose=False, n_classes=num_classes,
    )
    attack.n_target_classes = _target_classes(n_target_classes, num_classes)
    return attack


def _fab(image_model, eps, steps, n_restarts, seed, num_classes, multi_targeted,
         n_target_classes, alpha_max=0.1, eta=1.05, beta=0.9) -> Attack:
    attack = torchattacks.FAB(
        image_model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts,
        alpha_max=alpha_max, eta=eta, beta=beta, verbose=False, seed=_resolve_seed(seed),
        multi_targeted=multi_targeted, n_classes=num_classes,
    )
    attack.n_target_classes = _target_classes(n_target_classes, num_classes)
    return attack


def _square(image_model, eps, n_queries, n_restarts, seed, p_init, loss="margin") -> Attack:
    _, height, width = image_model.image_shape
    fitted = square_p_init(p_init, height, width)
    if fitted < p_init:
        logger.debug(
            "Square: p_init %g lowered to %g to fit %dx%d frames", p_init, fitted, height, width
        )
    return torchattacks.Square(
        image_model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=n_restarts,
        p_init=fitted, loss=loss, resc_schedule=True, seed=_resolve_seed(seed), verbose=False,
    )


COMMON_ARGUMENTS = """
        model (nn.Module): the video model. Its forward may return logits, a tuple
            ``(logits, ...)`` or a dict with ``"logits"``.
        eps (float): maximum L-infinity perturbation in [0, 1] pixel units. (Default: 8/255)"""

VIDEO_ARGUMENTS = """
        time_dim (int): 2 for (N, C, T, H, W) models, 1 for (N, T, C, H, W). (Default: 2)
        output_to_logits (callable, optional): maps the model's output to logits.
            (Default: None, see ``tlga_attacks.outputs.logits_from_output``)"""

SHAPES = """
    Shape:
        - videos: (N, C, T, H, W) (or (N, T, C, H, W) with ``time_dim=1``), float in [0, 1].
        - labels: (N,) int64 class indices, or None for the model's predictions.
        - output: same shape, dtype, device and memory layout as the videos, within the
          eps-ball of the input and within [0, 1]."""


class VideoAPGD(VideoAdapted):
    __doc__ = f"""APGD on a video model, through the image view (N, C*T, H, W).

    Paper: 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks', F. Croce and M. Hein, ICML 2020
    [https://arxiv.org/abs/2003.01690]. Runs ``torchattacks.APGD`` unchanged.

    Distance Measure: Linf

    Arguments:{COMMON_ARGUMENTS}
        steps (int): iterations per restart. (Default: 10)
        n_restarts (int): random restarts. (Default: 1)
        seed (int, optional): seed of the random starts; None draws it from the clock.
            (Default: 0)
        loss (str): "ce" or "dlr"; "dlr" needs a model with at least 3 classes.
            (Default: "ce")
        eot_iter (int): gradients averaged per step (expectation over transformation).
            (Default: 1)
        rho (float): step-size halving threshold. (Default: 0.75){VIDEO_ARGUMENTS}
{SHAPES}

    Cost: per restart, 1 + steps forward and backward passes (times eot_iter), on the clips
    not yet fooled; ``passes`` counts them exactly.

    Examples::
        >>> atk = VideoAPGD(model, eps=8/255, steps=10)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, steps=10, n_restarts=1, seed=0, loss="ce",
                 eot_iter=1, rho=0.75, time_dim=2, output_to_logits=None):
        super().__init__(model, eps=eps, name="VideoAPGD", time_dim=time_dim,
                         output_to_logits=output_to_logits)
        self.steps = steps
        self.n_restarts = n_restarts
        self.seed = seed
        self.loss = loss
        self.eot_iter = eot_iter
        self.rho = rho
        self.check_params()

    def check_params(self) -> None:
        super().check_params()
        _check_int("steps", self.steps, 1)
        _check_int("n_restarts", self.n_restarts, 1)
        _check_int("eot_iter", self.eot_iter, 1)
        _check_seed(self.seed)
        _check_choice("loss", self.loss, ("ce", "dlr"))
        _check_real("rho", self.rho, 0.0, 1.0)

    def build_image_attack(self, image_model, num_classes):
        if self.loss == "dlr" and num_classes < MIN_CLASSES_DLR:
            raise ValueError(
                f"APGD with loss='dlr' needs a model with at least {MIN_CLASSES_DLR} classes, "
                f"this one has {num_classes}; use loss='ce'"
            )
        return _apgd(image_model, self.eps, self.steps, self.n_restarts, self.seed, self.loss,
                     self.eot_iter, self.rho)


class VideoAPGDT(VideoAdapted):
    __doc__ = f"""APGD-T (targeted DLR loss, one run per target class) on a video model,
    through the image view (N, C*T, H, W).

    Paper: 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks', F. Croce and M. Hein, ICML 2020
    [https://arxiv.org/abs/2003.01690]. Runs ``torchattacks.APGDT`` unchanged, with
    ``n_classes`` read from the model.

    Distance Measure: Linf

    Arguments:{COMMON_ARGUMENTS}
        steps (int): iterations per target class and restart. (Default: 10)
        n_restarts (int): random restarts per target class. (Default: 1)
        seed (int, optional): seed of the random starts; None draws it from the clock.
            (Default: 0)
        n_target_classes (int, optional): how many of the most likely wrong classes are
            attacked, at most K - 1. (Default: None, min(9, K - 1) as in the original
            AutoAttack)
        rho (float): step-size halving threshold. (Default: 0.75){VIDEO_ARGUMENTS}
{SHAPES}

    The targeted DLR loss needs a model with at least 4 classes; with fewer, the call raises
    ``ValueError``.

    Cost: per target class and restart, 1 + steps forward and backward passes on the clips
    not yet fooled; ``passes`` counts them exactly.

    Examples::
        >>> atk = VideoAPGDT(model, eps=8/255, steps=10)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, steps=10, n_restarts=1, seed=0,
                 n_target_classes=None, rho=0.75, time_dim=2, output_to_logits=None):
        super().__init__(model, eps=eps, name="VideoAPGDT", time_dim=time_dim,
                         output_to_logits=output_to_logits)
        self.steps = steps
        self.n_restarts = n_restarts
        self.seed = seed
        self.n_target_classes = n_target_classes
        self.rho = rho
        self.check_params()

    def check_params(self) -> None:
        super().check_params()
        _check_int("steps", self.steps, 1)
        _check_int("n_restarts", self.n_restarts, 1)
        _check_seed(self.seed)
        if self.n_target_classes is not None:
            _check_int("n_target_classes", self.n_target_classes, 1)
        _check_real("rho", self.rho, 0.0, 1.0)

    def build_image_attack(self, image_model, num_classes):
        if num_classes < MIN_CLASSES_TARGETED_DLR:
            raise ValueError(
                f"APGD-T needs a model with at least {MIN_CLASSES_TARGETED_DLR} classes (its "
                f"targeted DLR loss uses the 4th largest logit), this one has {num_classes}; "
                "use VideoAPGD with loss='ce'"
            )
        return _apgdt(image_model, self.eps, self.steps, self.n_restarts, self.seed, num_classes,
                      self.n_target_classes, self.rho)


class VideoFAB(VideoAdapted):
    __doc__ = f"""FAB (fast adaptive boundary attack) on a video model, through the image view
    (N, C*T, H, W).

    Paper: 'Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack',
    F. Croce and M. Hein, ICML 2020 [https://arxiv.org/abs/1907.02044]. Runs
    ``torchattacks.FAB`` unchanged, with ``n_classes`` read from the model.

    FAB searches for the smallest perturbation that changes the decision. It keeps the
    perturbation only when its L-infinity norm is at most eps, so a clip whose smallest
    perturbation found is larger comes back unchanged.

    Distance Measure: Linf

    Arguments:{COMMON_ARGUMENTS}
        steps (int): iterations per restart (and per target class). (Default: 10)
        n_restarts (int): restarts. (Default: 1)
        seed (int, optional): seed of the random starts of restarts after the first; None
            draws it from the clock. (Default: 0)
        multi_targeted (bool): FAB-T, one run per target class. (Default: False)
        n_target_classes (int, optional): target classes of FAB-T, at most K - 1.
            (Default: None, min(9, K - 1) as in the original AutoAttack)
        alpha_max (float): maximum step toward the clean clip. (Default: 0.1)
        eta (float): overshoot factor. (Default: 1.05)
        beta (float): weight of the backward step. (Default: 0.9){VIDEO_ARGUMENTS}
{SHAPES}

    Cost: every step takes one gradient per class (K backward passes through one forward
    pass) untargeted, one per step with FAB-T; ``passes`` counts them exactly.

    Examples::
        >>> atk = VideoFAB(model, eps=8/255, steps=10)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, steps=10, n_restarts=1, seed=0, multi_targeted=False,
                 n_target_classes=None, alpha_max=0.1, eta=1.05, beta=0.9, time_dim=2,
                 output_to_logits=None):
        super().__init__(model, eps=eps, name="VideoFAB", time_dim=time_dim,
                         output_to_logits=output_to_logits)
        self.steps = steps
        self.n_restarts = n_restarts
        self.seed = seed
        self.multi_targeted = multi_targeted
        self.n_target_classes = n_target_classes
        self.alpha_max = alpha_max
        self.eta = eta
        self.beta = beta
        self.check_params()

    def check_params(self) -> None:
        super().check_params()
        _check_int("steps", self.steps, 1)
        _check_int("n_restarts", self.n_restarts, 1)
        _check_seed(self.seed)
        if not isinstance(self.multi_targeted, bool):
            raise ValueError(f"multi_targeted must be True or False, got {self.multi_targeted!r}")
        if self.n_target_classes is not None:
            _check_int("n_target_classes", self.n_target_classes, 1)
        _check_real("alpha_max", self.alpha_max, 0.0, 1.0)
        _check_real("eta", self.eta, 0.0, math.inf, low_open=True)
        _check_real("beta", self.beta, 0.0, 1.0)

    def build_image_attack(self, image_model, num_classes):
        return _fab(image_model, self.eps, self.steps, self.n_restarts, self.seed, num_classes,
                    self.multi_targeted, self.n_target_classes, self.alpha_max, self.eta,
                    self.beta)


class VideoSquare(VideoAdapted):
    __doc__ = f"""Square Attack (score-based random search) on a video model, through the image
    view (N, C*T, H, W).

    Paper: 'Square Attack: a query-efficient black-box adversarial attack via random
    search', M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, ECCV 2020
    [https://arxiv.org/abs/1912.00049]. Runs ``torchattacks.Square`` unchanged. Each square
    spans the same pixels in every frame, with an independent sign per channel and frame.

    Distance Measure: Linf

    Arguments:{COMMON_ARGUMENTS}
        n_queries (int): maximum queries per restart. (Default: 5000)
        n_restarts (int): restarts. (Default: 1)
        seed (int, optional): seed of the random search; None draws it from the clock.
            (Default: 0)
        p_init (float): initial fraction of the frame covered by a square. It is lowered
            to min(H, W)**2 / (H * W) when the square would not fit a non-square frame.
            (Default: 0.8)
        loss (str): "margin" or "ce". (Default: "margin"){VIDEO_ARGUMENTS}
{SHAPES}

    Cost: forward passes only. Each restart takes at most 1 + n_queries passes on the clips
    not yet fooled, plus two evaluations. ``passes`` counts them exactly.

    Examples::
        >>> atk = VideoSquare(model, eps=8/255, n_queries=1000)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, n_queries=5000, n_restarts=1, seed=0, p_init=0.8,
                 loss="margin", time_dim=2, output_to_logits=None):
        super().__init__(model, eps=eps, name="VideoSquare", time_dim=time_dim,
                         output_to_logits=output_to_logits)
        self.n_queries = n_queries
        self.n_restarts = n_restarts
        self.seed = seed
        self.p_init = p_init
        self.loss = loss
        self.check_params()

    def check_params(self) -> None:
        super().check_params()
        _check_int("n_queries", self.n_queries, 1)
        _check_int("n_restarts", self.n_restarts, 1)
        _check_seed(self.seed)
        _check_real("p_init", self.p_init, 0.0, 1.0, low_open=True)
        _check_choice("loss", self.loss, ("margin", "ce"))

    def build_image_attack(self, image_model, num_classes):
        return _square(image_model, self.eps, self.n_queries, self.n_restarts, self.seed,
                       self.p_init, self.loss)


class VideoAutoAttack(VideoAdapted):
    __doc__ = f"""AutoAttack on a video model, through the image view (N, C*T, H, W).

    Paper: 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks', F. Croce and M. Hein, ICML 2020
    [https://arxiv.org/abs/2003.01690]. The members are torchattacks' attacks with the
    settings of ``torchattacks.AutoAttack`` 3.5.1, run one after the other by
    ``torchattacks.MultiAttack`` on the clips not yet fooled:

    * "standard": APGD-CE, APGD-T, FAB-T, Square;
    * "plus": APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square, APGD-T, FAB-T;
    * "rand": APGD-CE and APGD-DLR, each averaging 20 gradients per step.

    Differences from ``torchattacks.AutoAttack``: the number of classes comes from the
    model; APGD-T and FAB-T attack at most ``n_target_classes`` classes (9, or K - 1 when
    fewer exist); the DLR members are skipped, with a logged warning, on models with fewer
    than 3 classes (APGD-DLR) or 4 classes (APGD-T); Square's window fits the frame;
    ``seed`` defaults to 0 instead of the clock.

    Distance Measure: Linf

    Arguments:{COMMON_ARGUMENTS}
        version (str): "standard", "plus" or "rand". (Default: "standard")
        steps (int): iterations of APGD-CE, APGD-DLR, APGD-T and FAB. (Default: 10, as in
            torchattacks; the original AutoAttack uses 100)
        n_queries (int): queries of Square. (Default: 5000)
        n_target_classes (int, optional): target classes of APGD-T and FAB-T, at most K - 1.
            (Default: None, min(9, K - 1))
        seed (int, optional): seed of every member; None draws it from the clock like
            torchattacks. (Default: 0){VIDEO_ARGUMENTS}
{SHAPES}

    Cost: ``passes`` counts every forward and backward pass of every member exactly,
    including the evaluations that ``MultiAttack`` runs between members.

    Examples::
        >>> atk = VideoAutoAttack(model, eps=8/255, version="standard")
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, version="standard", steps=10, n_queries=5000,
                 n_target_classes=None, seed=0, time_dim=2, output_to_logits=None):
        super().__init__(model, eps=eps, name="VideoAutoAttack", time_dim=time_dim,
                         output_to_logits=output_to_logits)
        self.version = version
        self.steps = steps
        self.n_queries = n_queries
        self.n_target_classes = n_target_classes
        self.seed = seed
        self._logged_skips = set()
        self.check_params()

    def check_params(self) -> None:
        super().check_params()
        _check_choice("version", self.version, AUTOATTACK_VERSIONS)
        _check_int("steps", self.steps, 1)
        _check_int("n_queries", self.n_queries, 1)
        if self.n_target_classes is not None:
            _check_int("n_target_classes", self.n_target_classes, 1)
        _check_seed(self.seed)

    def members(self, num_classes: int) -> List[str]:
        """Names of the members that run on a model with ``num_classes`` classes, in order."""
        return [name for name, _ in self._member_builders(num_classes)]

    def _member_builders(self, num_classes: int) -> List[Tuple[str, Callable]]:
        eps, steps, targets = self.eps, self.steps, self.n_target_classes
        seed = _resolve_seed(self.seed)

        def apgd_ce(model, restarts=1, eot_iter=1):
            return _apgd(model, eps, steps, restarts, seed, "ce", eot_iter)

        def apgd_dlr(model, restarts=1, eot_iter=1):
            return _apgd(model, eps, steps, restarts, seed, "dlr", eot_iter)

        def apgd_t(model):
            return _apgdt(model, eps, steps, 1, seed, num_classes, targets)

        def fab(model, multi_targeted, restarts):
            return _fab(model, eps, steps, restarts, seed, num_classes, multi_targeted, targets)

        def square(model):
            return _square(model, eps, self.n_queries, 1, seed, p_init=0.8)

        if self.version == "standard":
            members = [
                ("APGD-CE", apgd_ce),
                ("APGD-T", apgd_t),
                ("FAB-T", lambda model: fab(model, True, 1)),
                ("Square", square),
            ]
        elif self.version == "plus":
            members = [
                ("APGD-CE", lambda model: apgd_ce(model, restarts=5)),
                ("APGD-DLR", lambda model: apgd_dlr(model, restarts=5)),
                ("FAB", lambda model: fab(model, False, 5)),
                ("Square", square),
                ("APGD-T", apgd_t),
                ("FAB-T", lambda model: fab(model, True, 1)),
            ]
        else:
            members = [
                ("APGD-CE", lambda model: apgd_ce(model, eot_iter=20)),
                ("APGD-DLR", lambda model: apgd_dlr(model, eot_iter=20)),
            ]

        minimum = {"APGD-DLR": MIN_CLASSES_DLR, "APGD-T": MIN_CLASSES_TARGETED_DLR}
        kept = [(name, build) for name, build in members if num_classes >= minimum.get(name, 2)]
        skipped = [name for name, _ in members if num_classes < minimum.get(name, 2)]
        if skipped and num_classes not in self._logged_skips:
            self._logged_skips.add(num_classes)
            logger.warning(
                "%s: skipped %s on a model with %d classes; the DLR loss needs at least %d "
                "classes and its targeted form (APGD-T) at least %d",
                self.attack, ", ".join(skipped), num_classes, MIN_CLASSES_DLR,
                MIN_CLASSES_TARGETED_DLR,
            )
        return kept

    def build_image_attack(self, image_model, num_classes):
        attacks = [build(image_model) for _, build in self._member_builders(num_classes)]
        if len(attacks) == 1:
            return attacks[0]
        return MultiAttack(attacks)
