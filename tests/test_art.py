"""The ART integration: the attack family as ART evasion attacks, and ART's AutoAttack and
SquareAttack on video classifiers through the image adapter."""

import numpy as np
import pytest
import torch
from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
from art.defences.preprocessor import SpatialSmoothing
from art.defences.trainer import AdversarialTrainer
from art.estimators.classification import BlackBoxClassifier, PyTorchClassifier
from art.exceptions import EstimatorError
from art.preprocessing.expectation_over_transformation import EoTBrightnessPyTorch
from torch import nn

from moe_testing import NUM_CLASSES, ClipMoE, OddNamesMoE, TimeFirst, make_clips, trained_clip_moe
from tlga_attacks import JTLGA as TorchJTLGA
from tlga_attacks import RouterNotFoundError
from tlga_attacks.art import (
    JTLA,
    JTLGA,
    PGDR,
    TLAE,
    TLAM,
    TLAR,
    TLGAR,
    AttackInputModel,
    EstimatorPreprocessing,
    VideoAutoAttack,
    VideoSquareAttack,
    as_image_classifier,
    video_layout,
    video_to_image,
)

ALL_ATTACKS = [PGDR, TLAR, TLGAR, TLAE, TLAM, JTLA, JTLGA]
EPS = 8 / 255
MEAN = [0.45, 0.40, 0.35]
STD = [0.25, 0.22, 0.20]


def classifier(model, input_shape=(3, 4, 16, 16), **kwargs):
    kwargs.setdefault("clip_values", (0.0, 1.0))
    return PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=NUM_CLASSES,
        device_type="cpu",
        **kwargs,
    )


def clips(n=4, seed=0):
    videos, labels = make_clips(n, seed=seed)
    return videos.numpy(), labels.numpy()


def moe(seed=0):
    torch.manual_seed(seed)
    return ClipMoE().eval()


