"""Tests of the benchmark runner ``tlga-bench`` on a tiny trained MoE and synthetic clips."""

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench_testing
from tlga_attacks.bench import cli
from tlga_attacks.bench.config import (
    ATTACK_NAMES,
    ModelEntry,
    parse_attacks,
    parse_eps,
    read_config_file,
    resolve_config,
)
from tlga_attacks.bench.metrics import check_eps_ball, check_eps_zero, check_monotonic
from tlga_attacks.bench.runner import (
    BenchInterrupted,
    STOP_AFTER_CELLS_ENV,
    attack_video,
    load_model,
    run_benchmark,
    select_clips,
)
from tlga_attacks.data.io import write_video
from tlga_attacks.data.synthetic import SyntheticActions

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
ATTACKS = ["pgd", "tla-r", "j-tlga"]
PLOTS = ["robust_accuracy_vs_eps.png", "routing_vs_eps.png", "robust_accuracy_vs_passes.png"]
# Wall time differs between two runs of the same cell; everything else must match exactly.
TIMING_FIELDS = ("seconds_per_clip",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """State dict of a briefly trained tiny MoE, saved as a user would save it."""
    with one_thread():
        model = bench_testing.train_briefly(bench_testing.tiny_moe(), epochs=4, num_clips=64)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny_moe.pt"
    torch.save(model.state_dict(), path)
    return path


@contextlib.contextmanager
def one_thread():
    """Run on one thread, as each torchrun process does; on a busy machine it is also faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def small_run(checkpoint, tmp_path_factory):
    """Output folder of one complete run: 3 attacks at eps 4 and 8 on 8 clips, 2 steps."""
    out = tmp_path_factory.mktemp("small_run") / "bench"
    torch.manual_seed(0)
    with one_thread():
        assert cli.main(run_arguments(checkpoint, out)) == 0
    return out


def run_arguments(checkpoint, out, attacks=ATTACKS, eps="4,8", extra=()):
    return [
        "run",
        "--model", "bench_testing:tiny_moe",
        "--checkpoint", str(checkpoint),
        "--num-frames", str(bench_testing.NUM_FRAMES),
        "--size", str(bench_testing.SIZE),
        "--attacks", ",".join(attacks),
        "--eps", eps,
        "--steps", "2",
        "--batch-size", "4",
        "--limit", "8",
        "--seed", "3",
        "--out", str(out),
        "--no-progress",
        *extra,
    ]


def load_results(out):
    return json.loads((Path(out) / "results.json").read_text())


def comparable(records):
    """Records without their wall-clock fields, keyed by cell id."""
    result = {}
    for record in records:
        record = dict(record)
        for name in TIMING_FIELDS:
            record.pop(name, None)
        record["counts"] = {key: value for key, value in record.get("counts", {}).items() if key != "attack_seconds"}
        result[record["id"]] = record
    return result


def cell_mtimes(out):
    return {path.name: path.stat().st_mtime_ns for path in (Path(out) / "cells").glob("*.json")}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- a full small run ---------------------------------------------------------------------------


def test_run_writes_results_report_and_plots(small_run):
    out = small_run

    results = load_results(out)

    cells = [record for record in results["records"] if record["kind"] == "cell"]
    checks = [record for record in results["records"] if record["kind"] == "eps0_check"]
    assert results["schema_version"] == 1
    assert results["library"]["name"] == "tlga-attacks"
    assert results["packages"]["torch"] is not None
    assert "platform" in results["machine"]
    assert results["config"]["attacks"] == ATTACKS
    assert {(record["attack"], record["eps"]) for record in cells} == {(a, e) for a in ATTACKS for e in (4.0, 8.0)}
    assert len(checks) == len(ATTACKS)

    for record in cells:
        assert record["status"] == "ok", record
        assert record["num_clips"] == 8
        assert record["robust_accuracy"] <= record["clean_accuracy"]
        assert record["max_linf"] <= record["eps"] / 255 + 1e-6
        assert record["eps_violations"] == 0
        assert record["routing_flip_rate"] is not None
        assert 0.0 <= record["routing_iou"] <= 1.0
        assert record["lips_r"] is not None
        assert record["forward_passes_per_clip"] >= 1
        assert record["gflops_per_clip"] > 0
    pgd = next(record for record in cells if record["attack"] == "pgd")
    assert pgd["backward_passes_per_clip"] == 2

    with open(out / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(results["records"])

    report = (out / "report.md").read_text()
    for attack in ATTACKS:
        assert f"| {attack} | " in report
    assert "| attack | eps 4 | eps 8 |" in report
    assert "## Checks" in report
    assert "FAIL" not in report
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_rerenders_from_cells(small_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(small_run, out)
    for name in ["report.md", "results.json", "results.csv"] + PLOTS:
        (out / name).unlink()

    assert cli.main(["report", str(out)]) == 0

    assert (out / "report.md").read_text() == (small_run / "report.md").read_text()
    assert comparable(load_results(out)["records"]) == comparable(load_results(small_run)["records"])
    assert (out / "results.csv").read_text() == (small_run / "results.csv").read_text()
    for name in PLOTS:
        assert (out / name).is_file()
    assert "9 cells, 0 missing" in capsys.readouterr().out


def test_report_command_rejects_folder_without_run(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "run.json" in capsys.readouterr().err


# -- resuming ---------------------------------------------------------------------------------


def test_interrupted_run_resumes_to_same_results(checkpoint, small_run, tmp_path, monkeypatch):
    torch.manual_seed(0)
    resumed = tmp_path / "resumed"

    monkeypatch.setenv(STOP_AFTER_CELLS_ENV, "4")
    assert cli.main(run_arguments(checkpoint, resumed)) == 3
    finished = cell_mtimes(resumed)
    assert len(finished) == 4

    monkeypatch.delenv(STOP_AFTER_CELLS_ENV)
    assert cli.main(run_arguments(checkpoint, resumed)) == 0

    after = cell_mtimes(resumed)
    assert all(after[name] == mtime for name, mtime in finished.items())
    assert len(after) == 9
    assert comparable(load_results(resumed)["records"]) == comparable(load_results(small_run)["records"])


def test_stop_hook_raises_from_library(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_AFTER_CELLS_ENV, "1")
    config = resolve_config({
        "model": "bench_testing:tiny_moe", "checkpoint": str(checkpoint), "num_frames": 8, "size": 16,
        "attacks": "tla-r", "eps": "8", "steps": 1, "batch_size": 4, "limit": 4, "out": str(tmp_path / "bench"),
    })

    with pytest.raises(BenchInterrupted, match=STOP_AFTER_CELLS_ENV):
        run_benchmark(config)


def test_rerun_reuses_cells_unless_config_changes_or_force(checkpoint, tmp_path, capsys):
    torch.manual_seed(0)
    out = tmp_path / "bench"
    arguments = run_arguments(checkpoint, out, attacks=["tla-r"], eps="8") + ["--limit", "4"]
    assert cli.main(arguments) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    first = cell_mtimes(out)
    first_hashes = {record["config_hash"] for record in load_results(out)["records"]}

    assert cli.main(arguments) == 0
    reused = cell_mtimes(out)
    assert cli.main(arguments + ["--steps", "3"]) == 0
    changed = cell_mtimes(out)
    changed_records = load_results(out)["records"]
    assert cli.main(arguments + ["--steps", "3", "--force"]) == 0
    forced = cell_mtimes(out)

    cell, check = "tiny_moe-tiny_moe__tla-r__8.json", "tiny_moe-tiny_moe__tla-r__eps0-check.json"
    assert reused == first
    assert changed[cell] != first[cell]
    assert changed[check] == first[check]  # the eps-0 check always runs 1 step
    assert [record["steps"] for record in changed_records] == [1, 3]
    assert len(first_hashes & {record["config_hash"] for record in changed_records}) == 1
    assert all(forced[name] != changed[name] for name in changed)


# -- several processes ------------------------------------------------------------------------


def test_torchrun_two_processes_match_one_process(checkpoint, small_run, tmp_path):
    double = tmp_path / "double"
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]), OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "-m", "tlga_attacks.bench", *run_arguments(checkpoint, double),
    ]

    completed = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr[-3000:]
    results = load_results(double)
    assert results["machine"]["world_size"] == 2
    assert comparable(results["records"]) == comparable(load_results(small_run)["records"])


# -- the attack command -----------------------------------------------------------------------


@pytest.fixture
def video_file(tmp_path):
    clip, _ = SyntheticActions(1, num_frames=8, size=16, num_classes=4, split="test")[0]
    return write_video(tmp_path / "clip.mkv", clip)


def test_attack_command_round_trip(checkpoint, video_file, tmp_path, capsys):
    torch.manual_seed(0)
    output = tmp_path / "clip_adv.mkv"

    code = cli.main([
        "attack", str(video_file), "--model", "bench_testing:tiny_moe", "--checkpoint", str(checkpoint),
        "--num-frames", "8", "--size", "16", "--steps", "3", "--out", str(output),
    ])

    printed = capsys.readouterr().out
    assert code == 0
    assert output.is_file()
    assert "clean prediction:" in printed
    assert "adversarial prediction:" in printed
    assert "top-1 expert:" in printed
    assert "keeps the adversarial prediction" in printed


def test_attack_video_writes_exact_clip_inside_eps_ball(checkpoint, video_file, tmp_path):
    torch.manual_seed(0)
    entry = ModelEntry("bench_testing:tiny_moe", checkpoint=str(checkpoint), num_frames=8, size=16)

    result = attack_video(str(video_file), entry, str(tmp_path / "adv.mkv"), attack="pgd", eps=8, steps=3, label=1)

    assert result.round_trip_ok
    assert result.pixel_difference == 0.0
    assert result.max_linf <= 8 / 255 + 1e-6
    assert result.label == 1
    assert len(result.clean_experts) == 1


def test_attack_command_fails_on_prediction_mismatch(checkpoint, video_file, tmp_path, monkeypatch, capsys):
    real_attack_video = cli.attack_video

    def decoded_differently(*args, **kwargs):
        result = real_attack_video(*args, **kwargs)
        result.decoded_prediction = result.adversarial_prediction + 1
        return result

    monkeypatch.setattr(cli, "attack_video", decoded_differently)
    code = cli.main([
        "attack", str(video_file), "--model", "bench_testing:tiny_moe", "--checkpoint", str(checkpoint),
        "--num-frames", "8", "--size", "16", "--steps", "1", "--out", str(tmp_path / "adv.mkv"),
    ])

    assert code == 1
    assert "decodes to prediction" in capsys.readouterr().err


def test_attack_command_rejects_lossy_output(checkpoint, video_file, tmp_path, capsys):
    code = cli.main([
        "attack", str(video_file), "--model", "bench_testing:tiny_moe", "--checkpoint", str(checkpoint),
        "--num-frames", "8", "--size", "16", "--steps", "1", "--out", str(tmp_path / "adv.mp4"),
    ])

    assert code == 2
    assert "lossless" in capsys.readouterr().err


# -- guards -----------------------------------------------------------------------------------


def test_eps_zero_cells_equal_clean_accuracy(checkpoint, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "bench"

    assert cli.main(run_arguments(checkpoint, out, attacks=["pgd", "j-tlga"], eps="0,4") + ["--limit", "4"]) == 0

    results = load_results(out)
    zero = [record for record in results["records"] if record["eps"] == 0]
    assert [record["kind"] for record in zero] == ["cell", "cell"]
    for record in zero:
        assert record["robust_accuracy"] == record["clean_accuracy"]
        assert record["max_linf"] == 0.0
        assert record["routing_flip_rate"] == 0.0
    eps0_checks = [check for check in results["checks"] if check["check"] == "eps0"]
    assert len(eps0_checks) == 2
    assert all(check["passed"] for check in eps0_checks)


def fabricated(attack, eps, robust, clean=0.75, clips=8, **fields):
    record = {
        "id": f"m__{attack}__{eps:g}", "kind": "cell", "model": "m", "attack": attack, "eps": eps, "status": "ok",
        "num_clips": clips, "clean_accuracy": clean, "robust_accuracy": robust, "max_linf": eps / 255,
        "eps_violations": 0,
        "counts": {"clean_correct": round(clean * clips), "adv_correct": round(robust * clips)},
    }
    record.update(fields)
    return record


def test_monotonic_check_reports_rising_accuracy():
    records = [fabricated("pgd", 4, 0.5), fabricated("pgd", 8, 0.625), fabricated("pgd", 12, 0.25)]

    checks = check_monotonic(records)

    assert len(checks) == 1
    assert not checks[0]["passed"]
    assert "eps 4: 50.00% -> eps 8: 62.50%" in checks[0]["detail"]
    assert "eps 12" not in checks[0]["detail"]


def test_monotonic_check_accepts_equal_and_falling_accuracy():
    records = [fabricated("tla-r", 4, 0.5), fabricated("tla-r", 8, 0.5), fabricated("tla-r", 12, 0.125)]

    checks = check_monotonic(records)

    assert [check["passed"] for check in checks] == [True]


def test_eps_zero_check_flags_changed_accuracy():
    passing = fabricated("pgd", 0, 0.75)
    failing = fabricated("tt", 0, 0.5)

    checks = check_eps_zero([passing, failing])

    assert [check["passed"] for check in checks] == [True, False]
    assert "50.00%" in checks[1]["detail"]


def test_eps_zero_check_fails_attack_that_errored():
    errored = dict(fabricated("tt", 0, 0.5), status="error", reason="ValueError: alpha must be positive")

    checks = check_eps_zero([errored])

    assert [check["passed"] for check in checks] == [False]
    assert "alpha must be positive" in checks[0]["detail"]


def test_eps_ball_check_flags_violation():
    inside = fabricated("pgd", 8, 0.5)
    outside = fabricated("fgsm", 8, 0.5, max_linf=9 / 255, eps_violations=2)

    checks = check_eps_ball([inside, outside])

    assert [check["passed"] for check in checks] == [True, False]
    assert "2 of 8 clips outside" in checks[1]["detail"]


# -- data and models --------------------------------------------------------------------------


def test_config_with_two_models_and_one_without_router(checkpoint, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "bench"
    config_file = tmp_path / "bench.json"
    config_file.write_text(json.dumps({
        "models": [
            {"model": "bench_testing:tiny_moe", "checkpoint": str(checkpoint), "name": "moe"},
            {"model": "bench_testing:tiny_dense", "name": "dense"},
        ],
        "num_frames": 8, "size": 16, "attacks": "pgd,tla-r", "eps": [8], "steps": 1, "batch_size": 4, "limit": 4,
        "out": str(out),
    }))

    assert cli.main(["run", "--config", str(config_file), "--no-progress"]) == 0

    results = load_results(out)
    records = {record["id"]: record for record in results["records"]}
    assert set(results["datasets"]) == {"moe", "dense"}
    assert results["datasets"]["dense"]["has_router"] is False
    assert records["moe__tla-r__8"]["status"] == "ok"
    assert records["moe__tla-r__8"]["routing_flip_rate"] is not None
    assert records["dense__pgd__8"]["status"] == "ok"
    assert records["dense__pgd__8"]["routing_flip_rate"] is None
    assert records["dense__pgd__8"]["lips_r"] is None
    assert records["dense__tla-r__8"]["status"] == "not_applicable"
    assert "| tla-r | n/a |" in (out / "report.md").read_text()


def test_folder_data_skips_corrupt_video(checkpoint, tmp_path):
    torch.manual_seed(0)
    root = SyntheticActions(6, num_frames=8, size=16, num_classes=4, split="test").export(tmp_path / "videos")
    corrupt = root / "01_left" / "broken.mkv"
    corrupt.write_bytes(os.urandom(2048))
    out = tmp_path / "bench"
    arguments = [
        "run", "--model", "bench_testing:tiny_moe", "--checkpoint", str(checkpoint), "--data", str(root),
        "--num-frames", "8", "--size", "16", "--attacks", "pgd", "--eps", "8", "--steps", "1",
        "--batch-size", "4", "--out", str(out), "--no-progress", "--limit", "all",
    ]

    assert cli.main(arguments) == 0

    dataset = load_results(out)["datasets"]["tiny_moe-tiny_moe"]
    assert dataset["clips"] == 6
    assert [path for path, _ in dataset["skipped"]] == [str(corrupt)]
    report = (out / "report.md").read_text()
    assert "## Skipped videos" in report
    assert "broken.mkv" in report


def test_zoo_name_without_zoo_module_raises_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tlga_attacks.zoo", None)

    with pytest.raises(ValueError, match="tlga_attacks.zoo"):
        load_model(ModelEntry("moe-synthetic-atm"), torch.device("cpu"))


def test_missing_factory_raises_clear_error():
    with pytest.raises(ValueError, match="no callable 'missing_factory'"):
        load_model(ModelEntry("bench_testing:missing_factory"), torch.device("cpu"))


def test_select_clips_spreads_over_data_set():
    assert select_clips(10, 4) == [0, 2, 5, 7]
    assert select_clips(3, 8) == [0, 1, 2]
    assert select_clips(5, None) == [0, 1, 2, 3, 4]
    assert select_clips(240, 3, spread=False) == [0, 1, 2]


# -- bad arguments ----------------------------------------------------------------------------


def test_parse_attacks_rejects_unknown_name():
    with pytest.raises(ValueError, match="'bogus' is unknown") as error:
        parse_attacks("pgd,bogus")
    assert "j-tlga" in str(error.value)


@pytest.mark.parametrize("text", ["abc", "-1", "300", "nan", ""])
def test_parse_eps_rejects_invalid_values(text):
    with pytest.raises(ValueError, match="eps"):
        parse_eps(text)


def test_parse_eps_sorts_and_deduplicates():
    assert parse_eps("8, 4,8") == [4.0, 8.0]


def test_cli_rejects_unknown_attack(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--attacks", "pgd,bogus"])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "'bogus' is unknown" in error
    assert ", ".join(ATTACK_NAMES) in error


def test_cli_rejects_bad_eps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--eps", "8,-2"])

    assert exit_info.value.code == 2
    assert "'-2'" in capsys.readouterr().err


def test_cli_reports_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing.pt"

    code = cli.main(["run", "--model", "bench_testing:tiny_moe", "--checkpoint", str(missing), "--out", str(tmp_path)])

    error = capsys.readouterr().err
    assert code == 2
    assert "checkpoint not found" in error
    assert str(missing) in error


def test_cli_reports_missing_data_folder(tmp_path, capsys):
    code = cli.main(["run", "--model", "bench_testing:tiny_moe", "--data", str(tmp_path / "nowhere")])

    assert code == 2
    assert "data folder not found" in capsys.readouterr().err


def test_config_file_rejects_unknown_key(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"atacks": "pgd"}))

    with pytest.raises(ValueError, match="unknown keys \\['atacks'\\]"):
        read_config_file(path)


def test_config_layers_merge_file_and_flags(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({
        "models": [{"model": "a:f", "name": "first"}, {"model": "b:g", "name": "second"}],
        "steps": 7, "eps": [2, 4], "attack_kwargs": {"pgd": {"alpha": 0.01}},
    }))

    config = resolve_config(read_config_file(path), {"steps": 3, "num_frames": 4})

    assert [entry.label for entry in config.models] == ["first", "second"]
    assert [entry.num_frames for entry in config.models] == [4, 4]
    assert config.steps == 3
    assert config.eps == [2.0, 4.0]
    assert config.attack_kwargs["pgd"] == {"alpha": 0.01}
    assert config.attack_kwargs["square"] == {"n_queries": 50}


def test_default_config_covers_every_attack():
    config = resolve_config()

    assert config.attacks == list(ATTACK_NAMES)
    assert config.eps == [8.0, 10.0, 12.0, 14.0]
    assert [entry.model for entry in config.models] == ["moe-synthetic-atm", "moe-footage"]
    assert [entry.data for entry in config.models] == ["synthetic", "footage"]
