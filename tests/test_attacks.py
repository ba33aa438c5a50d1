"""The attack family as torchattacks attacks: promises, effect, state, interplay and cost."""

import pytest
import torch
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from moe_testing import (
    CLIP_SHAPE,
    ClipMoE,
    OddNamesMoE,
    TimeFirst,
    TokenMoENet,
    TupleMoE,
    accuracy,
    trained_clip_moe,
)
from tlga_attacks import JTLA, JTLGA, PGDR, TLAE, TLAM, TLAR, TLGAR, MoEHookError, MoEInspector

ALL_ATTACKS = [PGDR, TLAR, TLGAR, TLAE, TLAM, JTLA, JTLGA]
MODEL_ATTACKS = [TLAM, JTLA, JTLGA]
ROUTER_ATTACKS = [PGDR, TLAR, TLGAR]
EPS = 8 / 255


def random_clips(n=4, seed=0, shape=CLIP_SHAPE):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + shape, generator=generator)


def routing(model, videos):
    """Clean top-1 expert and weakest expert per clip of a clip-level MoE."""
    with torch.no_grad(), MoEInspector(model) as inspector:
        model(videos)
        logits = inspector.layers[0].router_logits[:, 0]
    return logits.argmax(-1), logits.argmin(-1)


def assert_valid_adversarial(adv, x, eps):
    assert adv.shape == x.shape
    assert adv.dtype == x.dtype
    assert adv.device == x.device
    assert (adv - x).abs().max().item() <= eps
    assert adv.min().item() >= 0.0
    assert adv.max().item() <= 1.0


# -- promises on every model ---------------------------------------------------------------


@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
def test_attack_respects_eps_ball_on_clip_moe(attack_class):
    torch.manual_seed(0)
    model = ClipMoE().eval()
    x, y = random_clips(4), torch.tensor([0, 1, 2, 3])

    adv = attack_class(model, eps=EPS, steps=3)(x, y)

    assert_valid_adversarial(adv, x, EPS)
    assert not torch.equal(adv, x)


@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
def test_attack_respects_eps_ball_on_token_moe(attack_class):
    torch.manual_seed(0)
    model = TokenMoENet().eval()
    x, y = random_clips(3), torch.tensor([0, 1, 2])

    adv = attack_class(model, eps=EPS, steps=3)(x, y)

    assert_valid_adversarial(adv, x, EPS)
    assert not torch.equal(adv, x)


def test_attack_keeps_float64_and_channels_last():
    torch.manual_seed(0)
    model = ClipMoE().double().eval()
    x = random_clips(2).double().contiguous(memory_format=torch.channels_last_3d)

    adv = JTLGA(model, steps=2)(x, torch.tensor([0, 1]))

    assert adv.dtype == torch.float64
    assert adv.is_contiguous(memory_format=torch.channels_last_3d)
    assert (adv - x).abs().max().item() <= EPS


def test_attack_supports_time_first_layout():
    torch.manual_seed(0)
    model = TimeFirst(ClipMoE()).eval()
    x = random_clips(2).transpose(1, 2).contiguous()  # (N, T, C, H, W)

    adv = JTLGA(model, steps=3, time_dim=1)(x, torch.tensor([0, 1]))

    assert_valid_adversarial(adv, x, EPS)


def test_attack_takes_logits_from_tuple_and_dict_outputs():
    torch.manual_seed(0)
    x, y = random_clips(2), torch.tensor([0, 1])

    adv_tuple = JTLGA(TupleMoE().eval(), steps=2)(x, y)
    adv_dict = JTLGA(OddNamesMoE().eval(), steps=2, routers=["selector"], experts=["towers"])(x, y)

    assert_valid_adversarial(adv_tuple, x, EPS)
    assert_valid_adversarial(adv_dict, x, EPS)


def test_attack_uses_custom_output_rule():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = ClipMoE()

        def forward(self, x):
            return {"scores": self.moe(x)}

    torch.manual_seed(0)
    model = Wrapped().eval()
    x = random_clips(2)

    with pytest.raises(TypeError, match="output_to_logits"):
        TLAM(model, steps=1)(x, torch.tensor([0, 1]))

    adv = TLAM(model, steps=2, output_to_logits=lambda out: out["scores"])(x, torch.tensor([0, 1]))
    assert_valid_adversarial(adv, x, EPS)


# -- effect on a trained MoE ----------------------------------------------------------------


