"""Tests of the bundled checkpoints in tlga_attacks.zoo."""

import shutil

import pytest
import torch

from tlga_attacks import zoo
from tlga_attacks.data.footage import FootageSpeed
from tlga_attacks.data.synthetic import SyntheticActions
from tlga_attacks.models import DenseVideoMoE, VideoMoE, build_model, count_gflops
from tlga_attacks.training import evaluate

# The checkpoints that benchmarks/train_zoo.py trains. Other scripts may bundle more, and
# the tests below that load checkpoints cover every bundled name.
TRAIN_ZOO_NAMES = ("dense-synthetic-atd", "moe-footage", "moe-synthetic", "moe-synthetic-atm")
BUNDLED_NAMES = zoo.names()
ROBUST_NAMES = tuple(name for name in BUNDLED_NAMES if zoo.card(name)["robust_accuracy"] is not None)

# Accuracies are recomputed on the first clips of the test split only, so they may differ
# from the card's full-split value by sampling error.
RECOMPUTED_CLIPS = 24
TOLERANCE = 0.25


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def card_test_split(card, num_clips):
    """Build the first ``num_clips`` clips of the test split that ``card`` was measured on."""
    data = card["data"]
    if data["name"] == "synthetic":
        return SyntheticActions(
            num_clips,
            num_frames=data["num_frames"],
            size=data["size"],
            num_classes=data["num_classes"],
            seed=data["data_seed"],
            split="test",
        )
    return FootageSpeed("test", num_frames=data["num_frames"], size=data["size"], num_clips=num_clips, seed=data["data_seed"])


def test_zoo_names_lists_train_zoo_checkpoints():
    for name in TRAIN_ZOO_NAMES:
        assert name in BUNDLED_NAMES


def test_zoo_names_are_sorted():
    assert list(BUNDLED_NAMES) == sorted(BUNDLED_NAMES)


def test_zoo_files_fit_size_budget():
    total = sum(path.stat().st_size for path in zoo.ZOO_FOLDER.iterdir() if path.suffix in (".safetensors", ".json"))

    assert total <= 20 * 1024 * 1024


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_zoo_load_runs_forward_on_test_clip(name):
    model, card = zoo.load(name)
    clip, _ = card_test_split(card, 1)[0]

    with torch.no_grad():
        logits = model(clip.unsqueeze(0))

    assert not model.training
    assert logits.shape == (1, card["data"]["num_classes"])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_zoo_card_records_training(name):
    _, card = zoo.load(name)

    assert card["name"] == name
    assert card["command"].startswith("tlga-train ")
    assert card["train_seconds"] > 0
    assert card["library_version"]
    assert build_model(**card["model"]).config == card["model"]


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_zoo_clean_accuracy_matches_card(name):
    model, card = zoo.load(name)

    metrics = evaluate(model, card_test_split(card, RECOMPUTED_CLIPS), batch_size=RECOMPUTED_CLIPS)

    assert metrics["clean_accuracy"] == pytest.approx(card["clean_accuracy"], abs=TOLERANCE)


@pytest.mark.parametrize("name", ROBUST_NAMES)
def test_zoo_robust_accuracy_matches_card(name):
    model, card = zoo.load(name)
    clips = RECOMPUTED_CLIPS // 2

    metrics = evaluate(model, card_test_split(card, clips), batch_size=clips, eps=card["eps"], seed=card["seed"])

    assert card["robust_accuracy"] is not None
    assert metrics["robust_accuracy"] == pytest.approx(card["robust_accuracy"], abs=TOLERANCE)


def test_zoo_models_have_expected_architectures():
    moe, moe_card = zoo.load("moe-synthetic-atm")
    dense, dense_card = zoo.load("dense-synthetic-atd")

    assert isinstance(moe, VideoMoE) and not isinstance(moe, DenseVideoMoE)
    assert isinstance(dense, DenseVideoMoE)
    assert moe_card["method"] == "atm"
    assert dense_card["method"] == "atd"


def test_zoo_moe_costs_less_than_dense():
    moe, card = zoo.load("moe-synthetic")
    dense, _ = zoo.load("dense-synthetic-atd")
    data = card["data"]
    shape = (4, 3, data["num_frames"], data["size"], data["size"])

    assert count_gflops(moe, shape) <= 0.4 * count_gflops(dense, shape)


def test_zoo_card_matches_loaded_card():
    _, loaded_card = zoo.load("moe-synthetic")

    assert zoo.card("moe-synthetic") == loaded_card


def test_zoo_card_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="name='nope' is not a bundled checkpoint"):
        zoo.card("nope")


def test_zoo_load_unknown_name_lists_names():
    with pytest.raises(ValueError) as error:
        zoo.load("moe-kinetics")

    message = str(error.value)
    assert "moe-kinetics" in message
    for name in BUNDLED_NAMES:
        assert name in message


def test_zoo_load_rejects_damaged_weights(tmp_path, monkeypatch):
    for suffix in (".safetensors", ".json"):
        shutil.copy(zoo.ZOO_FOLDER / f"moe-synthetic{suffix}", tmp_path / f"moe-synthetic{suffix}")
    weights = tmp_path / "moe-synthetic.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "ZOO_FOLDER", tmp_path)

    with pytest.raises(ValueError, match="do not match the SHA-256 digest"):
        zoo.load("moe-synthetic")
