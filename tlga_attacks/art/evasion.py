"""The attack family as ART evasion attacks on a ``PyTorchClassifier``.

Each class here runs the torchattacks attack of the same name from ``tlga_attacks.attacks``,
so both toolkits share one attack loop. The attack runs on ``AttackInputModel``
(``tlga_attacks.art.inputs``), which puts the estimator's axis order, ``clip_values`` range
and predict-time preprocessing in front of ``estimator.model``, every step differentiable.
That module also lists the supported video layouts.

Units follow ART: ``eps`` is in the units of ``x``. With ``clip_values=(min, max)`` the attack
runs on ``(x - min) / (max - min)`` with ``eps / (max - min)``, maps the result back and
projects it once more onto the eps-ball and ``clip_values`` in float32, so that
``|x_adv - x| <= eps`` and ``min <= x_adv <= max`` hold exactly.
"""

import inspect
import logging
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from .. import attacks as torch_attacks
from ..attacks.base import MoEAttack
from ..hooks import MoEInspector
from ..validation import RANGE_TOLERANCE, check_attack_params
from .inputs import (
    AttackInputModel,
    EstimatorPreprocessing,
    VideoLayout,
    check_estimator,
    clip_bounds,
    index_labels,
    prefixed_paths,
    project_linf,
    video_layout,
)

__all__ = [
    "JTLA",
    "JTLGA",
    "PGDR",
    "TLAE",
    "TLAM",
    "TLAR",
    "TLGAR",
    "AttackInputModel",
    "EstimatorPreprocessing",
    "MoEEvasionAttack",
    "VideoLayout",
    "check_estimator",
    "clip_bounds",
    "index_labels",
    "project_linf",
    "video_layout",
]

logger = logging.getLogger(__name__)

# -- the ART attacks ---------------------------------------------------------------------------


