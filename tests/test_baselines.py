"""Video-safe baselines: the image view of torchattacks' image attacks, TT, FGSM/PGD, registry."""

import logging

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torchattacks.attack import Attack

from moe_testing import ClipMoE, TimeFirst, TupleMoE, accuracy, trained_clip_moe
from tlga_attacks.baselines import (
    BASELINES,
    TT,
    VideoAdapted,
    VideoAPGD,
    VideoAPGDT,
    VideoAsImage,
    VideoAutoAttack,
    VideoFAB,
    VideoFGSM,
    VideoPGD,
    VideoSquare,
    image_to_video,
    make_baseline,
    square_p_init,
    temporal_kernel,
    video_to_image,
)
from tlga_attacks.models import VideoMoE

EPS = 8 / 255
SHAPE = (3, 4, 16, 16)

# Small budgets: every adapted attack finishes in a few seconds on two busy cores.
ADAPTED = {
    "apgd": lambda model, eps=EPS, **kw: VideoAPGD(model, eps=eps, steps=3, **kw),
    "apgd-t": lambda model, eps=EPS, **kw: VideoAPGDT(model, eps=eps, steps=3, **kw),
    "fab": lambda model, eps=EPS, **kw: VideoFAB(model, eps=eps, steps=2, **kw),
    "square": lambda model, eps=EPS, **kw: VideoSquare(model, eps=eps, n_queries=20, **kw),
}


def random_clips(n, seed=0, shape=SHAPE):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + shape, generator=generator)


def predictions(model, videos):
    with torch.no_grad():
        output = model(videos)
    logits = output[0] if isinstance(output, tuple) else output
    return logits.argmax(dim=1)


def assert_valid_adversarial(adv, x, eps):
    assert adv.shape == x.shape
    assert adv.dtype == x.dtype
    assert adv.device == x.device
    assert (adv - x).abs().max().item() <= eps
    assert adv.min().item() >= 0.0
    assert adv.max().item() <= 1.0


