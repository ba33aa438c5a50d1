"""Tests of the J-TLAT and TLAT defenses and the ART J-TLAT trainer."""

import json
import math
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from art.exceptions import EstimatorError
from torch import nn

from tlga_attacks.defense import JTLAT, TLAT, JTLATTrainer, training_step
from tlga_attacks.hooks import RouterNotFoundError
from tlga_attacks.models import MoEVideoTransformer, Tiny3DCNN, VideoMoE
from tlga_attacks.train import main as train_main
from tlga_attacks.training import load_model

NUM_CLASSES = 4
CLIP_SHAPE = (3, 4, 16, 16)  # (C, T, H, W)
EPS = 8 / 255


def tiny_moe(seed: int = 0) -> VideoMoE:
    """A VideoMoE small enough for a training step in about a second on a busy CPU."""
    torch.manual_seed(seed)
    model = VideoMoE(num_classes=NUM_CLASSES, num_experts=4, top_k=1, router_width=4, expert_width=0.25)
    return model.train()


def make_batch(num_clips: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    videos = torch.rand((num_clips,) + CLIP_SHAPE, generator=generator)
    labels = torch.arange(num_clips) % NUM_CLASSES
    return videos, labels


def snapshot(model: nn.Module) -> dict:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def changed_parameters(model: nn.Module, before: dict) -> set:
    return {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}


def fix_routing(model: VideoMoE, biases) -> None:
    """Make the router's logits almost constant, so that the top-2 experts of every clip are
    known whatever the attack does: tiny weights, large gaps between the biases."""
    with torch.no_grad():
        model.router.fc.weight.mul_(1e-3)
        model.router.fc.bias.copy_(torch.tensor(biases, dtype=torch.float32))


# -- J-TLAT: each update changes only its group ------------------------------------------------


def test_update_router_changes_only_router():
    model = tiny_moe()
    trainer = JTLAT(model, lr=1e-2, attack_steps=2)
    videos, labels = make_batch()
    before = snapshot(model)

    losses = trainer.update_router(model, videos, labels)

    changed = changed_parameters(model, before)
    assert changed, "the router update changed no parameter"
    assert all(name.startswith("router.") for name in changed), sorted(changed)
    assert {name for name in before if name.startswith("router.")} == changed
    assert math.isfinite(losses["router_loss"])


def test_update_router_ignores_whole_model_momentum():
    # Update 3 leaves Adam moments on every parameter. The router update must still not move
    # the experts, because their gradients are None and their optimizers do not step.
    model = tiny_moe()
    trainer = JTLAT(model, lr=1e-2, attack_steps=1)
    videos, labels = make_batch()
    trainer.update_model(model, videos, labels)
    before = snapshot(model)

    trainer.update_router(model, videos, labels)

    changed = changed_parameters(model, before)
    assert changed
    assert all(name.startswith("router.") for name in changed), sorted(changed)


def test_update_experts_changes_only_top2_experts():
    model = tiny_moe()
    fix_routing(model, [0.0, 6.0, -6.0, 3.0])  # top-2 of every clip: experts 1 and 3
    trainer = JTLAT(model, lr=1e-2, attack_steps=2)
    videos, labels = make_batch()
    before = snapshot(model)
    router_buffers = {name: buffer.clone() for name, buffer in model.router.named_buffers()}

    losses = trainer.update_experts(model, videos, labels)

    changed = changed_parameters(model, before)
    assert {name.split(".")[1] for name in changed if name.startswith("experts.")} == {"1", "3"}
    assert all(name.startswith("experts.1.") or name.startswith("experts.3.") for name in changed), sorted(changed)
    assert not any(name.startswith("router.") for name in changed)
    assert losses["experts_updated"] == 2.0
    for name, buffer in model.router.named_buffers():
        assert torch.equal(buffer, router_buffers[name]), f"router buffer {name} changed"


def test_only_update_model_moves_running_statistics():
    model = tiny_moe()
    trainer = JTLAT(model, lr=1e-2, attack_steps=1)
    videos, labels = make_batch()
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}

    trainer.update_router(model, videos, labels)
    trainer.update_experts(model, videos, labels)
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in model.named_buffers())

    trainer.update_model(model, videos, labels)
    moved = {name for name, buffer in model.named_buffers() if not torch.equal(buffer, buffers[name])}
    assert any(name.startswith("router.") and name.endswith("running_mean") for name in moved)
    assert any(name.startswith("experts.") and name.endswith("running_var") for name in moved)