def _torch_default(attack_class: type, name: str):
    """Default of a keyword of a torchattacks attack of the family, so that both toolkits
    share their defaults."""
    for owner in (attack_class, MoEAttack):
        parameter = inspect.signature(owner.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise KeyError(f"{attack_class.__name__} has no default for {name!r}")


COMMON_PARAMS = [
    "eps", "alpha", "steps", "random_start", "restarts", "early_stop", "time_dim", "batch_size", "verbose"
]
ROUTER_PARAMS = ["routers", "experts", "top_k"]


class MoEEvasionAttack(EvasionAttack):
    """Base class of the ART versions of the attack family; see the subclasses.

    A subclass names its torchattacks attack in ``torch_attack`` and lists its
    hyperparameters in ``attack_params``. ``generate`` runs that attack, batch by batch, on an
    ``AttackInputModel`` around the estimator's model.
    """

    torch_attack: type = MoEAttack
    attack_params = EvasionAttack.attack_params + COMMON_PARAMS
    _estimator_requirements = (PyTorchClassifier,)

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = 8 / 255,
        alpha: float = 0.5,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = True,
        beta: float = 0.9,
        lam: float = 1e-3,
        gamma1: float = 1.0,
        gamma2: float = 1.0,
        targeted: bool = False,
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        check_estimator(estimator, type(self))
        super().__init__(estimator=estimator)

        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.random_start = random_start
        self.restarts = restarts
        self.early_stop = early_stop
        self.beta = beta
        self.lam = lam
        self.gamma1 = gamma1
        self.gamma2 = gamma2
        self._targeted = targeted
        self.time_dim = time_dim
        self.routers = routers
        self.experts = experts
        self.top_k = top_k
        self.batch_size = batch_size
        self.verbose = verbose
        self._passes = {"forward": 0, "backward": 0}
        self._check_params()

    # -- parameters ----------------------------------------------------------------------------

    def _check_params(self) -> None:
        super()._check_params()

        low, high = clip_bounds(self.estimator)
        span = high - low
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps <= span:
            raise ValueError(
                f"eps={eps!r} is invalid: pass a number from 0 to clip_max - clip_min = {span:g}, "
                "in the units of x (for example 8/255 for clip_values=(0, 1), 8 for (0, 255))"
            )

        layout = video_layout(self.estimator, self.time_dim)
        check_attack_params(
            eps / span,
            self.alpha,
            self.steps,
            restarts=self.restarts,
            beta=self.beta,
            gamma1=self.gamma1,
            gamma2=self.gamma2,
            lam=self.lam,
            time_dim=layout.attack_time_dim,
            random_start=self.random_start,
            early_stop=self.early_stop,
        )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} is invalid: pass an int >= 1")
        if not isinstance(self.verbose, bool):
            raise ValueError(f"verbose={self.verbose!r} is invalid: pass True or False")
        if not isinstance(self.targeted, bool):
            raise ValueError(f"targeted={self.targeted!r} is invalid: pass True or False")
        if self.targeted and not self.torch_attack.supports_targeted:
            raise ValueError(
                f"targeted=True is invalid for {type(self).__name__}, which has no targeted mode; "
                "use TLAM, JTLA or JTLGA for targeted attacks"
            )

        EstimatorPreprocessing(self.estimator, layout)
        if self.torch_attack.uses_router:
            # Raises RouterNotFoundError, naming the user's model, when no router is found.
            MoEInspector(self.estimator.model, self.routers, self.experts, self.top_k)

    @property
    def passes(self) -> dict:
        """Forward and backward passes of the model during the latest ``generate``, summed
        over batches."""
        return dict(self._passes)

    # -- attack --------------------------------------------------------------------------------

    def make_torch_attack(self) -> Tuple[MoEAttack, VideoLayout]:
        """Build the torchattacks attack on an ``AttackInputModel`` of the estimator.

        Returns the attack and the estimator's video layout. The attack takes videos in [0, 1]
        in the layout's attack order, with eps relative to that range.
        """
        low, high = clip_bounds(self.estimator)
        layout = video_layout(self.estimator, self.time_dim)
        model = AttackInputModel(
            self.estimator.model, layout, EstimatorPreprocessing(self.estimator, layout), low, high
        )

        keywords = dict(
            eps=self.eps / (high - low),
            alpha=self.alpha,
            steps=self.steps,
            random_start=self.random_start,
            restarts=self.restarts,
            early_stop=self.early_stop,
            beta=self.beta,
            lam=self.lam,
            gamma1=self.gamma1,
            gamma2=self.gamma2,
            time_dim=layout.attack_time_dim,
        )
        if self.torch_attack.uses_router:
            keywords.update(
                routers=prefixed_paths(self.routers), experts=prefixed_paths(self.experts), top_k=self.top_k
            )

        attack = self.torch_attack(model, **keywords)
        if self.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack, layout

    def generate(self, x: np.ndarray, y: Optional[np.ndarray] = None, **kwargs) -> np.ndarray:
        """Generate adversarial videos.

        Args:
            x: videos of shape (N, *estimator.input_shape) within ``clip_values``; converted
                to float32.
            y: true labels (target labels when ``targeted``), class indices of shape (N,) or
                one-hot of shape (N, nb_classes). With None, the classifier's predictions are
                the labels (not allowed when ``targeted``).

        Returns:
            float32 array of the shape of ``x``, with ``|x_adv - x| <= eps`` and within
            ``clip_values``.
        """
        if kwargs:
            raise ValueError(
                f"{type(self).__name__}.generate got unsupported keyword arguments "
                f"{sorted(kwargs)}; pass only x and y"
            )

        videos = self._check_videos(x)
        if videos.shape[0] == 0:
            return videos.copy()

        labels = self._labels(videos, y)
        low, high = clip_bounds(self.estimator)
        attack, layout = self.make_torch_attack()
        # NOTE: tested only with CPU estimators; the CUDA path (device_type="gpu") has not run.
        device = self.estimator.device

        x_adv = np.empty_like(videos)
        self._passes = {"forward": 0, "backward": 0}
        starts = range(0, videos.shape[0], self.batch_size)
        for start in tqdm(starts, desc=type(self).__name__, disable=not self.verbose):
            end = start + self.batch_size
            batch = torch.from_numpy(videos[start:end]).to(device)
            batch_labels = torch.from_numpy(labels[start:end]).to(device)

            unit = layout.to_attack(batch)
            if (low, high) != (0.0, 1.0):
                unit = ((unit - low) / (high - low)).clamp(0.0, 1.0)

            adv_unit = attack(unit, batch_labels)
            for key, count in attack.passes.items():
                self._passes[key] += count

            adv = layout.from_attack(adv_unit)
            if (low, high) != (0.0, 1.0):
                # Pixels the attack left alone keep their exact input value.
                unchanged = layout.from_attack(adv_unit == unit)
                adv = torch.where(unchanged, batch, low + adv * (high - low))
            x_adv[start:end] = adv.detach().cpu().numpy()

        x_adv = project_linf(x_adv, videos, self.eps, low, high)
        logger.info(
            "%s: %d videos, %d forward and %d backward passes",
            type(self).__name__, videos.shape[0], self._passes["forward"], self._passes["backward"],
        )
        return x_adv

    def _check_videos(self, x) -> np.ndarray:
        x = np.asarray(x)
        input_shape = tuple(self.estimator.input_shape)
        if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
            raise ValueError(
                f"x has shape {x.shape}, but the estimator's input_shape is {input_shape}; pass "
                f"videos of shape (N, {', '.join(map(str, input_shape))})"
            )
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")

        videos = x.astype(np.float32)
        if videos.size == 0:
            return videos
        if not np.isfinite(videos).all():
            raise ValueError("x contains NaN or infinite values; the attacks need finite input")

        low, high = clip_bounds(self.estimator)
        tolerance = RANGE_TOLERANCE * (high - low)
        if videos.min() < low - tolerance or videos.max() > high + tolerance:
            raise ValueError(
                f"x has values from {videos.min():.6g} to {videos.max():.6g}, outside the "
                f"estimator's clip_values ({low:g}, {high:g}); pass videos in that range "
                "(unnormalized: the estimator's preprocessing normalizes them)"
            )
        return np.clip(videos, np.float32(low), np.float32(high))

    def _labels(self, videos: np.ndarray, y) -> np.ndarray:
        if y is not None:
            return index_labels(y, videos.shape[0], self.estimator.nb_classes)
        if self.targeted:
            raise ValueError("y=None is invalid with targeted=True; pass the target labels as y")

        predictions = self.estimator.predict(videos, batch_size=self.batch_size)
        return predictions.argmax(axis=1).astype(np.int64)


