"""Tests of the trainer, its methods, checkpoints and the tlga-train CLI on tiny synthetic data."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlga_attacks.data.synthetic import SyntheticActions
from tlga_attacks.models import build_model
from tlga_attacks.train import main
from tlga_attacks.training import (
    METHODS,
    InterruptedForTesting,
    StepOutput,
    TrainConfig,
    TrainingMethod,
    evaluate,
    load_model,
    task_loss,
    train,
)
from tlga_attacks.training.checkpoint import TRAINING_STATE_FILE, atomic_write
from tlga_attacks.training.trainer import STOP_AFTER_BATCHES_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]

# 16 clips of 4 frames at 16x16 in batches of 8: two batches per epoch.
TINY = dict(clips=16, test_clips=8, num_frames=4, size=16, batch_size=8, epochs=1, lr=1e-2)

CARD_FIELDS = (
    "model",
    "data",
    "method",
    "eps",
    "seed",
    "epochs",
    "clean_accuracy",
    "robust_accuracy",
    "command",
    "library_version",
    "train_seconds",
    "sha256",
)


@pytest.fixture(autouse=True)
def single_thread():
    """Run each test on one thread: small convolutions are faster so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny_cli_args(out, *extra):
    args = ["--out", str(out), "--no-progress"]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + list(extra)


def read_json(path):
    return json.loads(Path(path).read_text())


def final_weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(first, second, atol=0.0):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0.0, atol=atol, msg=f"parameter {key}")


# -- CLI, checkpoint files and card ----------------------------------------------------------


def test_train_cli_standard_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "standard"
    assert main(tiny_cli_args(out)) == 0
    card = read_json(out / "card.json")

    model = build_model(**card["model"])
    state_dict = torch.load(out / "model.pt", weights_only=True)
    model.load_state_dict(state_dict)
    safetensors_state = load_file(str(out / "model.safetensors"))
    assert_same_weights(state_dict, safetensors_state)

    training_state = torch.load(out / TRAINING_STATE_FILE, weights_only=True)
    assert training_state["epoch"] == 1


def test_train_cli_card_records_run(tmp_path):
    out = tmp_path / "standard"
    main(tiny_cli_args(out, "--seed", "3"))
    card = read_json(out / "card.json")

    for field in CARD_FIELDS:
        assert field in card, field
    assert card["method"] == "standard"
    assert card["seed"] == 3
    assert card["model"]["name"] == "moe"
    assert card["data"] == {
        "name": "synthetic",
        "num_frames": 4,
        "size": 16,
        "num_classes": 8,
        "data_seed": 0,
        "train_clips": 16,
        "test_clips": 8,
    }
    assert card["command"].startswith("tlga-train --out ")
    assert "--seed 3" in card["command"]
    assert 0.0 <= card["clean_accuracy"] <= 1.0
    assert card["robust_accuracy"] is None
    assert card["train_seconds"] > 0


def test_train_atm_card_has_robust_accuracy(tmp_path):
    card = train(TrainConfig(out=tmp_path / "atm", method="atm", eps=8 / 255, attack_steps=2, **TINY))

    assert card["method"] == "atm"
    assert card["model"]["name"] == "moe"
    assert card["attack_steps"] == 2
    assert card["attack_alpha"] == pytest.approx(2.5 * (8 / 255) / 2)
    assert 0.0 <= card["robust_accuracy"] <= 1.0
    assert card["robust_eval"]["steps"] == 10
    assert card["robust_eval"]["alpha"] == pytest.approx(2 / 255)

    model, _ = load_model(tmp_path / "atm" / "model.safetensors", tmp_path / "atm" / "card.json")
    assert not model.training


def test_train_atd_trains_dense_counterpart(tmp_path):
    card = train(TrainConfig(out=tmp_path / "atd", method="atd", attack_steps=1, robust_eval=False, **TINY))

    assert card["model"]["name"] == "dense"
    assert "top_k" not in card["model"]
    assert card["method"] == "atd"


def test_train_cli_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["--out", str(tmp_path), "--model", "resnet"])

    assert error.value.code == 2
    assert "resnet" in capsys.readouterr().err


def test_train_cli_rejects_negative_eps(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["--out", str(tmp_path), "--eps", "-3"])

    assert error.value.code == 2
    assert "--eps -3 is invalid" in capsys.readouterr().err


