"""Video-safe FGSM and PGD, and the registry of baselines used by the benchmark.

torchattacks 3.5.1's FGSM and PGD compute correctly on (N, C, T, H, W) tensors, but their
``set_normalization_used`` reshapes mean and std to (1, C, 1, 1), which raises on 5-D input
(or, when T == C, normalizes frame t with the statistics of channel t). ``VideoFGSM`` and
``VideoPGD`` run torchattacks' own ``forward`` with the video conventions of
``VideoAttackMixin``.
"""

from typing import Callable, Dict, Optional

import torchattacks
from torchattacks.attack import Attack

from .adapter import (
    SHAPES,
    VIDEO_ARGUMENTS,
    VideoAPGD,
    VideoAPGDT,
    VideoAttackMixin,
    VideoAutoAttack,
    VideoFAB,
    VideoSquare,
)
from .tt import TT

__all__ = ["BASELINES", "VideoFGSM", "VideoPGD", "make_baseline"]


class VideoFGSM(VideoAttackMixin, torchattacks.FGSM):
    __doc__ = f"""FGSM on a video model: ``torchattacks.FGSM`` with video normalization.

    Paper: 'Explaining and harnessing adversarial examples', I. Goodfellow, J. Shlens and
    C. Szegedy, ICLR 2015 [https://arxiv.org/abs/1412.6572]

    Distance Measure: Linf

    Arguments:
        model (nn.Module): the video model. Its forward may return logits, a tuple
            ``(logits, ...)`` or a dict with ``"logits"``.
        eps (float): maximum L-infinity perturbation in [0, 1] pixel units.
            (Default: 8/255){VIDEO_ARGUMENTS}
{SHAPES}

    Supports torchattacks' targeted modes.

    Cost: one forward and one backward pass, plus one forward pass when labels are missing;
    ``passes`` counts them exactly.

    Examples::
        >>> atk = VideoFGSM(model, eps=8/255)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, time_dim=2, output_to_logits=None):
        torchattacks.FGSM.__init__(self, model, eps=eps)
        self._init_video(eps, time_dim, output_to_logits)

    def forward(self, inputs, labels=None):
        """Attack a batch of videos; see the class docstring."""
        videos, x, labels = self._prepare(inputs, labels)
        if videos.shape[0] == 0:
            return inputs.clone()

        adv = super().forward(x, labels)
        return self._finish(adv, x, videos, inputs)


class VideoPGD(VideoAttackMixin, torchattacks.PGD):
    __doc__ = f"""PGD on a video model: ``torchattacks.PGD`` with video normalization.

    Paper: 'Towards Deep Learning Models Resistant to Adversarial Attacks', A. Madry,
    A. Makelov, L. Schmidt, D. Tsipras and A. Vladu, ICLR 2018
    [https://arxiv.org/abs/1706.06083]

    Distance Measure: Linf

    Arguments:
        model (nn.Module): the video model. Its forward may return logits, a tuple
            ``(logits, ...)`` or a dict with ``"logits"``.
        eps (float): maximum L-infinity perturbation in [0, 1] pixel units. (Default: 8/255)
        alpha (float): step size in pixel units. (Default: 2/255)
        steps (int): number of steps. (Default: 10)
        random_start (bool): start at a uniform random point of the eps-ball. (Default: True)
        seed (int, optional): seed of the random start, drawn from a private generator so
            that the caller's random stream is left alone. (Default: None, the global
            generator){VIDEO_ARGUMENTS}
{SHAPES}

    Supports torchattacks' targeted modes. The last iterate is returned.

    Cost: ``steps`` forward and backward passes, plus one forward pass when labels are
    missing; ``passes`` counts them exactly.

    Examples::
        >>> atk = VideoPGD(model, eps=8/255, alpha=2/255, steps=10)
        >>> adv_videos = atk(videos, labels)
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True,
                 seed=None, time_dim=2, output_to_logits=None):
        torchattacks.PGD.__init__(
            self, model, eps=eps, alpha=alpha, steps=steps, random_start=random_start
        )
        self._init_video(eps, time_dim, output_to_logits, seed)

    def forward(self, inputs, labels=None):
        """Attack a batch of videos; see the class docstring."""
        videos, x, labels = self._prepare(inputs, labels)
        if videos.shape[0] == 0:
            return inputs.clone()

        adv = super().forward(x, labels)
        return self._finish(adv, x, videos, inputs)