# -- the seven attacks -------------------------------------------------------------------------

_ARGUMENTS = """
    Args:
        estimator: an ART ``PyTorchClassifier`` of videos, with ``clip_values``; its layout
            and preprocessing are described in ``tlga_attacks.art.inputs``.
        eps: maximum L-infinity perturbation, in the units of x. (Default: {eps})
        alpha: step size relative to eps. (Default: {alpha})
        steps: number of steps. (Default: {steps})
        random_start: start at a uniform random point of the eps-ball. (Default: {random_start})
        restarts: random restarts of the clips not yet fooled. (Default: {restarts})
        early_stop: return per clip the first iterate that fools the model. False runs every
            step and returns the last iterate, as adversarial training (e.g. ART's
            ``AdversarialTrainer``) expects. (Default: {early_stop})
{extra}        time_dim: None (from ``channels_first``), 2 for (N, C, T, H, W), 1 for
            (N, T, C, H, W) or (N, T, H, W, C). (Default: None)
        batch_size: videos per attack batch. (Default: 32)
        verbose: show a tqdm progress bar over batches. (Default: True)"""

_ROUTER_ARGUMENTS = """        routers: module paths of the routers inside ``estimator.model``. (Default: None,
            found by ``MoEInspector``)
        experts: per router, the path of its experts container. (Default: None)
        top_k: experts per routing unit for layers that do not expose it. (Default: None)
"""

_EXTRA_ARGUMENTS = {
    "beta": "        beta: decay of the per-frame gradient-norm accumulator. (Default: {beta})\n",
    "lam": "        lam: weight of the Lipschitz ratio terms. (Default: {lam})\n",
    "gamma1": "        gamma1: weight of the weakest-expert guidance. (Default: {gamma1})\n",
    "gamma2": "        gamma2: weight of the router objective. (Default: {gamma2})\n",
    "targeted": "        targeted: treat y as target labels. (Default: False)\n",
}


def _format_eps(eps: float) -> str:
    pixels = eps * 255
    return f"{round(pixels)}/255" if abs(pixels - round(pixels)) < 1e-9 else f"{eps:g}"


def _art_doc(attack_class: type, extra: Sequence[str], example: str) -> str:
    defaults = {
        name: _torch_default(attack_class, name)
        for name in (
            "eps", "alpha", "steps", "random_start", "restarts", "early_stop", "beta", "lam", "gamma1", "gamma2"
        )
    }
    defaults["eps"] = _format_eps(defaults["eps"])
    extra_text = "".join(_EXTRA_ARGUMENTS[name] for name in extra)
    if attack_class.uses_router:
        extra_text += _ROUTER_ARGUMENTS
    summary = (attack_class.__doc__ or "").strip().splitlines()[0]
    return f"""ART version of {attack_class.__name__}: {summary}

    Runs ``tlga_attacks.{attack_class.__name__}`` (see its docstring for the objective and
    step) on the estimator's model behind the estimator's input mapping.
{_ARGUMENTS.format(extra=extra_text.format(**defaults), **defaults)}

    Shape:
        - x: (N, *estimator.input_shape), within ``clip_values``.
        - y: (N,) class indices or (N, nb_classes) one-hot; None uses the predictions.
        - output: float32 of the shape of x.

    Example::

{example}
    """