def test_train_cli_rejects_size_text(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--size", "big"])

    assert "invalid size 'big'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": "vit"}, "model='vit' is invalid"),
        ({"method": "free"}, "method='free' is invalid"),
        ({"method": "atd", "model": "transformer"}, "cannot be trained with method='atd'"),
        ({"data": "/no/such/folder"}, "data='/no/such/folder' is invalid"),
        ({"epochs": 0}, "epochs=0 is invalid"),
        ({"batch_size": 2.5}, "batch_size=2.5 is invalid"),
        ({"lr": -1.0}, "lr=-1.0 is invalid"),
        ({"eps": 2.0}, "eps=2.0 is invalid"),
        ({"method": "atm", "eps": 0.0}, "eps=0 is invalid for method='atm'"),
        ({"num_classes": 5, "data": "footage"}, "num_classes=5 applies only"),
        ({"model": "dense", "top_k": 2}, "top_k=2 does not apply"),
        ({"model": "transformer", "expert": "r3d_18"}, "expert='r3d_18' does not apply"),
        ({"lr_schedule": "step"}, "lr_schedule='step' is invalid"),
    ],
)
def test_train_config_rejects_invalid_setting(tmp_path, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(out=tmp_path, **settings)


def test_train_folder_without_splits_is_rejected(tmp_path):
    (tmp_path / "videos").mkdir()

    with pytest.raises(ValueError, match="has no train/ folder"):
        TrainConfig(out=tmp_path / "run", data=str(tmp_path / "videos"))


def test_train_rejects_batch_not_divisible_by_processes(tmp_path, monkeypatch):
    # A fake group of three processes reaches the check without starting any process.
    from tlga_attacks.training import trainer

    monkeypatch.setattr(
        trainer,
        "setup_process_group",
        lambda device: trainer.ProcessGroup(rank=0, world_size=3, device=torch.device("cpu"), owns_group=False),
    )

    with pytest.raises(ValueError, match="batch_size=8 is invalid for 3 processes"):
        train(TrainConfig(out=tmp_path, **TINY))


def test_train_folder_data_decodes_encoded_files(tmp_path):
    for split, count in (("train", 8), ("test", 4)):
        SyntheticActions(count, num_frames=4, size=16, num_classes=4, split=split).export(tmp_path / "data" / split)

    card = train(TrainConfig(out=tmp_path / "run", data=str(tmp_path / "data"), num_frames=4, size=16, batch_size=4))

    assert card["data"]["name"] == "folder"
    assert card["data"]["num_classes"] == 4
    assert card["data"]["train_clips"] == 8
    assert card["data"]["test_clips"] == 4


# -- resume ----------------------------------------------------------------------------------


def test_train_resume_continues_from_last_epoch(tmp_path):
    out = tmp_path / "resumed"
    first = train(TrainConfig(out=out, **TINY))
    second = train(TrainConfig(out=out, **dict(TINY, epochs=2)))

    assert [record["epoch"] for record in second["history"]] == [1, 2]
    # The first epoch was not trained again: its record is the one of the first run.
    assert second["history"][0] == first["history"][0]
    assert torch.load(out / TRAINING_STATE_FILE, weights_only=True)["epoch"] == 2


def test_train_resume_matches_uninterrupted_run(tmp_path):
    train(TrainConfig(out=tmp_path / "resumed", **TINY))
    train(TrainConfig(out=tmp_path / "resumed", **dict(TINY, epochs=2)))
    train(TrainConfig(out=tmp_path / "straight", **dict(TINY, epochs=2)))

    assert_same_weights(final_weights(tmp_path / "resumed"), final_weights(tmp_path / "straight"))


def test_train_resume_after_mid_epoch_crash_matches_uninterrupted(tmp_path, monkeypatch):
    # atm draws random PGD starts, so equal weights also show that the generator state resumes.
    settings = dict(TINY, epochs=2, method="atm", attack_steps=1, robust_eval=False)
    train(TrainConfig(out=tmp_path / "straight", **settings))

    monkeypatch.setenv(STOP_AFTER_BATCHES_ENV, "3")
    with pytest.raises(InterruptedForTesting):
        train(TrainConfig(out=tmp_path / "crashed", **settings))
    assert torch.load(tmp_path / "crashed" / TRAINING_STATE_FILE, weights_only=True)["epoch"] == 1
    assert not (tmp_path / "crashed" / "card.json").exists()

    monkeypatch.delenv(STOP_AFTER_BATCHES_ENV)
    train(TrainConfig(out=tmp_path / "crashed", **settings))

    assert_same_weights(final_weights(tmp_path / "crashed"), final_weights(tmp_path / "straight"))


def test_jtlat_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    # J-TLAT's router and expert optimizers live outside the trainer's optimizer, so equal
    # weights show that the checkpoint carries their moments.
    settings = dict(TINY, epochs=2, method="jtlat", attack_steps=1, robust_eval=False)
    train(TrainConfig(out=tmp_path / "straight", **settings))

    monkeypatch.setenv(STOP_AFTER_BATCHES_ENV, "3")
    with pytest.raises(InterruptedForTesting):
        train(TrainConfig(out=tmp_path / "crashed", **settings))
    saved = torch.load(tmp_path / "crashed" / TRAINING_STATE_FILE, weights_only=True)["method_state"]
    assert set(saved["jtlat"]["expert_optimizers"]) == {f"experts.{index}" for index in range(4)}

    monkeypatch.delenv(STOP_AFTER_BATCHES_ENV)
    train(TrainConfig(out=tmp_path / "crashed", **settings))

    assert_same_weights(final_weights(tmp_path / "crashed"), final_weights(tmp_path / "straight"))


def test_train_cli_interrupt_says_how_to_resume(tmp_path):
    out = tmp_path / "interrupted"
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    environment.pop(STOP_AFTER_BATCHES_ENV, None)
    command = [
        sys.executable, "-m", "tlga_attacks.train", "--data", "synthetic", "--clips", "16", "--test-clips", "8",
        "--num-frames", "4", "--size", "16", "--batch-size", "8", "--epochs", "10000", "--out", str(out),
        "--no-progress",
    ]
    # A shell that runs the suite in the background starts it with SIGINT ignored, and the
    # child would inherit that, so the child gets the default disposition back.
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / TRAINING_STATE_FILE).is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / TRAINING_STATE_FILE).is_file(), "no epoch finished within 120 s"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130, stderr[-2000:]
    assert "run the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert torch.load(out / TRAINING_STATE_FILE, weights_only=True)["epoch"] >= 1