def test_jtlat_state_dict_round_trip():
    model = tiny_moe()
    trainer = JTLAT(model, lr=1e-2, attack_steps=1)
    trainer.step(model, *make_batch())
    state = trainer.state_dict()

    restored = JTLAT(tiny_moe(seed=1), lr=1e-2, attack_steps=1)
    restored.load_state_dict(state)

    for saved, loaded in zip(trainer.group_optimizers, restored.group_optimizers):
        for key, moments in saved.state_dict()["state"].items():
            for name, value in moments.items():
                assert torch.equal(loaded.state_dict()["state"][key][name], value), name


@pytest.mark.parametrize(
    "other, message",
    [
        (dict(num_experts=3), "experts"),
        (dict(num_experts=4, router_width=8), "shape"),
    ],
)
def test_jtlat_load_state_dict_rejects_other_model(other, message):
    source_model = VideoMoE(**dict(dict(num_classes=NUM_CLASSES, top_k=1, router_width=4, expert_width=0.25), **other))
    source = JTLAT(source_model.train(), lr=1e-2, attack_steps=1)
    source.step(source_model, *make_batch())
    trainer = JTLAT(tiny_moe(), lr=1e-2, attack_steps=1)

    with pytest.raises(ValueError, match=message):
        trainer.load_state_dict(source.state_dict())


def test_update_experts_top1_trains_one_expert():
    model = tiny_moe()
    fix_routing(model, [0.0, -6.0, 6.0, -3.0])
    trainer = JTLAT(model, lr=1e-2, attack_steps=1, expert_top_k=1)
    videos, labels = make_batch()
    before = snapshot(model)

    trainer.update_experts(model, videos, labels)

    changed = changed_parameters(model, before)
    assert changed
    assert all(name.startswith("experts.2.") for name in changed), sorted(changed)


def test_update_model_changes_router_and_experts():
    model = tiny_moe()
    trainer = JTLAT(model, lr=1e-2, attack_steps=2)
    videos, labels = make_batch()
    before = snapshot(model)

    losses = trainer.update_model(model, videos, labels)

    changed = changed_parameters(model, before)
    assert any(name.startswith("router.") for name in changed)
    assert any(name.startswith("experts.") for name in changed)
    assert math.isfinite(losses["model_loss"])
    assert trainer.last_logits.shape == (videos.shape[0], NUM_CLASSES)


def test_jtlat_step_returns_losses_of_three_updates():
    model = tiny_moe()
    trainer = JTLAT(model, lr=1e-3, attack_steps=1)
    videos, labels = make_batch()

    losses = trainer.step(model, videos, labels)

    expected = {
        "router_loss", "router_ce", "router_lip", "expert_loss", "expert_ce", "expert_lip",
        "experts_updated", "model_loss", "model_ce", "model_lip", "loss",
    }
    assert set(losses) == expected
    assert all(isinstance(value, float) and math.isfinite(value) for value in losses.values())
    assert losses["loss"] == losses["model_loss"]


def test_jtlat_update_is_independent_of_stale_gradients():
    videos, labels = make_batch()
    results = []
    for stale in (False, True):
        model = tiny_moe(seed=1)
        trainer = JTLAT(model, lr=1e-2, attack_steps=1)
        if stale:
            for parameter in model.parameters():
                parameter.grad = torch.full_like(parameter, 5.0)
        torch.manual_seed(3)
        trainer.update_router(model, videos, labels)
        results.append(snapshot(model))

    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


def test_training_step_follows_trainer_optimizer():
    model = tiny_moe()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    context = SimpleNamespace(
        model=model, module=model, optimizer=optimizer, eps=EPS, attack_steps=1,
        attack_alpha=2 / 255, aux_weight=0.01, state={},
    )
    step = training_step("jtlat", SimpleNamespace)
    videos, labels = make_batch(4)
    context.state["jtlat"] = JTLAT(model, optimizer=optimizer, eps=EPS, attack_steps=1)
    # A schedule and an eps warm-up change these between batches.
    optimizer.param_groups[0]["lr"] = 5e-3
    context.eps, context.attack_alpha = EPS / 2, 1 / 255

    output = step(context, videos, labels)

    trainer = context.state["jtlat"]
    attacks = (trainer.router_attack, trainer.expert_attack, trainer.model_attack)
    assert all(attack.eps == EPS / 2 for attack in attacks)
    # alpha relative to eps, scaled so that a frame of mean gradient norm steps 1/255.
    assert all(attack.alpha == pytest.approx(0.25 * (1 + math.log(2))) for attack in attacks)
    assert all(attack.early_stop is False for attack in attacks)
    assert all(group.param_groups[0]["lr"] == 5e-3 for group in trainer.group_optimizers)
    assert output.logits.shape == (4, NUM_CLASSES)
    assert output.loss.dim() == 0