class PGDR(MoEEvasionAttack):
    torch_attack = torch_attacks.PGDR
    attack_params = MoEEvasionAttack.attack_params + ROUTER_PARAMS
    __doc__ = _art_doc(torch_attacks.PGDR, [], """        >>> from tlga_attacks.art import PGDR
        >>> attack = PGDR(classifier, eps=8 / 255, steps=10)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.PGDR, "eps"),
        alpha: float = _torch_default(torch_attacks.PGDR, "alpha"),
        steps: int = _torch_default(torch_attacks.PGDR, "steps"),
        random_start: bool = _torch_default(torch_attacks.PGDR, "random_start"),
        restarts: int = _torch_default(torch_attacks.PGDR, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.PGDR, "early_stop"),
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, time_dim=time_dim, routers=routers, experts=experts,
            top_k=top_k, batch_size=batch_size, verbose=verbose,
        )


class TLAR(MoEEvasionAttack):
    torch_attack = torch_attacks.TLAR
    attack_params = MoEEvasionAttack.attack_params + ROUTER_PARAMS + ["beta", "lam"]
    __doc__ = _art_doc(torch_attacks.TLAR, ["beta", "lam"], """        >>> from tlga_attacks.art import TLAR
        >>> attack = TLAR(classifier, eps=8 / 255)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.TLAR, "eps"),
        alpha: float = _torch_default(torch_attacks.TLAR, "alpha"),
        steps: int = _torch_default(torch_attacks.TLAR, "steps"),
        random_start: bool = _torch_default(torch_attacks.TLAR, "random_start"),
        restarts: int = _torch_default(torch_attacks.TLAR, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.TLAR, "early_stop"),
        beta: float = _torch_default(torch_attacks.TLAR, "beta"),
        lam: float = _torch_default(torch_attacks.TLAR, "lam"),
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, beta=beta, lam=lam, time_dim=time_dim, routers=routers,
            experts=experts, top_k=top_k, batch_size=batch_size, verbose=verbose,
        )


class TLGAR(MoEEvasionAttack):
    torch_attack = torch_attacks.TLGAR
    attack_params = MoEEvasionAttack.attack_params + ROUTER_PARAMS + ["beta", "lam", "gamma1"]
    __doc__ = _art_doc(torch_attacks.TLGAR, ["beta", "lam", "gamma1"], """        >>> from tlga_attacks.art import TLGAR
        >>> attack = TLGAR(classifier, eps=8 / 255, gamma1=1.0)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.TLGAR, "eps"),
        alpha: float = _torch_default(torch_attacks.TLGAR, "alpha"),
        steps: int = _torch_default(torch_attacks.TLGAR, "steps"),
        random_start: bool = _torch_default(torch_attacks.TLGAR, "random_start"),
        restarts: int = _torch_default(torch_attacks.TLGAR, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.TLGAR, "early_stop"),
        beta: float = _torch_default(torch_attacks.TLGAR, "beta"),
        lam: float = _torch_default(torch_attacks.TLGAR, "lam"),
        gamma1: float = _torch_default(torch_attacks.TLGAR, "gamma1"),
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, beta=beta, lam=lam, gamma1=gamma1, time_dim=time_dim,
            routers=routers, experts=experts, top_k=top_k, batch_size=batch_size,
            verbose=verbose,
        )


class TLAE(MoEEvasionAttack):
    torch_attack = torch_attacks.TLAE
    attack_params = MoEEvasionAttack.attack_params + ROUTER_PARAMS + ["beta", "lam"]
    __doc__ = _art_doc(torch_attacks.TLAE, ["beta", "lam"], """        >>> from tlga_attacks.art import TLAE
        >>> attack = TLAE(classifier, eps=8 / 255)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.TLAE, "eps"),
        alpha: float = _torch_default(torch_attacks.TLAE, "alpha"),
        steps: int = _torch_default(torch_attacks.TLAE, "steps"),
        random_start: bool = _torch_default(torch_attacks.TLAE, "random_start"),
        restarts: int = _torch_default(torch_attacks.TLAE, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.TLAE, "early_stop"),
        beta: float = _torch_default(torch_attacks.TLAE, "beta"),
        lam: float = _torch_default(torch_attacks.TLAE, "lam"),
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, beta=beta, lam=lam, time_dim=time_dim, routers=routers,
            experts=experts, top_k=top_k, batch_size=batch_size, verbose=verbose,
        )


