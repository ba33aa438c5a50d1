"""Train the TLAT and J-TLAT checkpoints of tlga_attacks.zoo, comparable with moe-synthetic-atm.

Usage::

    python benchmarks/train_defense.py                              # train both, then install them
    python benchmarks/train_defense.py --names moe-synthetic-jtlat  # only one
    python benchmarks/train_defense.py --runs /tmp/defense-runs --parallel 1 --threads 2
    python benchmarks/train_defense.py --names moe-synthetic-atm moe-synthetic-jtlat \
        --epochs 10 --runs runs/defense-10-epochs --no-install      # a longer budget for both

Both checkpoints are ``tlga-train`` runs with the flags of the ATM checkpoint
``moe-synthetic-atm`` in ``benchmarks/train_zoo.py`` (data, clip counts, epochs, eps and its
warm-up, attack steps, learning rate and schedule), except ``--method``. Where that recipe
fine-tunes another checkpoint (``--init``), these runs start from the bundled copy of that
checkpoint in ``tlga_attacks/zoo/``, which ``train_zoo.py`` installs unchanged from its run.
All three adversarially trained MoEs thus start from the same weights and differ only in the
training method. ``--names moe-synthetic-atm`` retrains the ATM recipe the same way, and
``--epochs`` changes the epochs of every run (only with ``--no-install``, because the bundled
checkpoints follow the recipe), to compare the methods at another training budget. Runs, logs, resuming, installation into ``tlga_attacks/zoo/`` (as
``moe-synthetic-tlat`` and ``moe-synthetic-jtlat``, safetensors and JSON card) and the summary
table work as in ``train_zoo.py``, whose functions this script calls.

Cost: J-TLAT runs three attacks per batch (TLA-R, TLGA-R and J-TLGA) where ATM runs one PGD,
plus three parameter updates, so an epoch costs several times an ATM epoch.
"""

import argparse
import time
from pathlib import Path
from typing import Dict, List

import train_zoo

ATM_RECIPE = "moe-synthetic-atm"
METHODS = ("tlat", "jtlat")


def defense_flags(method: str) -> List[str]:
    """Return the tlga-train flags of the ATM recipe with ``--method`` set to ``method`` and
    ``--init`` pointing at the bundled checkpoint that the ATM run starts from."""
    flags = list(train_zoo.RECIPES[ATM_RECIPE])
    flags[flags.index("--method") + 1] = method

    # The recipe names its starting weights "{runs}/<run>/model.safetensors", and train_zoo.py
    # installs that run as tlga_attacks/zoo/<run>.safetensors.
    if "--init" in flags:
        position = flags.index("--init") + 1
        if flags[position].startswith("{runs}/"):
            start = flags[position][len("{runs}/"):].split("/")[0]
            flags[position] = str(train_zoo.ZOO_FOLDER / f"{start}.safetensors")
    return flags


RECIPES: Dict[str, List[str]] = {f"moe-synthetic-{method}": defense_flags(method) for method in METHODS}
RECIPES[ATM_RECIPE] = defense_flags("atm")


def with_epochs(flags: List[str], epochs: int) -> List[str]:
    """Return ``flags`` with the value of ``--epochs`` replaced by ``epochs``."""
    flags = list(flags)
    flags[flags.index("--epochs") + 1] = str(epochs)
    return flags


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--names",
        nargs="+",
        choices=sorted(RECIPES),
        default=[f"moe-synthetic-{method}" for method in METHODS],
        help="checkpoints to train (default: the TLAT and J-TLAT ones)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run instead of the recipe's (needs --no-install)")
    parser.add_argument("--runs", default="/tmp/tlga-defense-runs", help="folder of the training runs and logs")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per training run")
    parser.add_argument("--parallel", type=int, default=2, help="training runs at the same time")
    parser.add_argument("--no-install", action="store_true", help="train only, without copying into tlga_attacks/zoo")
    args = parser.parse_args()
    if args.epochs is not None and not args.no_install:
        parser.error(f"--epochs {args.epochs} needs --no-install: the bundled checkpoints follow the recipe's epochs")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs} is invalid: pass at least 1")
    return args


def main() -> None:
    args = parse_args()
    runs = Path(args.runs)

    for name in args.names:
        flags = RECIPES[name]
        if "--init" in flags and not Path(flags[flags.index("--init") + 1]).is_file():
            raise SystemExit(
                f"{name} starts from {flags[flags.index('--init') + 1]}, which is missing: install the "
                "zoo checkpoints first with python benchmarks/train_zoo.py"
            )

    # train_zoo.run_all reads the flags of each name from train_zoo.RECIPES.
    recipes = {name: with_epochs(RECIPES[name], args.epochs) if args.epochs else RECIPES[name] for name in args.names}
    train_zoo.RECIPES.update(recipes)

    started = time.time()
    train_zoo.run_all(args.names, runs, args.threads, args.parallel)
    print(f"all runs finished in {time.time() - started:.0f} s wall time", flush=True)

    if not args.no_install:
        for name in args.names:
            train_zoo.install(name, runs)
            print(f"installed {name} into {train_zoo.ZOO_FOLDER}", flush=True)

    table = train_zoo.summary(args.names, runs)
    (runs / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