def test_training_step_builds_trainer_from_context():
    model = tiny_moe()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    context = SimpleNamespace(
        model=model, module=model, optimizer=optimizer, eps=EPS, attack_steps=1,
        attack_alpha=2 / 255, aux_weight=0.01, state={},
    )

    training_step("tlat", SimpleNamespace)(context, *make_batch(2))

    trainer = context.state["tlat"]
    assert isinstance(trainer, TLAT)
    assert trainer.optimizer is optimizer
    assert trainer.attack.alpha == pytest.approx(0.25 * (1 + math.log(2)))
    assert trainer.attack.early_stop is False
    assert trainer.attack.steps == 1
    assert trainer.aux_weight == 0.01


def test_jtlat_groups_copy_adamw_settings():
    model = tiny_moe()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)

    trainer = JTLAT(model, optimizer=optimizer)

    assert isinstance(trainer.router_optimizer, torch.optim.AdamW)
    assert trainer.router_optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_jtlat_set_attack_budget_rejects_zero_eps():
    trainer = JTLAT(tiny_moe())

    with pytest.raises(ValueError, match="eps"):
        trainer.set_attack_budget(0.0)


def test_training_step_rejects_unknown_method():
    with pytest.raises(ValueError, match="tlat"):
        training_step("trades", SimpleNamespace)


def test_jtlat_group_optimizer_builds_router_and_expert_optimizers():
    model = tiny_moe()
    built = []

    def group_optimizer(parameters):
        built.append(len(parameters))
        return torch.optim.SGD(parameters, lr=0.1)

    trainer = JTLAT(model, lr=1e-3, group_optimizer=group_optimizer)

    assert len(built) == 1 + model.num_experts
    assert isinstance(trainer.router_optimizer, torch.optim.SGD)
    assert isinstance(trainer.expert_groups[0].optimizer, torch.optim.SGD)


def test_jtlat_group_optimizers_copy_optimizer_settings():
    model = tiny_moe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    trainer = JTLAT(model, optimizer=optimizer)

    group = trainer.router_optimizer.param_groups[0]
    assert isinstance(trainer.router_optimizer, torch.optim.SGD)
    assert group["lr"] == 0.05
    assert group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-4


# Runs as one of two gloo processes, each with its own clips. First, rank r gives expert r a
# gradient of r + 1 everywhere, selects only that expert and steps the selected experts with
# SGD at learning rate 1. Then a second model, wrapped in DistributedDataParallel and routed so
# that update 2 trains experts 1 and 3 while update 3 runs only expert 1, takes updates 2 and 3.
# The script imports only what it needs, because each process start costs seconds on a busy CPU.
DISTRIBUTED_WORKER = """
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tlga_attacks.defense import JTLAT
from tlga_attacks.models import VideoMoE

rank, port, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

def tiny_moe():
    torch.manual_seed(0)
    return VideoMoE(num_classes=4, num_experts=4, top_k=1, router_width=4, expert_width=0.25).train()

model = tiny_moe()
trainer = JTLAT(model, group_optimizer=lambda parameters: torch.optim.SGD(parameters, lr=1.0))
before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
for parameter in trainer.expert_groups[rank].parameters:
    parameter.grad = torch.full_like(parameter, float(rank + 1))
selected = torch.zeros(len(trainer.expert_groups), dtype=torch.bool)
selected[rank] = True

updated = trainer._step_selected_experts(selected)
deltas = {name: parameter.detach() - before[name] for name, parameter in model.named_parameters()}

model = tiny_moe()
with torch.no_grad():
    model.router.fc.weight.mul_(1e-3)
    model.router.fc.bias.copy_(torch.tensor([0.0, 6.0, -6.0, 3.0]))
wrapped = DistributedDataParallel(model, find_unused_parameters=True)
trainer = JTLAT(model, lr=1e-2, attack_steps=1)
generator = torch.Generator().manual_seed(rank)
videos, labels = torch.rand(2, 3, 4, 16, 16, generator=generator), torch.tensor([rank, rank + 2])
torch.manual_seed(rank)
trainer.update_experts(wrapped, videos, labels)
trainer.update_model(wrapped, videos, labels)

parameters = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
torch.save({"updated": updated, "deltas": deltas, "parameters": parameters}, f"{out_dir}/rank{rank}.pt")
dist.destroy_process_group()
"""