def test_train_resume_rejects_changed_settings(tmp_path):
    train(TrainConfig(out=tmp_path, **TINY))

    with pytest.raises(ValueError, match=r"lr: 0.01 -> 0.02"):
        train(TrainConfig(out=tmp_path, **dict(TINY, epochs=2, lr=0.02)))


def test_train_resume_rejects_fewer_epochs(tmp_path):
    train(TrainConfig(out=tmp_path, **dict(TINY, epochs=2)))

    with pytest.raises(ValueError, match="already finished 2 epochs"):
        train(TrainConfig(out=tmp_path, **TINY))


def test_train_cosine_resume_rejects_other_epochs(tmp_path):
    train(TrainConfig(out=tmp_path, lr_schedule="cosine", **TINY))

    with pytest.raises(ValueError, match="epochs: 1 -> 2"):
        train(TrainConfig(out=tmp_path, lr_schedule="cosine", **dict(TINY, epochs=2)))


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "state.pt"
    path.write_text("old")

    def fail(temporary):
        Path(temporary).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, fail)

    assert path.read_text() == "old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["state.pt"]


# -- methods and evaluation ------------------------------------------------------------------


def test_train_runs_registered_method(tmp_path, monkeypatch):
    calls = []

    def counting_step(context, videos, labels):
        calls.append(videos.shape)
        context.optimizer.zero_grad()
        logits = context.model(videos)
        loss = task_loss(context, logits, labels)
        loss.backward()
        context.optimizer.step()
        return StepOutput(loss=loss.detach(), logits=logits.detach())

    monkeypatch.setitem(METHODS, "counting", TrainingMethod("counting", counting_step))
    card = train(TrainConfig(out=tmp_path, method="counting", **TINY))

    assert card["method"] == "counting"
    assert calls == [torch.Size([8, 3, 4, 16, 16])] * 2


def test_train_eps_warmup_grows_radius_per_batch(tmp_path, monkeypatch):
    radii = []

    def recording_step(context, videos, labels):
        radii.append((context.eps, context.attack_alpha))
        return METHODS["standard"].step(context, videos, labels)

    monkeypatch.setitem(METHODS, "recording", TrainingMethod("recording", recording_step))
    eps, alpha = 8 / 255, 2 / 255
    train(TrainConfig(out=tmp_path, method="recording", eps=eps, attack_alpha=alpha, eps_warmup=1, **dict(TINY, epochs=2)))

    assert [radius for radius, _ in radii] == pytest.approx([eps / 2, eps, eps, eps])
    assert [step for _, step in radii] == pytest.approx([alpha / 2, alpha, alpha, alpha])