@pytest.mark.parametrize("attack_class", MODEL_ATTACKS + [TLAE])
def test_model_attack_lowers_accuracy(attack_class):
    model, (x, y) = trained_clip_moe()
    clean = accuracy(model, x, y)
    torch.manual_seed(1)

    adv = attack_class(model, eps=16 / 255)(x, y)

    if attack_class is TLAE:
        # The experts of this model are robust (only routing changes fool it), so TLA-E is
        # checked for not raising accuracy rather than for lowering it.
        assert accuracy(model, adv, y) <= clean
    else:
        assert clean >= 0.9
        assert accuracy(model, adv, y) <= clean - 0.5


@pytest.mark.parametrize("attack_class", ROUTER_ATTACKS)
def test_router_attack_changes_top1_expert(attack_class):
    model, (x, _) = trained_clip_moe()
    with torch.no_grad():
        predictions = model(x).argmax(1)
    clean_expert, _ = routing(model, x)
    torch.manual_seed(1)

    # Labels equal to the predictions: no clip counts as fooled before the attack starts.
    adv = attack_class(model, eps=16 / 255)(x, predictions)
    adv_expert, _ = routing(model, adv)

    assert (adv_expert != clean_expert).float().mean().item() > 0.5


def test_tlgar_hits_weakest_expert_more_than_tlar():
    model, (x, _) = trained_clip_moe()
    with torch.no_grad():
        predictions = model(x).argmax(1)
    _, weakest = routing(model, x)

    hits = {}
    for attack_class in (TLAR, TLGAR):
        torch.manual_seed(1)
        adv = attack_class(model, eps=16 / 255)(x, predictions)
        hits[attack_class.__name__] = (routing(model, adv)[0] == weakest).float().mean().item()

    assert hits["TLGAR"] > hits["TLAR"]
    assert hits["TLGAR"] > 0.5


# -- model state ----------------------------------------------------------------------------


def snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [p.grad for p in model.parameters()],
    }


def assert_same_state(model, before):
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert all(grad is None for grad in after["grads"])


@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
def test_attack_leaves_model_as_found(attack_class):
    torch.manual_seed(0)
    model = ClipMoE()
    model.train()
    model.experts[1].eval()
    model.router.fc.weight.requires_grad_(False)
    before = snapshot(model)

    attack_class(model, steps=2)(random_clips(3), torch.tensor([0, 1, 2]))

    assert_same_state(model, before)


def test_attack_restores_model_after_forward_raises():
    class Failing(ClipMoE):
        calls = 0

        def forward(self, x):
            Failing.calls += 1
            if Failing.calls > 1:  # the reference pass succeeds, the first step fails
                raise RuntimeError("forward failed")
            return super().forward(x)

    torch.manual_seed(0)
    model = Failing()
    model.train()
    before = snapshot(model)

    with pytest.raises(RuntimeError, match="forward failed"):
        JTLGA(model, steps=3)(random_clips(2), torch.tensor([0, 1]))

    assert_same_state(model, before)


def test_training_flag_read_at_call_time():
    torch.manual_seed(0)
    model = ClipMoE().eval()
    atk = JTLGA(model, steps=1)
    model.train()  # after construction

    atk(random_clips(2), torch.tensor([0, 1]))

    assert model.training
    assert all(m.training for m in model.modules())


def test_training_mode_setting_applies():
    torch.manual_seed(0)
    model = ClipMoE().eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    before = snapshot(model)
    atk = JTLGA(model, steps=2)
    atk.set_model_training_mode(model_training=True, batchnorm_training=True)

    atk(random_clips(2), torch.tensor([0, 1]))

    assert seen and all(seen)
    assert_same_state(model, before)  # BatchNorm running statistics restored too


# -- batch independence and edge batches ----------------------------------------------------


@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
def test_attack_batch_independent(attack_class):
    torch.manual_seed(0)
    model = ClipMoE().double().eval()
    x = random_clips(4).double()
    y = torch.tensor([0, 1, 2, 3])
    atk = attack_class(model, steps=3, random_start=False)

    batch = atk(x, y)
    alone = torch.cat([atk(x[i:i + 1], y[i:i + 1]) for i in range(4)])

    assert torch.allclose(batch, alone, atol=1e-9)


def test_attack_handles_one_clip():
    torch.manual_seed(0)
    x = random_clips(1)
    adv = JTLGA(ClipMoE().eval(), steps=2)(x, torch.tensor([2]))
    assert_valid_adversarial(adv, x, EPS)