def run_two_processes(tmp_path) -> list:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    workers = [
        subprocess.Popen([sys.executable, "-c", DISTRIBUTED_WORKER, str(rank), str(port), str(tmp_path)])
        for rank in range(2)
    ]
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_jtlat_updates_agree_across_processes(tmp_path):
    results = run_two_processes(tmp_path)

    for rank, result in enumerate(results):
        deltas = result["deltas"]
        assert result["updated"] == 2, f"rank {rank} stepped {result['updated']} experts"
        # Expert 0 got gradients 1 (rank 0) and none (rank 1), expert 1 none and 2: means 0.5 and 1.
        assert all(torch.allclose(d, torch.full_like(d, -0.5)) for n, d in deltas.items() if n.startswith("experts.0."))
        assert all(torch.allclose(d, torch.full_like(d, -1.0)) for n, d in deltas.items() if n.startswith("experts.1."))
        assert all(not d.any() for n, d in deltas.items() if n.startswith(("experts.2.", "experts.3.", "router.")))
    for name in results[0]["deltas"]:
        assert torch.equal(results[0]["deltas"][name], results[1]["deltas"][name]), name

    # Both processes saw other clips, so equal weights after updates 2 and 3 mean that both
    # updates averaged their gradients over the processes.
    for name in results[0]["parameters"]:
        assert torch.allclose(results[0]["parameters"][name], results[1]["parameters"][name], atol=1e-6), name


# -- J-TLAT: errors ----------------------------------------------------------------------------


def test_jtlat_rejects_model_without_router():
    torch.manual_seed(0)
    model = Tiny3DCNN(NUM_CLASSES, width=0.25)

    with pytest.raises(RouterNotFoundError, match="TLAT"):
        JTLAT(model)


@pytest.mark.parametrize(
    "name, value",
    [
        ("eps", 0.0),
        ("eps", -1 / 255),
        ("eps", 2.0),
        ("eps", float("nan")),
        ("lam", -1e-3),
        ("lam", float("inf")),
        ("model_lam", -1.0),
        ("attack_steps", 0),
        ("attack_steps", 2.5),
        ("alpha", 0.0),
        ("expert_top_k", 0),
        ("gamma1", -1.0),
        ("lr", 0.0),
        ("time_dim", 3),
    ],
)
def test_jtlat_rejects_invalid_setting(name, value):
    model = tiny_moe()

    with pytest.raises(ValueError, match=name):
        JTLAT(model, **{name: value})


def test_jtlat_rejects_token_level_routing_before_any_update():
    torch.manual_seed(0)
    model = MoEVideoTransformer(
        NUM_CLASSES, clip_size=CLIP_SHAPE[1:], tubelet_size=(2, 8, 8), dim=16, depth=1, num_heads=2,
        num_experts=4, top_k=2,
    ).train()
    trainer = JTLAT(model, lr=1e-2, attack_steps=1)
    videos, labels = make_batch()
    before = snapshot(model)

    with pytest.raises(ValueError, match="token- or frame-level routing"):
        trainer.step(model, videos, labels)

    assert changed_parameters(model, before) == set()


def test_jtlat_rejects_shared_parameters():
    model = tiny_moe()
    model.experts[1].fc = model.experts[0].fc

    with pytest.raises(ValueError, match="shared"):
        JTLAT(model)


def test_jtlat_step_rejects_other_model():
    model = tiny_moe()
    trainer = JTLAT(model, attack_steps=1)
    videos, labels = make_batch()

    with pytest.raises(ValueError, match="not the model"):
        trainer.step(tiny_moe(seed=1), videos, labels)


def test_jtlat_step_rejects_mismatched_labels():
    model = tiny_moe()
    trainer = JTLAT(model, attack_steps=1)
    videos, _ = make_batch()

    with pytest.raises(ValueError, match="labels"):
        trainer.step(model, videos, torch.zeros(3, dtype=torch.long))


def test_jtlat_accepts_data_parallel_wrapper():
    model = tiny_moe()
    wrapped = nn.DataParallel(model)

    trainer = JTLAT(wrapped, attack_steps=1)

    assert trainer.module is model


# -- TLAT --------------------------------------------------------------------------------------


def test_tlat_step_lowers_loss():
    model = tiny_moe()
    trainer = TLAT(model, lr=1e-2, attack_steps=1)
    videos, labels = make_batch(4)

    torch.manual_seed(0)
    losses = [trainer.step(model, videos, labels)["loss"] for _ in range(6)]

    assert all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses


def test_tlat_examples_respect_eps_ball():
    model = tiny_moe()
    trainer = TLAT(model, eps=EPS, attack_steps=2)
    videos, labels = make_batch()

    adv = trainer.examples(videos, labels)

    assert adv.shape == videos.shape
    assert (adv - videos).abs().max().item() <= EPS
    assert adv.min().item() >= 0.0
    assert adv.max().item() <= 1.0
    assert not torch.equal(adv, videos)