class TLAM(MoEEvasionAttack):
    torch_attack = torch_attacks.TLAM
    attack_params = MoEEvasionAttack.attack_params + ["beta", "lam", "targeted"]
    __doc__ = _art_doc(torch_attacks.TLAM, ["beta", "lam", "targeted"], """        >>> from tlga_attacks.art import TLAM
        >>> attack = TLAM(classifier, eps=8 / 255)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.TLAM, "eps"),
        alpha: float = _torch_default(torch_attacks.TLAM, "alpha"),
        steps: int = _torch_default(torch_attacks.TLAM, "steps"),
        random_start: bool = _torch_default(torch_attacks.TLAM, "random_start"),
        restarts: int = _torch_default(torch_attacks.TLAM, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.TLAM, "early_stop"),
        beta: float = _torch_default(torch_attacks.TLAM, "beta"),
        lam: float = _torch_default(torch_attacks.TLAM, "lam"),
        targeted: bool = False,
        time_dim: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, beta=beta, lam=lam, targeted=targeted, time_dim=time_dim,
            batch_size=batch_size, verbose=verbose,
        )


class JTLA(MoEEvasionAttack):
    torch_attack = torch_attacks.JTLA
    attack_params = MoEEvasionAttack.attack_params + ROUTER_PARAMS + ["beta", "lam", "gamma2", "targeted"]
    __doc__ = _art_doc(torch_attacks.JTLA, ["beta", "lam", "gamma2", "targeted"], """        >>> from tlga_attacks.art import JTLA
        >>> attack = JTLA(classifier, eps=8 / 255)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.JTLA, "eps"),
        alpha: float = _torch_default(torch_attacks.JTLA, "alpha"),
        steps: int = _torch_default(torch_attacks.JTLA, "steps"),
        random_start: bool = _torch_default(torch_attacks.JTLA, "random_start"),
        restarts: int = _torch_default(torch_attacks.JTLA, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.JTLA, "early_stop"),
        beta: float = _torch_default(torch_attacks.JTLA, "beta"),
        lam: float = _torch_default(torch_attacks.JTLA, "lam"),
        gamma2: float = _torch_default(torch_attacks.JTLA, "gamma2"),
        targeted: bool = False,
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, beta=beta, lam=lam, gamma2=gamma2, targeted=targeted,
            time_dim=time_dim, routers=routers, experts=experts, top_k=top_k,
            batch_size=batch_size, verbose=verbose,
        )


class JTLGA(MoEEvasionAttack):
    torch_attack = torch_attacks.JTLGA
    attack_params = (
        MoEEvasionAttack.attack_params + ROUTER_PARAMS + ["beta", "lam", "gamma1", "gamma2", "targeted"]
    )
    __doc__ = _art_doc(torch_attacks.JTLGA, ["beta", "lam", "gamma1", "gamma2", "targeted"], """        >>> from tlga_attacks.art import JTLGA
        >>> attack = JTLGA(classifier, eps=8 / 255)
        >>> x_adv = attack.generate(x, y)""")

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = _torch_default(torch_attacks.JTLGA, "eps"),
        alpha: float = _torch_default(torch_attacks.JTLGA, "alpha"),
        steps: int = _torch_default(torch_attacks.JTLGA, "steps"),
        random_start: bool = _torch_default(torch_attacks.JTLGA, "random_start"),
        restarts: int = _torch_default(torch_attacks.JTLGA, "restarts"),
        early_stop: bool = _torch_default(torch_attacks.JTLGA, "early_stop"),
        beta: float = _torch_default(torch_attacks.JTLGA, "beta"),
        lam: float = _torch_default(torch_attacks.JTLGA, "lam"),
        gamma1: float = _torch_default(torch_attacks.JTLGA, "gamma1"),
        gamma2: float = _torch_default(torch_attacks.JTLGA, "gamma2"),
        targeted: bool = False,
        time_dim: Optional[int] = None,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        batch_size: int = 32,
        verbose: bool = True,
    ):
        super().__init__(
            estimator, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
            restarts=restarts, early_stop=early_stop, beta=beta, lam=lam, gamma1=gamma1, gamma2=gamma2,
            targeted=targeted, time_dim=time_dim, routers=routers, experts=experts,
            top_k=top_k, batch_size=batch_size, verbose=verbose,
        )