class Normalized(nn.Module):
    """A model with its normalization built in, for comparison with set_normalization_used."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class LogitsOnly(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


class FailingAfter(nn.Module):
    """Raises on every forward pass after the first ``limit``."""

    def __init__(self, net, limit):
        super().__init__()
        self.net = net
        self.limit = limit
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError("forward failed on purpose")
        return self.net(x)


# Mean and std are powers of two and the pixels multiples of 1/256, so normalizing and
# undoing it are exact and both routes see the same pixels.
MEAN = [0.5, 0.25, 0.75]
STD = [0.25, 0.5, 0.125]


def eight_bit_clips(n, seed=0):
    return (random_clips(n, seed) * 255).round() / 256


def normalize(videos):
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1, 1)
    return (videos - mean) / std


def unnormalize(videos):
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1, 1)
    return videos * std + mean


# -- the image view ---------------------------------------------------------------------------


def test_video_to_image_merges_channel_and_time():
    videos = random_clips(2)

    images = video_to_image(videos)

    assert images.shape == (2, 3 * 4, 16, 16)
    assert torch.equal(images[:, 1 * 4 + 2], videos[:, 1, 2])
    assert torch.equal(image_to_video(images, SHAPE), videos)


def test_video_as_image_returns_model_logits():
    torch.manual_seed(0)
    model = TupleMoE(num_classes=5).eval()
    videos = random_clips(2)

    logits = VideoAsImage(model, SHAPE)(video_to_image(videos))

    with torch.no_grad():
        expected = model(videos)[0]
    assert torch.allclose(logits, expected)


def test_video_as_image_rejects_wrong_image_shape():
    model = ClipMoE().eval()
    image_model = VideoAsImage(model, SHAPE)

    with pytest.raises(ValueError, match=r"\(N, 12, 16, 16\)"):
        image_model(torch.rand(2, 3, 16, 16))


def test_square_p_init_fits_non_square_frame():
    p_init = square_p_init(0.8, 8, 24)
    side = round((p_init * 8 * 24) ** 0.5)

    assert square_p_init(0.8, 16, 16) == 0.8
    assert p_init == pytest.approx(8 * 8 / (8 * 24))
    assert side <= 8


def test_square_window_fits_frames_of_the_clip():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    attack = VideoSquare(model, p_init=0.8)
    image_model = VideoAsImage(model, (3, 4, 8, 24))

    image_attack = attack.build_image_attack(image_model, 5)
    x = random_clips(2, shape=(3, 4, 8, 24))
    adv = VideoSquare(model, eps=EPS, n_queries=10)(x, predictions(model, x))

    assert image_attack.p_init == pytest.approx(1 / 3)
    assert_valid_adversarial(adv, x, EPS)


# -- adapted attacks: promises ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_attack_output_is_valid(name):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(3)

    adv = ADAPTED[name](model)(x, predictions(model, x))

    assert_valid_adversarial(adv, x, EPS)


@pytest.mark.parametrize(
    "name, eps, clips_count",
    [("apgd", 16 / 255, 4), ("apgd-t", 16 / 255, 4), ("fab", 16 / 255, 4), ("square", 32 / 255, 2)],
)
def test_adapted_attack_lowers_accuracy_on_trained_model(name, eps, clips_count):
    # Square, a random search, needs a larger eps than the gradient attacks on this model.
    torch.manual_seed(0)
    model, (clips, labels) = trained_clip_moe()
    x, y = clips[:clips_count], labels[:clips_count]
    if name == "square":
        attack = VideoSquare(model, eps=eps, n_queries=40)
    else:
        attack = ADAPTED[name](model, eps=eps)

    adv = attack(x, y)

    assert accuracy(model, x, y) == 1.0
    assert accuracy(model, adv, y) < 1.0
    assert_valid_adversarial(adv, x, eps)


@pytest.mark.parametrize("name", ["apgd", "fab"])
def test_adapted_attack_keeps_float64_and_channels_last(name):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).double().eval()
    x = random_clips(2).double().contiguous(memory_format=torch.channels_last_3d)

    adv = ADAPTED[name](model, eps=64 / 255)(x, predictions(model, x))

    assert adv.dtype == torch.float64
    assert adv.is_contiguous(memory_format=torch.channels_last_3d)
    assert (adv - x).abs().max().item() <= 64 / 255


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_attack_handles_one_clip(name):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(1)

    adv = ADAPTED[name](model, eps=64 / 255)(x, predictions(model, x))

    assert_valid_adversarial(adv, x, 64 / 255)


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_attack_leaves_misclassified_batch_unchanged(name):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(3)
    wrong = (predictions(model, x) + 1) % 5

    adv = ADAPTED[name](model)(x, wrong)

    assert torch.equal(adv, x)


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_attack_accepts_tuple_output(name):
    torch.manual_seed(0)
    model = TupleMoE(num_classes=5).eval()
    x = random_clips(2)
    y = predictions(model, x)

    adv = ADAPTED[name](model, eps=32 / 255)(x, y)
    expected = ADAPTED[name](LogitsOnly(model), eps=32 / 255)(x, y)

    assert_valid_adversarial(adv, x, 32 / 255)
    assert torch.equal(adv, expected)


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_attack_normalization_matches_builtin_layer(name):
    torch.manual_seed(0)
    net = ClipMoE(num_classes=5).eval()
    x = eight_bit_clips(2)
    y = predictions(net, normalize(x))

    expected = ADAPTED[name](Normalized(net, MEAN, STD), eps=32 / 255)(x, y)
    attack = ADAPTED[name](net, eps=32 / 255)
    attack.set_normalization_used(MEAN, STD)
    adv = unnormalize(attack(normalize(x), y))

    assert torch.allclose(adv, expected, atol=1e-6)
    assert (adv - x).abs().max().item() <= 32 / 255 + 1e-6


def test_adapted_attack_restores_training_flags_after_error():
    torch.manual_seed(0)
    model = FailingAfter(ClipMoE(num_classes=5), limit=2)
    model.train()
    model.net.experts[1].eval()
    flags = [module.training for module in model.modules()]

    with pytest.raises(RuntimeError, match="on purpose"):
        VideoAPGD(model, steps=3)(random_clips(2), torch.tensor([0, 1]))

    assert [module.training for module in model.modules()] == flags


def test_adapted_attack_restores_training_flags_and_buffers():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5)
    model.train()
    model.router.eval()
    flags = [module.training for module in model.modules()]
    buffers = [buffer.clone() for buffer in model.buffers()]

    VideoFAB(model, steps=2)(random_clips(2), torch.tensor([0, 1]))

    assert [module.training for module in model.modules()] == flags
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))


def test_adapted_attack_keeps_caller_rng_state():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(2)
    y = predictions(model, x)
    state = torch.get_rng_state()

    VideoAPGD(model, steps=2)(x, y)
    VideoSquare(model, n_queries=5)(x, y)

    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", sorted(ADAPTED))
def test_adapted_attack_counts_passes_exactly(name):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(2)
    y = predictions(model, x)
    seen = {"forward": 0, "backward": 0}

    def on_forward(module, inputs, output):
        seen["forward"] += 1

    def on_backward(module, grad_input, grad_output):
        seen["backward"] += 1

    handles = [
        model.register_forward_hook(on_forward),
        model.register_full_backward_hook(on_backward),
    ]
    attack = ADAPTED[name](model, eps=32 / 255)
    try:
        attack(x, y)
    finally:
        for handle in handles:
            handle.remove()

    assert attack.passes["forward"] == seen["forward"]
    assert attack.passes["backward"] == seen["backward"]
    assert attack.passes["forward_clips"] >= attack.passes["forward"]


def test_adapted_attack_time_first_layout():
    torch.manual_seed(0)
    model, (clips, labels) = trained_clip_moe()
    x = clips[:4].transpose(1, 2).contiguous()

    adv = VideoAPGD(TimeFirst(model), eps=16 / 255, steps=3, time_dim=1)(x, labels[:4])

    assert_valid_adversarial(adv, x, 16 / 255)
    assert accuracy(model, adv.transpose(1, 2), labels[:4]) < 1.0


# -- number of classes ------------------------------------------------------------------------


def test_apgdt_reads_class_count_from_model():
    torch.manual_seed(0)
    model = VideoMoE(num_classes=7, num_experts=2).eval()
    x = random_clips(2)
    attack = VideoAPGDT(model, steps=2)

    image_attack = attack.build_image_attack(VideoAsImage(model, SHAPE), 7)
    adv = attack(x, predictions(model, x))

    assert image_attack.n_target_classes == 6
    assert_valid_adversarial(adv, x, EPS)


def test_fab_targeted_reads_class_count_from_model():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(2)
    attack = VideoFAB(model, steps=2, multi_targeted=True)

    image_attack = attack.build_image_attack(VideoAsImage(model, SHAPE), 5)
    adv = attack(x, predictions(model, x))

    assert image_attack.n_target_classes == 4
    assert_valid_adversarial(adv, x, EPS)


def test_apgdt_caps_target_classes():
    model = ClipMoE(num_classes=5).eval()
    image_model = VideoAsImage(model, SHAPE)

    many = VideoAPGDT(model).build_image_attack(image_model, 12)
    few = VideoAPGDT(model, n_target_classes=20).build_image_attack(image_model, 5)

    assert many.n_target_classes == 9
    assert few.n_target_classes == 4


def test_autoattack_members_get_class_count():
    model = ClipMoE(num_classes=5).eval()
    image_model = VideoAsImage(model, SHAPE)

    multi = VideoAutoAttack(model).build_image_attack(image_model, 5)
    names = [type(member).__name__ for member in multi.attacks]

    assert names == ["APGD", "APGDT", "FAB", "Square"]
    assert multi.attacks[1].n_target_classes == 4
    assert multi.attacks[2].n_target_classes == 4
    assert multi.attacks[2].multi_targeted


def test_autoattack_skips_dlr_members_on_two_classes(caplog):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=2).eval()
    x = random_clips(2)
    attack = VideoAutoAttack(model, steps=2, n_queries=10)

    with caplog.at_level(logging.WARNING, logger="tlga_attacks.baselines.adapter"):
        adv = attack(x, predictions(model, x))

    assert attack.members(2) == ["APGD-CE", "FAB-T", "Square"]
    assert "skipped APGD-T" in caplog.text
    assert "2 classes" in caplog.text
    assert_valid_adversarial(adv, x, EPS)


def test_autoattack_plus_skips_by_class_count():
    model = ClipMoE(num_classes=2).eval()
    attack = VideoAutoAttack(model, version="plus")

    assert attack.members(2) == ["APGD-CE", "FAB", "Square", "FAB-T"]
    assert attack.members(3) == ["APGD-CE", "APGD-DLR", "FAB", "Square", "FAB-T"]
    assert "APGD-T" in attack.members(4)


def test_autoattack_rand_runs_single_member_on_two_classes():
    model = ClipMoE(num_classes=2).eval()
    image_model = VideoAsImage(model, SHAPE)

    image_attack = VideoAutoAttack(model, version="rand").build_image_attack(image_model, 2)

    assert isinstance(image_attack, torchattacks.APGD)
    assert image_attack.loss == "ce"


def test_apgdt_rejects_model_with_three_classes():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=3).eval()

    with pytest.raises(ValueError, match="at least 4 classes"):
        VideoAPGDT(model, steps=2)(random_clips(2), torch.tensor([0, 1]))


def test_apgd_dlr_rejects_model_with_two_classes():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=2).eval()

    with pytest.raises(ValueError, match="loss='ce'"):
        VideoAPGD(model, steps=2, loss="dlr")(random_clips(2), torch.tensor([0, 1]))


def test_adapted_attack_rejects_labels_out_of_range():
    model = ClipMoE(num_classes=5).eval()

    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\]"):
        VideoAPGD(model, steps=2)(random_clips(2), torch.tensor([0, 7]))


# -- AutoAttack on a trained model ------------------------------------------------------------


def test_autoattack_lowers_accuracy_on_trained_model():
    torch.manual_seed(0)
    model, (clips, labels) = trained_clip_moe()
    x, y = clips[:4], labels[:4]
    eps = 16 / 255

    adv = VideoAutoAttack(model, eps=eps, steps=3, n_queries=20)(x, y)

    assert accuracy(model, x, y) == 1.0
    assert accuracy(model, adv, y) < 1.0
    assert_valid_adversarial(adv, x, eps)


# -- the generic adapter ----------------------------------------------------------------------


def test_video_adapted_passes_class_count_to_factory():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    received = []

    def factory(image_model, num_classes):
        received.append(num_classes)
        return torchattacks.PGD(image_model, eps=EPS, alpha=EPS / 2, steps=2)

    x = random_clips(2)
    adv = VideoAdapted(model, factory, eps=EPS)(x, predictions(model, x))

    assert received == [5]
    assert_valid_adversarial(adv, x, EPS)
    assert not torch.equal(adv, x)


def test_video_adapted_rejects_factory_on_other_model():
    model = ClipMoE(num_classes=5).eval()

    def factory(image_model, num_classes):
        return torchattacks.PGD(model, eps=EPS)

    with pytest.raises(ValueError, match="image_model it receives"):
        VideoAdapted(model, factory)(random_clips(2), torch.tensor([0, 1]))


def test_video_adapted_rejects_factory_returning_non_attack():
    model = ClipMoE(num_classes=5).eval()

    with pytest.raises(ValueError, match="torchattacks.attack.Attack"):
        VideoAdapted(model, lambda image_model, k: image_model)(random_clips(2), None)


# -- TT ---------------------------------------------------------------------------------------


class TinyVideoNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=3, padding=1)
        self.fc = nn.Linear(4 * 4, num_classes)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).mean(dim=(3, 4))
        return self.fc(h.flatten(1))


def test_temporal_kernel_weights():
    uniform = temporal_kernel(2, "uniform")
    gaussian = temporal_kernel(3, "gaussian")
    raw = [torch.exp(torch.tensor(-k * k / 2.0)).item() for k in range(-3, 4)]

    assert [offset for offset, _ in uniform] == [-2, -1, 0, 1, 2]
    assert all(weight == pytest.approx(0.2) for _, weight in uniform)
    assert [w for _, w in gaussian] == pytest.approx([r / sum(raw) for r in raw])
    assert temporal_kernel(0) == [(0, 1.0)]


def test_tt_gradient_matches_explicit_average():
    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.rand(2, 3, 4, 6, 6)
    y = torch.tensor([0, 2])
    attack = TT(model, shift=2, kernel="gaussian")

    grad = attack.smoothed_gradient(x, y)

    frames = x.shape[2]
    expected = torch.zeros_like(x)
    for offset, weight in temporal_kernel(2, "gaussian"):
        # Frame t of the shifted copy is frame (t - offset) mod T of the clip.
        source = torch.tensor([(t - offset) % frames for t in range(frames)])
        shifted = x.index_select(2, source).requires_grad_(True)
        loss = F.cross_entropy(model(shifted), y, reduction="sum")
        shifted_grad = torch.autograd.grad(loss, shifted)[0]
        back = torch.zeros_like(x).index_add(2, source, shifted_grad)
        expected += weight * back
    assert torch.allclose(grad, expected, atol=1e-6)


def test_tt_uniform_gradient_differs_from_plain_gradient():
    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.rand(2, 3, 4, 6, 6)
    y = torch.tensor([0, 2])

    smoothed = TT(model, shift=1, kernel="uniform").smoothed_gradient(x, y)
    plain = TT(model, shift=0).smoothed_gradient(x, y)

    assert not torch.allclose(smoothed, plain)


def test_tt_respects_eps_ball():
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(3)

    adv = TT(model, eps=EPS, steps=3, shift=1)(x, predictions(model, x))

    assert_valid_adversarial(adv, x, EPS)
    assert not torch.equal(adv, x)


def test_tt_time_first_matches_channel_first():
    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.rand(2, 3, 4, 6, 6)
    y = torch.tensor([0, 2])

    adv = TT(model, steps=3, shift=1, random_start=False)(x, y)
    adv_time_first = TT(TimeFirst(model), steps=3, shift=1, random_start=False, time_dim=1)(
        x.transpose(1, 2), y
    )

    assert torch.allclose(adv_time_first.transpose(1, 2), adv, atol=1e-6)


def test_tt_lowers_accuracy_on_trained_model():
    # The tiny model misclassifies clips rolled by one frame, so shifted copies pull the
    # gradient away from the true class. With shift=1 the Gaussian kernel gives them 1% each.
    torch.manual_seed(0)
    model, (clips, labels) = trained_clip_moe()
    x, y = clips[:8], labels[:8]
    eps = 16 / 255

    adv = TT(model, eps=eps, alpha=eps / 4, steps=10, shift=1, seed=0)(x, y)

    assert accuracy(model, x, y) == 1.0
    assert accuracy(model, adv, y) < 1.0
    assert_valid_adversarial(adv, x, eps)


def test_tt_counts_passes_per_shift():
    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.rand(2, 3, 4, 6, 6)
    attack = TT(model, steps=3, shift=2)

    attack(x, torch.tensor([0, 2]))

    assert attack.passes["forward"] == 3 * 5
    assert attack.passes["backward"] == 3 * 5
    assert attack.passes["forward_clips"] == 3 * 5 * 2


def test_tt_seed_reproduces_and_keeps_caller_rng():
    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    x = torch.rand(2, 3, 4, 6, 6)
    y = torch.tensor([0, 2])
    state = torch.get_rng_state()

    first = TT(model, steps=1, seed=3)(x, y)
    second = TT(model, steps=1, seed=3)(x, y)

    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)


def test_tt_targeted_mode_reaches_targets():
    torch.manual_seed(0)
    model, (clips, labels) = trained_clip_moe()
    x = clips[:4]
    targets = (labels[:4] + 1) % 4
    attack = TT(model, eps=32 / 255, alpha=4 / 255, steps=10, shift=0, seed=0)
    attack.set_mode_targeted_by_label(quiet=True)

    adv = attack(x, targets)

    assert (predictions(model, adv) == targets).sum().item() > 0
    assert_valid_adversarial(adv, x, 32 / 255)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"kernel": "box"}, "kernel"), ({"shift": -1}, "shift"), ({"steps": 1.5}, "steps"),
     ({"alpha": 0}, "alpha"), ({"time_dim": 3}, "time_dim"), ({"eps": 2.0}, "eps")],
)
def test_tt_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TT(TinyVideoNet(), **kwargs)


# -- FGSM and PGD -----------------------------------------------------------------------------


def test_pgd_normalization_matches_builtin_layer():
    torch.manual_seed(0)
    net = ClipMoE(num_classes=5).eval()
    x = eight_bit_clips(2)
    y = predictions(net, normalize(x))

    expected = VideoPGD(Normalized(net, MEAN, STD), steps=3, random_start=False)(x, y)
    attack = VideoPGD(net, steps=3, random_start=False)
    attack.set_normalization_used(MEAN, STD)
    adv = unnormalize(attack(normalize(x), y))

    assert torch.allclose(adv, expected, atol=1e-6)


def test_pgd_normalizes_channels_when_frames_equal_channels():
    # torchattacks 3.5.1 shapes mean and std as (1, C, 1, 1), which on (N, C, T, H, W)
    # input with T == C normalizes along time instead.
    model = ClipMoE().eval()
    attack = VideoPGD(model)
    attack.set_normalization_used(MEAN, STD)
    x = random_clips(1, shape=(3, 3, 4, 4))

    assert torch.allclose(attack.normalize(x), normalize(x))


def test_pgd_normalization_uses_axis_two_for_time_first():
    model = TimeFirst(ClipMoE()).eval()
    attack = VideoPGD(model, time_dim=1)
    attack.set_normalization_used(MEAN, STD)
    x = random_clips(1)

    assert torch.allclose(attack.normalize(x.transpose(1, 2)).transpose(1, 2), normalize(x))


def test_pgd_lowers_accuracy_and_accepts_missing_labels():
    torch.manual_seed(0)
    model, (clips, labels) = trained_clip_moe()
    x, y = clips[:4], labels[:4]

    attack = VideoPGD(model, eps=16 / 255, alpha=4 / 255, steps=5, seed=0)
    adv = attack(x)

    assert accuracy(model, adv, y) < 1.0
    assert attack.passes["forward"] == 1 + 5
    assert attack.passes["backward"] == 5
    assert_valid_adversarial(adv, x, 16 / 255)


def test_fgsm_accepts_tuple_output():
    torch.manual_seed(0)
    model = TupleMoE(num_classes=5).eval()
    x = random_clips(2)

    adv = VideoFGSM(model, eps=EPS)(x, predictions(model, x))

    assert_valid_adversarial(adv, x, EPS)
    assert (adv - x).abs().max().item() == pytest.approx(EPS)


def test_pgd_restores_training_flags_after_error():
    torch.manual_seed(0)
    model = FailingAfter(ClipMoE(num_classes=5), limit=1)
    model.train()
    model.net.router.eval()
    flags = [module.training for module in model.modules()]

    with pytest.raises(RuntimeError, match="on purpose"):
        VideoPGD(model, steps=3)(random_clips(2), torch.tensor([0, 1]))

    assert [module.training for module in model.modules()] == flags


def test_target_selection_keeps_module_flags():
    model = ClipMoE(num_classes=5)
    model.train()
    model.router.eval()
    flags = [module.training for module in model.modules()]
    attack = VideoPGD(model)

    logits = attack.get_output_with_eval_nograd(random_clips(2))

    assert logits.shape == (2, 5)
    assert [module.training for module in model.modules()] == flags


# -- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_registry_builds_runnable_attack(name):
    torch.manual_seed(0)
    model = ClipMoE(num_classes=5).eval()
    x = random_clips(2)
    kwargs = {"n_queries": 10} if name in ("square", "autoattack") else {}

    attack = make_baseline(name, model, eps=EPS, steps=2, seed=0, **kwargs)
    adv = attack(x, predictions(model, x))

    assert isinstance(attack, Attack)
    assert attack.passes["forward"] >= 1
    assert_valid_adversarial(adv, x, EPS)


def test_make_baseline_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown baseline 'cw'"):
        make_baseline("cw", ClipMoE())


@pytest.mark.parametrize(
    "build, message",
    [(lambda m: VideoAPGD(m, steps=0), "steps"), (lambda m: VideoAPGD(m, loss="l2"), "loss"),
     (lambda m: VideoSquare(m, p_init=0.0), "p_init"),
     (lambda m: VideoAutoAttack(m, version="fast"), "version"),
     (lambda m: VideoFAB(m, time_dim=0), "time_dim"), (lambda m: VideoPGD(m, eps=-1), "eps")],
)
def test_baselines_reject_bad_parameters(build, message):
    with pytest.raises(ValueError, match=message):
        build(ClipMoE())