def test_train_init_starts_dense_from_moe_weights(tmp_path):
    train(TrainConfig(out=tmp_path / "moe", **TINY))
    init = tmp_path / "moe" / "model.safetensors"

    card = train(TrainConfig(out=tmp_path / "atd", method="atd", init=str(init), attack_steps=1, robust_eval=False, **TINY))

    assert card["init"] == str(init)
    assert card["init_sha256"] == read_json(tmp_path / "moe" / "card.json")["sha256"]
    assert card["model"]["name"] == "dense"


def test_train_init_rejects_other_architecture(tmp_path):
    train(TrainConfig(out=tmp_path / "moe", **TINY))

    with pytest.raises(ValueError, match="does not fit the MoEVideoTransformer"):
        train(TrainConfig(out=tmp_path / "vit", model="transformer", init=str(tmp_path / "moe" / "model.safetensors"), **TINY))


def test_train_init_missing_file_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="init='missing.safetensors': file not found"):
        TrainConfig(out=tmp_path, init="missing.safetensors")


def test_evaluate_matches_manual_accuracy():
    model = build_model("moe", num_classes=8).eval()
    dataset = SyntheticActions(6, num_frames=4, size=16, split="test")
    videos = torch.stack([dataset[index][0] for index in range(6)])
    labels = torch.tensor(dataset.targets)

    with torch.no_grad():
        expected = (model(videos).argmax(dim=1) == labels).float().mean().item()
    metrics = evaluate(model, dataset, batch_size=4)

    assert metrics["clean_accuracy"] == pytest.approx(expected)
    assert metrics["robust_accuracy"] is None


def test_evaluate_zero_eps_keeps_clean_accuracy():
    model = build_model("moe", num_classes=8).eval()
    dataset = SyntheticActions(4, num_frames=4, size=16, split="test")

    metrics = evaluate(model, dataset, batch_size=4, eps=0.0)

    assert metrics["robust_accuracy"] == pytest.approx(metrics["clean_accuracy"])


def test_evaluate_keeps_caller_random_state():
    model = build_model("moe", num_classes=8).eval()
    dataset = SyntheticActions(2, num_frames=4, size=16, split="test")
    torch.manual_seed(5)
    expected = torch.rand(3)

    torch.manual_seed(5)
    evaluate(model, dataset, eps=8 / 255)

    assert torch.equal(torch.rand(3), expected)


# -- torchrun ------------------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The transformer has LayerNorm only, so per-process batches normalize exactly like the global
# batch. aux_weight is 0 because the load-balancing loss is computed per process. SGD because
# AdamW turns rounding noise in zero gradients (attention key biases) into steps of size lr.
DDP_FLAGS = ["--model", "transformer", "--aux-weight", "0", "--optimizer", "sgd", "--lr", "0.05", "--clips", "16",
             "--test-clips", "8", "--num-frames", "4", "--size", "16", "--batch-size", "8", "--no-progress"]


def run_torchrun(out, epochs):
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    environment.pop(STOP_AFTER_BATCHES_ENV, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "-m", "tlga_attacks.train", "--out", str(out), "--epochs", str(epochs),
        *DDP_FLAGS,
    ]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def torchrun_one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "two"
    run_torchrun(out, epochs=1)
    return out


def test_torchrun_two_processes_match_one_process(torchrun_one_epoch, tmp_path):
    main(["--out", str(tmp_path / "one"), "--epochs", "1", *DDP_FLAGS])

    two_process_card = read_json(torchrun_one_epoch / "card.json")
    one_process_card = read_json(tmp_path / "one" / "card.json")
    assert two_process_card["world_size"] == 2
    assert one_process_card["world_size"] == 1
    assert two_process_card["history"][0]["loss"] == pytest.approx(one_process_card["history"][0]["loss"], rel=1e-5)
    assert two_process_card["clean_accuracy"] == one_process_card["clean_accuracy"]
    assert_same_weights(final_weights(torchrun_one_epoch), final_weights(tmp_path / "one"), atol=1e-5)


def test_torchrun_resume_matches_one_process(torchrun_one_epoch, tmp_path):
    shutil.copytree(torchrun_one_epoch, tmp_path / "two")
    result = run_torchrun(tmp_path / "two", epochs=2)
    main(["--out", str(tmp_path / "one"), "--epochs", "2", *DDP_FLAGS])

    assert "resuming" in result.stderr
    assert [record["epoch"] for record in read_json(tmp_path / "two" / "card.json")["history"]] == [1, 2]
    assert_same_weights(final_weights(tmp_path / "two"), final_weights(tmp_path / "one"), atol=1e-5)