def test_attack_returns_empty_batch_unchanged():
    x = torch.empty((0,) + CLIP_SHAPE)
    adv = JTLGA(ClipMoE().eval())(x, torch.empty(0, dtype=torch.long))
    assert adv.shape == x.shape


def test_attack_on_misclassified_batch_stops_at_start():
    model, (x, y) = trained_clip_moe()
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    atk = JTLGA(model, random_start=False)

    adv = atk(x, wrong)

    assert torch.equal(adv, x)
    assert atk.passes == {"forward": 2, "backward": 0}


def test_attack_without_early_stop_returns_last_iterate():
    model, (x, y) = trained_clip_moe()
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    atk = JTLGA(model, steps=3, random_start=False, early_stop=False)

    adv = atk(x, wrong)

    # Every clip is fooled from the start, yet all steps run and the iterate moves on.
    assert atk.passes == {"forward": 4, "backward": 3}
    assert_valid_adversarial(adv, x, EPS)
    assert (adv - x).abs().amax(dim=(1, 2, 3, 4)).min().item() > 0


def test_early_stop_does_not_change_unfooled_clips():
    model, (x, y) = trained_clip_moe()
    # eps so small that no clip is fooled: both settings return the last iterate.
    results = []
    for early_stop in (True, False):
        torch.manual_seed(0)
        results.append(JTLGA(model, eps=0.5 / 255, steps=3, early_stop=early_stop)(x[:8], y[:8]))
    assert torch.equal(results[0], results[1])


# -- torchattacks interplay -----------------------------------------------------------------


def test_multiattack_combines_pgd_and_jtlga():
    model, (x, y) = trained_clip_moe()
    pgd = torchattacks.PGD(model, eps=12 / 255, alpha=2 / 255, steps=5)
    jtlga = JTLGA(model, eps=12 / 255)
    torch.manual_seed(1)

    adv = torchattacks.MultiAttack([pgd, jtlga])(x, y)

    # torchattacks' PGD projects with x + clamp(delta), which can overshoot eps by one
    # float32 rounding error.
    assert_valid_adversarial(adv, x, 12 / 255 + 1e-7)
    assert accuracy(model, adv, y) < accuracy(model, x, y)


@pytest.mark.parametrize("attack_class", MODEL_ATTACKS)
def test_targeted_mode_reaches_targets(attack_class):
    model, (x, y) = trained_clip_moe()
    targets = (y + 1) % 4
    atk = attack_class(model, eps=24 / 255, steps=20)
    atk.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(1)

    adv = atk(x, targets)

    with torch.no_grad():
        hit = (model(adv).argmax(1) == targets).float().mean().item()
    assert hit > 0.5
    assert_valid_adversarial(adv, x, 24 / 255)


@pytest.mark.parametrize("mode", ["random", "least_likely"])
def test_targeted_modes_random_and_least_likely(mode):
    model, (x, y) = trained_clip_moe()
    atk = JTLGA(model, eps=16 / 255, steps=5)
    getattr(atk, f"set_mode_targeted_{mode}")(quiet=True)
    torch.manual_seed(1)

    adv = atk(x[:8], y[:8])

    assert_valid_adversarial(adv, x[:8], 16 / 255)


def test_router_attack_rejects_targeted_mode():
    with pytest.raises(ValueError, match="Targeted mode is not supported"):
        TLGAR(ClipMoE()).set_mode_targeted_by_label(quiet=True)


def test_save_then_load_adversarial_videos(tmp_path):
    model, (x, y) = trained_clip_moe()
    loader = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
    atk = JTLGA(model, steps=3)
    path = tmp_path / "adv.pt"

    atk.save(loader, save_path=str(path), verbose=False)
    loaded = torchattacks.attack.Attack.load(str(path), batch_size=8)
    adv, labels = next(iter(loaded))

    assert adv.shape == x[:8].shape
    assert torch.equal(labels, y[:8])
    assert (adv - x[:8]).abs().max().item() <= EPS + 1e-7


# -- normalization --------------------------------------------------------------------------