# -- the registry ----------------------------------------------------------------------------

BaselineFactory = Callable[..., Attack]


def _fgsm(model, eps, steps=1, seed=None, **kwargs):
    # FGSM takes one step and draws nothing at random, so steps and seed are unused.
    return VideoFGSM(model, eps=eps, **kwargs)


def _pgd(model, eps, steps=10, seed=None, **kwargs):
    kwargs.setdefault("alpha", eps / 4)
    return VideoPGD(model, eps=eps, steps=steps, seed=seed, **kwargs)


def _autoattack(model, eps, steps=10, seed=0, **kwargs):
    return VideoAutoAttack(model, eps=eps, steps=steps, seed=seed, **kwargs)


def _apgd_ce(model, eps, steps=10, seed=0, **kwargs):
    return VideoAPGD(model, eps=eps, steps=steps, seed=seed, loss="ce", **kwargs)


def _apgd_t(model, eps, steps=10, seed=0, **kwargs):
    return VideoAPGDT(model, eps=eps, steps=steps, seed=seed, **kwargs)


def _fab(model, eps, steps=10, seed=0, **kwargs):
    return VideoFAB(model, eps=eps, steps=steps, seed=seed, **kwargs)


def _square(model, eps, steps=None, seed=0, **kwargs):
    # Square's budget is n_queries (a keyword argument), not steps.
    return VideoSquare(model, eps=eps, seed=seed, **kwargs)


def _tt(model, eps, steps=10, seed=None, **kwargs):
    # TT requires alpha > 0; at eps = 0 the projection keeps the clip unchanged anyway.
    kwargs.setdefault("alpha", eps / 4 if eps > 0 else 1 / 255)
    return TT(model, eps=eps, steps=steps, seed=seed, **kwargs)


BASELINES: Dict[str, BaselineFactory] = {
    "fgsm": _fgsm,
    "pgd": _pgd,
    "autoattack": _autoattack,
    "apgd-ce": _apgd_ce,
    "apgd-t": _apgd_t,
    "fab": _fab,
    "square": _square,
    "tt": _tt,
}


def make_baseline(name: str, model, eps: float = 8 / 255, steps: int = 10,
                  seed: Optional[int] = 0, **kwargs) -> Attack:
    """Build the baseline registered as ``name`` in ``BASELINES``.

    Every factory has the signature ``factory(model, eps, steps, seed, **kwargs)`` and
    returns a torchattacks attack on the video model; ``kwargs`` go to the attack's
    constructor (``time_dim``, ``n_queries``, ``alpha``, ...). Choices made by the factories:

    * "fgsm": one step of size eps; ``steps`` and ``seed`` are unused.
    * "pgd" and "tt": ``alpha`` defaults to eps / 4 (torchattacks' 2/255 at 8/255); ``seed``
      seeds the random start, None uses the global generator.
    * "autoattack": the standard version; ``steps`` for APGD and FAB, Square keeps 5000
      queries unless ``n_queries`` is given.
    * "apgd-ce", "apgd-t", "fab": ``steps`` iterations, ``seed`` as in torchattacks.
    * "square": ``steps`` is unused; pass ``n_queries`` (default 5000).

    The ``passes`` attribute of every returned attack counts the forward and backward passes
    of its latest call exactly (a hook on the logits sees each backward pass); Square only
    makes forward passes.

    Raises:
        ValueError: for an unknown name.

    Example::

        >>> atk = make_baseline("pgd", model, eps=8/255, steps=10)
        >>> adv_videos = atk(videos, labels)
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name](model, eps, steps, seed, **kwargs)
