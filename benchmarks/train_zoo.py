"""Retrain every bundled checkpoint of tlga_attacks.zoo with the exact tlga-train commands.

Usage::

    python benchmarks/train_zoo.py                      # train all four, then install them
    python benchmarks/train_zoo.py --names moe-footage  # only some
    python benchmarks/train_zoo.py --runs /tmp/zoo --parallel 2 --threads 1

Each checkpoint is one ``tlga-train`` run (``python -m tlga_attacks.train``) into
``RUNS/<name>``, logged to ``RUNS/<name>.log``. A run that was interrupted resumes when the
script is started again. After all runs finish, ``model.safetensors`` and ``card.json`` of
each are copied to ``tlga_attacks/zoo/<name>.safetensors`` and ``<name>.json`` (the card
gains ``"name"``), and a Markdown summary with accuracies, training times and GFLOPs per clip
is written to ``RUNS/summary.md``.

``--threads 1`` (the default) runs each training on one CPU thread, and ``--parallel 2`` runs
two trainings at once. On the shared two-core machine of the recorded runs, a training step
of a tiny3d model on a batch of 32 clips took about three times longer with two threads than
with one. Small 3-D convolutions scale poorly across threads on a busy machine.

A recipe that starts from another run's weights (``--init {runs}/<run>/...``) waits for that
run, and trains it first when the runs folder has no finished copy of it.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
ZOO_FOLDER = REPO_ROOT / "tlga_attacks" / "zoo"

# Shared by the three synthetic checkpoints: 8 classes, 8 frames of 32x32 pixels.
SYNTHETIC = ["--data", "synthetic", "--num-frames", "8", "--size", "32", "--test-clips", "400"]

# Adversarial fine-tuning of the standard MoE: PGD-3 at eps 8/255 (alpha 2.5 * eps / 3), eps
# growing over the first epoch, on the first 1000 training clips. The dense counterpart
# starts from the same weights, because DenseVideoMoE has the parameters of VideoMoE.
ADVERSARIAL = ["--init", "{runs}/moe-synthetic/model.safetensors", "--eps", "8", "--attack-steps", "3",
               "--eps-warmup", "1", "--clips", "1000", "--epochs", "5", "--lr", "1e-3", "--lr-schedule", "cosine"]

# The tlga-train flags of each bundled checkpoint. --out, --threads and --no-progress are
# added per run, and "{runs}" is replaced by the runs folder.
RECIPES: Dict[str, List[str]] = {
    "moe-synthetic": ["--model", "moe", "--method", "standard", *SYNTHETIC, "--clips", "2000", "--epochs", "12",
                      "--lr", "3e-3", "--lr-schedule", "cosine", "--robust-eval"],
    "moe-synthetic-atm": ["--model", "moe", "--method", "atm", *SYNTHETIC, *ADVERSARIAL],
    "dense-synthetic-atd": ["--model", "dense", "--method", "atd", *SYNTHETIC, *ADVERSARIAL],
    "moe-footage": ["--model", "moe", "--method", "standard", "--data", "footage", "--num-frames", "8", "--size", "32",
                    "--clips", "1200", "--test-clips", "240", "--epochs", "12", "--lr", "3e-3", "--lr-schedule", "cosine",
                    "--robust-eval"],
}


def dependencies(name: str) -> List[str]:
    """Return the runs whose files the recipe of ``name`` reads (``{runs}/<run>/...`` flags)."""
    return sorted(set(re.findall(r"\{runs\}/([^/]+)/", " ".join(RECIPES[name]))))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", nargs="+", choices=list(RECIPES), default=list(RECIPES), help="checkpoints to train")
    parser.add_argument("--runs", default="/tmp/tlga-zoo-runs", help="folder of the training runs and logs")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per training run")
    parser.add_argument("--parallel", type=int, default=2, help="training runs at the same time")
    parser.add_argument("--no-install", action="store_true", help="train only, without copying into tlga_attacks/zoo")
    return parser.parse_args()


def run_all(names: List[str], runs: Path, threads: int, parallel: int) -> Dict[str, float]:
    """Run the recipes, at most ``parallel`` at once and each after the runs it depends on,
    and return the wall seconds of each."""
    runs.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    pending = list(names)
    running: Dict[str, tuple] = {}
    seconds: Dict[str, float] = {}

    # A recipe that starts from another run's weights also trains that run when it has not
    # finished yet, and waits for it.
    for name in list(pending):
        for dependency in dependencies(name):
            if dependency not in pending and not (runs / dependency / "card.json").is_file():
                pending.insert(0, dependency)

    while pending or running:
        for name in list(pending):
            if len(running) >= parallel:
                break
            if any(dependency in pending or dependency in running for dependency in dependencies(name)):
                continue

            pending.remove(name)
            flags = [flag.replace("{runs}", str(runs)) for flag in RECIPES[name]]
            command = [sys.executable, "-m", "tlga_attacks.train", *flags, "--out", str(runs / name),
                       "--threads", str(threads), "--no-progress"]
            log = open(runs / f"{name}.log", "a")
            print(f"start {name}: {' '.join(command[2:])}", flush=True)
            running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment), log, time.time())

        time.sleep(2)
        for name, (process, log, started) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[name]
            seconds[name] = time.time() - started
            if process.returncode != 0:
                raise SystemExit(f"{name} failed with exit status {process.returncode}: see {runs / name}.log")
            print(f"done  {name} in {seconds[name]:.0f} s", flush=True)

    return seconds


def install(name: str, runs: Path) -> dict:
    """Copy one run's weights and card into the package and return the card."""
    card = json.loads((runs / name / "card.json").read_text())
    card = {"name": name, **card}
    shutil.copyfile(runs / name / "model.safetensors", ZOO_FOLDER / f"{name}.safetensors")
    (ZOO_FOLDER / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def summary(names: List[str], runs: Path) -> str:
    """Return a Markdown table of the runs' cards, with GFLOPs per clip."""
    from tlga_attacks.models import build_model, count_gflops

    lines = [
        "| checkpoint | method | clean acc. | PGD-10 acc. | train s | GFLOPs/clip |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        card = json.loads((runs / name / "card.json").read_text())
        data = card["data"]
        size = data["size"] if isinstance(data["size"], list) else [data["size"]] * 2
        gflops = count_gflops(build_model(**card["model"]), (8, 3, data["num_frames"], *size))
        robust = "n/a" if card["robust_accuracy"] is None else f"{100 * card['robust_accuracy']:.1f}%"
        lines.append(
            f"| {name} | {card['method']} | {100 * card['clean_accuracy']:.1f}% | {robust} | "
            f"{card['train_seconds']:.0f} | {gflops:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    runs = Path(args.runs)

    started = time.time()
    run_all(args.names, runs, args.threads, args.parallel)
    print(f"all runs finished in {time.time() - started:.0f} s wall time", flush=True)

    if not args.no_install:
        for name in args.names:
            install(name, runs)
            print(f"installed {name} into {ZOO_FOLDER}", flush=True)

    table = summary(args.names, runs)
    (runs / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