def test_normalization_matches_raw_attack():
    class Normalized(nn.Module):
        """The MoE behind a normalization layer: takes [0, 1] videos."""

        def __init__(self, moe, mean, std):
            super().__init__()
            self.moe, self.mean, self.std = moe, mean, std

        def forward(self, x):
            return self.moe((x - self.mean) / self.std)

    torch.manual_seed(0)
    moe = ClipMoE().double().eval()
    mean = torch.tensor([0.45, 0.40, 0.35], dtype=torch.float64).reshape(1, 3, 1, 1, 1)
    std = torch.tensor([0.25, 0.22, 0.2], dtype=torch.float64).reshape(1, 3, 1, 1, 1)
    x, y = random_clips(3).double(), torch.tensor([0, 1, 2])

    atk = JTLGA(moe, steps=3, random_start=False)
    atk.set_normalization_used(mean=[0.45, 0.40, 0.35], std=[0.25, 0.22, 0.2])
    adv_normalized = atk((x - mean) / std, y)
    reference = JTLGA(Normalized(moe, mean, std), steps=3, random_start=False)(x, y)

    assert torch.allclose(adv_normalized * std + mean, reference, atol=1e-9)


def test_normalization_rejects_bad_std():
    with pytest.raises(ValueError, match="std must be positive"):
        JTLGA(ClipMoE()).set_normalization_used(mean=[0.5] * 3, std=[0.2, 0.0, 0.2])


# -- cost -----------------------------------------------------------------------------------


def test_jtlga_one_forward_and_backward_per_step():
    model, (x, y) = trained_clip_moe()
    counts = {"forward": 0, "backward": 0}
    handles = [
        model.register_forward_hook(lambda *args: counts.__setitem__("forward", counts["forward"] + 1)),
        model.register_full_backward_hook(
            lambda *args: counts.__setitem__("backward", counts["backward"] + 1)
        ),
    ]
    # eps so small that no clip is fooled, so all steps run.
    atk = JTLGA(model, eps=0.5 / 255, steps=7)
    try:
        atk(x[:8], y[:8])
    finally:
        for handle in handles:
            handle.remove()

    assert counts == {"forward": 8, "backward": 7}
    assert atk.passes == counts


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": 2.0}, "eps"),
        ({"alpha": 0.0}, "alpha"),
        ({"steps": -1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"beta": 1.5}, "beta"),
        ({"gamma1": -1.0}, "gamma1"),
        ({"gamma2": float("nan")}, "gamma2"),
        ({"lam": -1e-3}, "lam"),
        ({"time_dim": 3}, "time_dim"),
        ({"restarts": 0}, "restarts"),
        ({"random_start": 1}, "random_start"),
        ({"early_stop": "no"}, "early_stop"),
    ],
)
def test_invalid_parameter_names_itself(kwargs, name):
    with pytest.raises(ValueError, match=name):
        JTLGA(ClipMoE(), **kwargs)


def test_parameter_changed_after_construction_is_checked():
    atk = JTLGA(ClipMoE())
    atk.eps = 3.0
    with pytest.raises(ValueError, match="eps"):
        atk(random_clips(1), torch.tensor([0]))


@pytest.mark.parametrize(
    "videos, message",
    [
        (torch.rand(2, 3, 16, 16), "rank 5"),
        (torch.rand((2,) + CLIP_SHAPE) * 2, r"\[0, 1\]"),
        (torch.full((2,) + CLIP_SHAPE, float("nan")), "NaN"),
        ((torch.rand((2,) + CLIP_SHAPE) * 255).to(torch.uint8), "floating-point"),
    ],
)
def test_invalid_videos_raise(videos, message):
    with pytest.raises(ValueError, match=message):
        JTLGA(ClipMoE().eval())(videos, torch.tensor([0, 1]))


def test_values_just_outside_range_are_clipped():
    x = random_clips(2)
    x[0, 0, 0, 0, 0] = -5e-7
    x[1, 0, 0, 0, 0] = 1 + 5e-7
    adv = JTLGA(ClipMoE().eval(), steps=1)(x, torch.tensor([0, 1]))
    assert adv.min().item() >= 0.0
    assert adv.max().item() <= 1.0


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([[0], [1]]), "shape"),
        (torch.tensor([0, 9]), r"\[0, 3\]"),
    ],
)
def test_invalid_labels_raise(labels, message):
    with pytest.raises(ValueError, match=message):
        JTLGA(ClipMoE().eval(), steps=1)(random_clips(2), labels)


def test_attack_without_router_raises_at_construction():
    dense = nn.Sequential(nn.Conv3d(3, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no MoE router"):
        JTLGA(dense)
    adv = TLAM(dense, steps=2)(random_clips(2), torch.tensor([0, 1]))  # TLA-M needs no router
    assert adv.shape == (2,) + CLIP_SHAPE


def test_attack_rejects_compiled_model():
    model = torch.compile(ClipMoE().eval(), backend="eager")
    with pytest.raises(MoEHookError, match="_orig_mod"):
        JTLGA(model)