def test_tlat_trains_model_without_router():
    torch.manual_seed(0)
    model = Tiny3DCNN(NUM_CLASSES, width=0.25).train()
    trainer = TLAT(model, lr=1e-2, attack_steps=1)
    videos, labels = make_batch()
    before = snapshot(model)

    trainer.step(model, videos, labels)

    assert changed_parameters(model, before)


@pytest.mark.parametrize("name, value", [("eps", 0.0), ("eps", 1.5), ("lam", -1.0), ("attack_steps", 0), ("beta", 2.0)])
def test_tlat_rejects_invalid_setting(name, value):
    model = tiny_moe()

    with pytest.raises(ValueError, match=name):
        TLAT(model, **{name: value})


def test_tlat_rejects_non_video_input():
    model = tiny_moe()
    trainer = TLAT(model, attack_steps=1)

    with pytest.raises(ValueError, match="rank 5"):
        trainer.step(model, torch.rand(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))


# -- ART trainer -------------------------------------------------------------------------------


def art_classifier(model: nn.Module, optimizer=True, clip_values=(0.0, 1.0)) -> PyTorchClassifier:
    return PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer else None,
        input_shape=CLIP_SHAPE,
        nb_classes=NUM_CLASSES,
        clip_values=clip_values,
    )


def test_jtlat_trainer_fit_changes_parameters():
    model = tiny_moe().eval()
    classifier = art_classifier(model)
    trainer = JTLATTrainer(classifier, eps=EPS, attack_steps=1)
    videos, labels = make_batch(3)
    before = snapshot(model)

    np.random.seed(0)
    trainer.fit(videos.numpy(), labels.numpy(), batch_size=2, nb_epochs=1)

    changed = changed_parameters(model, before)
    assert any(name.startswith("router.") for name in changed)
    assert any(name.startswith("experts.") for name in changed)
    assert len(trainer.history) == 1
    assert math.isfinite(trainer.history[0]["loss"])
    assert not model.training
    assert trainer.get_classifier() is classifier


def test_jtlat_trainer_fit_scales_0_255_videos():
    model = tiny_moe()
    classifier = art_classifier(model, clip_values=(0.0, 255.0))
    trainer = JTLATTrainer(classifier, eps=8.0, attack_steps=1)
    videos, labels = make_batch(3)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels.numpy()]
    before = snapshot(model)

    trainer.fit((videos * 255).numpy(), one_hot, batch_size=3, nb_epochs=1, shuffle=False)

    assert trainer.jtlat.eps == pytest.approx(8.0 / 255)
    assert changed_parameters(model, before)


def test_jtlat_trainer_requires_optimizer():
    classifier = art_classifier(tiny_moe(), optimizer=False)

    with pytest.raises(ValueError, match="optimizer"):
        JTLATTrainer(classifier)


def test_jtlat_trainer_rejects_eps_outside_clip_range():
    classifier = art_classifier(tiny_moe())

    with pytest.raises(ValueError, match="eps"):
        JTLATTrainer(classifier, eps=2.0)


def test_jtlat_trainer_rejects_other_estimator():
    with pytest.raises(EstimatorError):
        JTLATTrainer(object())


def test_jtlat_trainer_fit_rejects_out_of_range_videos():
    classifier = art_classifier(tiny_moe())
    trainer = JTLATTrainer(classifier, attack_steps=1)
    videos, labels = make_batch(2)

    with pytest.raises(ValueError, match="clip_values"):
        trainer.fit(videos.numpy() * 255, labels.numpy())


# -- tlga-train --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["jtlat", "tlat"])
def test_train_cli_method_writes_checkpoint_and_card(tmp_path, method):
    out = tmp_path / method
    torch.manual_seed(0)

    status = train_main([
        "--method", method, "--data", "synthetic", "--num-classes", "4", "--num-frames", "4", "--size", "16",
        "--clips", "4", "--test-clips", "4", "--batch-size", "4", "--epochs", "1", "--attack-steps", "1",
        "--device", "cpu", "--out", str(out), "--no-progress",
    ])

    assert status == 0
    card = json.loads((out / "card.json").read_text())
    assert card["method"] == method
    assert card["epochs"] == 1
    assert card["robust_accuracy"] is not None, "an adversarial method gets a robust evaluation"
    assert 0.0 <= card["robust_accuracy"] <= 1.0
    model, _ = load_model(out / "model.safetensors", out / "card.json")
    assert isinstance(model, VideoMoE)
    state_dict = torch.load(out / "model.pt", weights_only=True)
    assert state_dict.keys() == model.state_dict().keys()