class ChannelsLast(nn.Module):
    """Takes (N, T, H, W, C) videos and runs a (N, C, T, H, W) model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 4, 1, 2, 3))


class OddNamesLogits(nn.Module):
    """A MoE whose router and experts have names the search does not know, returning logits."""

    def __init__(self):
        super().__init__()
        self.inner = OddNamesMoE()

    def forward(self, x):
        return self.inner(x)["logits"]


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


# -- every attack: ART conventions --------------------------------------------------------------


@pytest.mark.parametrize("attack_class", ALL_ATTACKS, ids=lambda c: c.__name__)
def test_art_attack_stays_in_eps_ball(attack_class):
    x, y = clips()
    attack = attack_class(classifier(moe()), eps=EPS, steps=2, verbose=False)

    adv = attack.generate(x, y)

    assert adv.shape == x.shape
    assert adv.dtype == np.float32
    assert np.abs(adv - x).max() <= EPS
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0
    assert np.abs(adv - x).max() > 0


@pytest.mark.parametrize("attack_class", ALL_ATTACKS, ids=lambda c: c.__name__)
def test_art_attack_one_hot_and_index_labels_agree(attack_class):
    x, y = clips()
    attack = attack_class(classifier(moe()), steps=2, random_start=False, verbose=False)

    from_index = attack.generate(x, y)
    from_one_hot = attack.generate(x, np.eye(NUM_CLASSES, dtype=np.float32)[y])

    assert np.array_equal(from_index, from_one_hot)


@pytest.mark.parametrize("attack_class", ALL_ATTACKS, ids=lambda c: c.__name__)
def test_art_attack_without_labels_uses_predictions(attack_class):
    x, _ = clips()
    estimator = classifier(moe())
    attack = attack_class(estimator, steps=2, random_start=False, verbose=False)
    predictions = estimator.predict(x).argmax(axis=1)

    without_labels = attack.generate(x)
    with_predictions = attack.generate(x, predictions)

    assert np.array_equal(without_labels, with_predictions)


@pytest.mark.parametrize(
    "name, value",
    [
        ("eps", -0.1),
        ("eps", 1.5),
        ("alpha", 0.0),
        ("steps", -1),
        ("steps", 2.5),
        ("restarts", 0),
        ("random_start", "yes"),
        ("early_stop", "no"),
        ("beta", 1.5),
        ("lam", -1.0),
        ("gamma1", -1.0),
        ("gamma2", float("nan")),
        ("time_dim", 3),
        ("batch_size", 0),
        ("verbose", 1),
        ("targeted", "no"),
        ("top_k", 0),
    ],
)
def test_art_attack_bad_param_raises_value_error(name, value):
    with pytest.raises(ValueError, match=name):
        JTLGA(classifier(moe()), **{name: value})


def test_set_params_checks_new_value():
    attack = JTLGA(classifier(moe()), verbose=False)

    with pytest.raises(ValueError, match="steps"):
        attack.set_params(steps=-3)


def test_set_params_rejects_param_of_other_attack():
    attack = PGDR(classifier(moe()), verbose=False)

    with pytest.raises(ValueError, match="lam"):
        attack.set_params(lam=0.1)


def test_set_params_changes_next_generate():
    x, y = clips()
    attack = JTLGA(classifier(moe()), steps=1, random_start=False, verbose=False)
    one_step = attack.generate(x, y)

    attack.set_params(steps=0)

    assert np.array_equal(attack.generate(x, y), x)
    assert not np.array_equal(one_step, x)


def test_router_attack_rejects_targeted_mode():
    attack = TLGAR(classifier(moe()), verbose=False)

    with pytest.raises(ValueError, match="targeted"):
        attack.set_params(targeted=True)


def test_targeted_attack_needs_labels():
    x, _ = clips()
    attack = JTLGA(classifier(moe()), targeted=True, verbose=False)

    with pytest.raises(ValueError, match="y=None"):
        attack.generate(x)


def test_targeted_attack_moves_toward_targets():
    x, y = clips()
    estimator = classifier(moe())
    targets = (estimator.predict(x).argmax(axis=1) + 1) % NUM_CLASSES
    attack = JTLGA(estimator, eps=0.1, steps=5, random_start=False, targeted=True, verbose=False)

    adv = attack.generate(x, targets)

    clean_logits = estimator.predict(x)
    adv_logits = estimator.predict(adv)
    rows = np.arange(len(x))
    assert np.all(adv_logits[rows, targets] - clean_logits[rows, targets] > 0)


def test_float64_input_gives_float32_output():
    x, y = clips()
    attack = TLAM(classifier(moe()), steps=1, verbose=False)

    adv = attack.generate(x.astype(np.float64), y)

    assert adv.dtype == np.float32


def test_bad_labels_raise_value_error():
    x, y = clips()
    attack = TLAM(classifier(moe()), steps=1, verbose=False)

    with pytest.raises(ValueError, match="labels for 4 samples"):
        attack.generate(x, y[:3])
    with pytest.raises(ValueError, match=r"y must be in \[0, 3\]"):
        attack.generate(x, y + NUM_CLASSES)


def test_batches_give_same_result_as_one_batch():
    x, y = clips()
    estimator = classifier(moe())

    whole = JTLGA(estimator, steps=2, random_start=False, batch_size=4, verbose=False).generate(x, y)
    pairs = JTLGA(estimator, steps=2, random_start=False, batch_size=2, verbose=False).generate(x, y)

    assert np.allclose(whole, pairs, atol=1e-6)


def test_art_attack_without_early_stop_runs_every_step():
    x, y = clips()
    model = moe()
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    # Labels that differ from every prediction: each clip counts as fooled from the start.
    wrong = (predictions + 1) % 4
    attack = JTLGA(classifier(model), eps=EPS, steps=3, random_start=False, early_stop=False, verbose=False)

    art_adv = attack.generate(x, wrong)
    torch_adv = TorchJTLGA(model, eps=EPS, steps=3, random_start=False, early_stop=False)(
        torch.from_numpy(x), torch.from_numpy(wrong)
    )

    assert attack.passes == {"forward": 4, "backward": 3}
    assert np.abs(art_adv - x).max() > 0
    assert np.allclose(art_adv, torch_adv.numpy(), atol=1e-6)


# -- the same function as ART's predict, and as torchattacks ------------------------------------


def test_art_jtlga_matches_torchattacks_with_normalization():
    x, y = clips()
    model = moe()
    estimator = classifier(model, preprocessing=(np.array(MEAN), np.array(STD)))
    art_adv = JTLGA(estimator, eps=EPS, steps=3, random_start=False, verbose=False).generate(x, y)

    torch_attack = TorchJTLGA(model, eps=EPS, steps=3, random_start=False)
    torch_attack.set_normalization_used(MEAN, STD)
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1, 1)
    normalized = (torch.from_numpy(x) - mean) / std
    torch_adv = torch_attack(normalized, torch.from_numpy(y)) * std + mean

    assert np.allclose(art_adv, torch_adv.numpy(), atol=1e-5)


LAYOUT_CASES = {
    "NCTHW per-channel mean": dict(layout=(0, 1, 2, 3, 4), preprocessing=(MEAN, STD)),
    "NTCHW mean (3, 1, 1)": dict(
        layout=(0, 2, 1, 3, 4),
        preprocessing=(np.reshape(MEAN, (3, 1, 1)), np.reshape(STD, (3, 1, 1))),
        time_dim=1,
    ),
    "NTHWC per-channel mean": dict(layout=(0, 2, 3, 4, 1), preprocessing=(MEAN, STD)),
    "NCTHW clip 0-255": dict(layout=(0, 1, 2, 3, 4), preprocessing=(0.0, 255.0), scale=255.0),
    "NCTHW torch defence": dict(
        layout=(0, 1, 2, 3, 4),
        preprocessing=(MEAN, STD),
        # A fixed brightness shift: one sample of a constant delta.
        defence=EoTBrightnessPyTorch(nb_samples=1, clip_values=(0.0, 1.0), delta=(0.1, 0.1)),
    ),
}


def layout_case(name, model):
    """The estimator, videos in its layout and its time_dim for a case of LAYOUT_CASES."""
    case = LAYOUT_CASES[name]
    x, y = clips()
    order = case["layout"]
    scale = case.get("scale", 1.0)
    videos = np.ascontiguousarray(x.transpose(order)) * np.float32(scale)

    if order == (0, 2, 1, 3, 4):
        model = TimeFirst(model)
    elif order == (0, 2, 3, 4, 1):
        model = ChannelsLast(model)

    estimator = classifier(
        model,
        input_shape=videos.shape[1:],
        channels_first=order != (0, 2, 3, 4, 1),
        clip_values=(0.0, scale),
        preprocessing=case["preprocessing"],
        preprocessing_defences=case.get("defence"),
    )
    return estimator, videos, y, case.get("time_dim")


@pytest.mark.parametrize("name", list(LAYOUT_CASES))
def test_attack_input_model_matches_predict(name):
    estimator, videos, _, time_dim = layout_case(name, moe())
    layout = video_layout(estimator, time_dim)
    low, high = estimator.clip_values
    wrapped = AttackInputModel(
        estimator.model, layout, EstimatorPreprocessing(estimator, layout), float(low), float(high)
    )

    unit = layout.to_attack(torch.from_numpy(videos) / float(high))
    with torch.no_grad():
        logits = wrapped(unit).numpy()

    assert np.allclose(logits, estimator.predict(videos), atol=1e-5)


@pytest.mark.parametrize("name", [n for n in LAYOUT_CASES if "defence" not in n and "0-255" not in n])
def test_art_jtlga_same_result_in_every_layout(name):
    model = moe()
    reference, x, y, _ = layout_case("NCTHW per-channel mean", model)
    estimator, videos, _, time_dim = layout_case(name, model)
    order = LAYOUT_CASES[name]["layout"]

    expected = JTLGA(reference, steps=3, random_start=False, verbose=False).generate(x, y)
    adv = JTLGA(estimator, steps=3, random_start=False, time_dim=time_dim, verbose=False).generate(videos, y)

    assert adv.shape == videos.shape
    assert np.allclose(adv.transpose(np.argsort(order)), expected, atol=1e-6)


def test_art_jtlga_clip_0_255_matches_unit_range():
    model = moe()
    x, y = clips()
    unit = classifier(model)
    pixels = classifier(model, clip_values=(0.0, 255.0), preprocessing=(0.0, 255.0))

    expected = JTLGA(unit, eps=EPS, steps=3, random_start=False, verbose=False).generate(x, y)
    adv = JTLGA(pixels, eps=8.0, steps=3, random_start=False, verbose=False).generate(x * 255, y)

    assert np.allclose(adv / 255, expected, atol=1e-5)
    assert np.abs(adv - x * 255).max() <= 8.0
    assert adv.min() >= 0.0
    assert adv.max() <= 255.0


def test_eps_larger_than_clip_range_rejected():
    with pytest.raises(ValueError, match="eps=2"):
        JTLGA(classifier(moe()), eps=2.0)


def test_per_channel_mean_on_time_first_input_rejected():
    with pytest.raises(ValueError, match=r"\(3, 1, 1\)"):
        JTLGA(
            classifier(TimeFirst(moe()), input_shape=(4, 3, 16, 16), preprocessing=(MEAN, STD)),
            time_dim=1,
        )


def test_numpy_preprocessing_defence_rejected():
    defence = SpatialSmoothing(window_size=3, channels_first=True)

    with pytest.raises(ValueError, match="SpatialSmoothing runs in numpy"):
        JTLGA(classifier(moe(), preprocessing_defences=defence))


def test_preprocessing_that_repeats_samples_rejected():
    repeat = EoTBrightnessPyTorch(nb_samples=2, clip_values=(0.0, 1.0), delta=0.1)

    with pytest.raises(ValueError, match="nb_samples=2"):
        JTLGA(classifier(moe(), preprocessing_defences=repeat))


def test_generate_rejects_unknown_keyword():
    x, y = clips()
    attack = TLAM(classifier(moe()), verbose=False)

    with pytest.raises(ValueError, match="mask"):
        attack.generate(x, y, mask=np.ones_like(x))


def test_channels_last_with_time_dim_2_rejected():
    estimator = classifier(ChannelsLast(moe()), input_shape=(4, 16, 16, 3), channels_first=False)

    with pytest.raises(ValueError, match="time_dim=2"):
        JTLGA(estimator, time_dim=2)


# -- bad estimators and inputs ------------------------------------------------------------------


def test_input_shape_mismatch_raises_value_error():
    x, y = clips()
    attack = JTLGA(classifier(moe()), verbose=False)

    with pytest.raises(ValueError, match=r"input_shape is \(3, 4, 16, 16\)"):
        attack.generate(x[:, :, :2], y)


def test_image_input_shape_rejected():
    with pytest.raises(ValueError, match="not the shape of one video"):
        JTLGA(classifier(moe(), input_shape=(3, 16, 16)))


def test_missing_clip_values_rejected():
    with pytest.raises(ValueError, match="clip_values"):
        JTLGA(classifier(moe(), clip_values=None))


def test_x_outside_clip_values_rejected():
    x, y = clips()
    attack = TLAM(classifier(moe()), verbose=False)

    with pytest.raises(ValueError, match="outside the estimator's clip_values"):
        attack.generate(x * 255, y)


def black_box():
    return BlackBoxClassifier(
        lambda x: np.zeros((len(x), NUM_CLASSES), dtype=np.float32),
        input_shape=(3, 4, 16, 16),
        nb_classes=NUM_CLASSES,
        clip_values=(0.0, 1.0),
    )


@pytest.mark.parametrize("build", [JTLGA, TLAM, VideoSquareAttack, VideoAutoAttack, as_image_classifier])
def test_non_pytorch_estimator_rejected(build):
    with pytest.raises(EstimatorError, match="needs an art.estimators.classification.PyTorchClassifier"):
        build(black_box())


def test_model_without_router_rejected():
    with pytest.raises(RouterNotFoundError, match="no MoE router found in DenseNet"):
        JTLGA(classifier(DenseNet()))


def test_tlam_runs_on_model_without_router():
    x, y = clips()
    torch.manual_seed(0)

    adv = TLAM(classifier(DenseNet()), steps=2, verbose=False).generate(x, y)

    assert np.abs(adv - x).max() <= EPS


def test_router_paths_resolve_inside_estimator_model():
    x, y = clips()
    torch.manual_seed(0)
    estimator = classifier(OddNamesLogits().eval())

    with pytest.raises(RouterNotFoundError):
        TLGAR(estimator)
    attack = TLGAR(
        estimator, routers=["inner.selector"], experts=["inner.towers"], steps=2, verbose=False
    )
    adv = attack.generate(x, y)

    assert np.abs(adv - x).max() > 0
    assert attack.passes["backward"] >= 1


# -- ART's AdversarialTrainer ------------------------------------------------------------------


def test_adversarial_trainer_trains_one_epoch_with_jtlga():
    x, y = clips(8)
    model = moe()
    estimator = classifier(model, optimizer=torch.optim.Adam(model.parameters(), lr=0.01))
    attack = JTLGA(estimator, steps=2, verbose=True)
    before = [p.detach().clone() for p in model.parameters()]

    AdversarialTrainer(estimator, attack, ratio=1.0).fit(x, y, batch_size=4, nb_epochs=1)

    # Top-1 routing: an expert that no clip was routed to gets no gradient and keeps its values.
    changed = {
        name: not torch.equal(p, b) for (name, p), b in zip(model.named_parameters(), before)
    }
    assert changed["router.fc.weight"]
    assert any(changed[name] for name in changed if name.startswith("experts."))
    assert attack.verbose is False
    assert attack.passes["forward"] >= 1


# -- ART's AutoAttack and SquareAttack through the image adapter --------------------------------


@pytest.mark.parametrize("name", [n for n in LAYOUT_CASES if "defence" not in n])
def test_image_classifier_matches_video_predictions(name):
    estimator, videos, _, time_dim = layout_case(name, moe())
    layout = video_layout(estimator, time_dim)
    images = video_to_image(torch.from_numpy(videos), layout).numpy()

    image_classifier = as_image_classifier(estimator, time_dim)

    assert image_classifier.input_shape == images.shape[1:]
    assert np.allclose(image_classifier.predict(images), estimator.predict(videos), atol=1e-5)


def test_video_auto_attack_runs_through_adapter():
    model, (videos, labels) = trained_clip_moe()
    x, y = videos[:6].numpy(), labels[:6].numpy()
    estimator = classifier(model)
    images = as_image_classifier(estimator)
    attacks = [
        AutoProjectedGradientDescent(
            images, eps=0.1, eps_step=0.03, max_iter=4, nb_random_init=1, batch_size=8, verbose=False
        ),
        SquareAttack(images, eps=0.1, max_iter=10, verbose=False),
    ]
    attack = VideoAutoAttack(estimator, eps=0.1, eps_step=0.03, attacks=attacks)

    adv = attack.generate(x, y)

    fooled = attack.best_attacks >= 0
    assert adv.shape == x.shape
    assert adv.dtype == np.float32
    assert np.abs(adv - x).max() <= 0.1
    assert fooled.any()
    assert np.all(estimator.predict(adv[fooled]).argmax(axis=1) != y[fooled])


def test_video_auto_attack_default_attack_list():
    estimator = classifier(moe())

    attack = VideoAutoAttack(estimator, eps=EPS, eps_step=EPS / 4)

    names = [type(inner).__name__ for inner in attack.attack.attacks]
    assert names == ["AutoProjectedGradientDescent", "AutoProjectedGradientDescent", "DeepFool", "SquareAttack"]
    assert attack.attack.attacks[3].estimator is attack.image_classifier


def test_video_auto_attack_rejects_attack_on_other_estimator():
    other = as_image_classifier(classifier(moe(seed=1)))
    square = SquareAttack(other, eps=EPS, max_iter=2, verbose=False)

    with pytest.raises(ValueError, match=r"attacks\[0\] \(SquareAttack\)"):
        VideoAutoAttack(classifier(moe()), eps=EPS, attacks=[square])


def test_video_square_attack_stays_in_eps_ball():
    x, y = clips()
    attack = VideoSquareAttack(classifier(moe()), eps=0.1, max_iter=10, verbose=False)

    adv = attack.generate(x, y)

    assert adv.shape == x.shape
    assert adv.dtype == np.float32
    assert np.abs(adv - x).max() <= 0.1
    assert np.abs(adv - x).max() > 0
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0


def test_video_square_attack_channels_last_keeps_layout():
    estimator, videos, y, _ = layout_case("NTHWC per-channel mean", moe())
    attack = VideoSquareAttack(estimator, eps=0.1, max_iter=5, verbose=False)

    adv = attack.generate(videos, y)

    assert adv.shape == videos.shape
    assert np.abs(adv - videos).max() <= 0.1


def test_video_square_attack_set_params_reaches_art_attack():
    attack = VideoSquareAttack(classifier(moe()), eps=0.1, max_iter=10, verbose=False)

    attack.set_params(max_iter=3)

    assert attack.attack.max_iter == 3
    assert attack.max_iter == 3
    with pytest.raises(ValueError):
        attack.set_params(max_iter=-1)
