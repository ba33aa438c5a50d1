"""Command line of the benchmark runner: ``tlga-bench run | report | attack``.

``tlga-bench`` without arguments runs the embedded default configuration. Under torchrun
(``torchrun --nproc-per-node N -m tlga_attacks.bench run ...``) every process runs the
same command and the clips are split between them.

Exit codes: 0 success; 1 the ``attack`` round trip check failed; 2 invalid arguments,
missing files or a model or data set that cannot be built; 3 the run stopped early through
the testing hook ``TLGA_BENCH_STOP_AFTER_CELLS``.
"""

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from .config import ATTACK_NAMES, ModelEntry, parse_attacks, parse_eps, read_config_file, resolve_config
from .report import render_report
from .runner import BenchInterrupted, attack_video, run_benchmark

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3

COMMANDS = ("run", "report", "attack")
HELP_FLAGS = ("-h", "--help")
VERBOSE_FLAGS = ("-v", "--verbose")

# Default of --limit, which distinguishes "not given" from "--limit all" (None).
_NOT_GIVEN = object()


# -- argument types -----------------------------------------------------------------------------


def _attacks_argument(text: str) -> List[str]:
    try:
        return parse_attacks(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _eps_argument(text: str) -> List[float]:
    try:
        return parse_eps(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _single_eps_argument(text: str) -> float:
    budgets = _eps_argument(text)
    if len(budgets) != 1:
        raise argparse.ArgumentTypeError(f"eps={text!r} is invalid: pass one budget in units of 1/255, for example 8.")
    return budgets[0]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int: pass a whole number of at least 1.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: pass a whole number of at least 1.")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int: pass a whole number of at least 0.") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: pass a whole number of at least 0.")
    return value


def _limit_argument(text: str) -> Optional[int]:
    if text.lower() == "all":
        return None
    return _positive_int(text)


def _size_argument(text: str) -> Any:
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise argparse.ArgumentTypeError(f"size={text!r} is invalid: pass an int such as 32 or HEIGHTxWIDTH such as 112x160.")
    return values[0] if len(values) == 1 else values


# -- parser -----------------------------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser, default_model: Optional[str]) -> None:
    parser.add_argument(
        "--model",
        default=default_model,
        help="bundled model name (resolved by tlga_attacks.zoo) or 'module:factory', a function that returns "
        "the torch.nn.Module; the current directory is on the import path"
        + (f" (default: {default_model})" if default_model else ""),
    )
    parser.add_argument("--checkpoint", help="state dict to load: .pt/.pth (torch.load, weights_only) or .safetensors")
    parser.add_argument("--num-frames", type=_positive_int, help="frames per clip T (default: model card, else 16)")
    parser.add_argument("--size", type=_size_argument, help="frame size, 32 or 112x160 (default: model card, else 32)")
    parser.add_argument("--device", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``tlga-bench`` argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="tlga-bench",
        description="Benchmark video MoE classifiers against attacks: robust accuracy, routing damage and cost.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each cell (INFO level)")
    commands = parser.add_subparsers(dest="command", metavar="{run,report,attack}")

    run = commands.add_parser(
        "run",
        help="run every attack at every eps on every model (the default command)",
        description="Run the benchmark. Without options it runs the embedded default configuration; --config "
        "reads a JSON file with the same keys, and flags override both.",
    )
    run.add_argument("--config", help="JSON configuration file (keys as the flags, plus 'models' for several models)")
    _add_model_arguments(run, default_model=None)
    run.add_argument("--data", help="'synthetic', 'footage' or a folder with one subfolder of videos per class")
    run.add_argument("--split", help="split name (test) for synthetic and footage; for a folder, a split list file")
    run.add_argument(
        "--attacks", type=_attacks_argument, help=f"comma-separated attack names: {', '.join(ATTACK_NAMES)}"
    )
    run.add_argument("--eps", type=_eps_argument, help="comma-separated L-inf budgets in units of 1/255, e.g. 8,10,12")
    run.add_argument("--steps", type=_non_negative_int, help="attack iterations")
    run.add_argument("--batch-size", type=_positive_int, help="clips per attack call")
    run.add_argument("--limit", type=_limit_argument, default=_NOT_GIVEN, help="clips per model, or 'all'")
    run.add_argument("--seed", type=_non_negative_int, help="base seed; each cell derives its own")
    run.add_argument("--out", help="output folder")
    run.add_argument("--force", action="store_true", default=None, help="recompute cells that are already finished")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    report = commands.add_parser("report", help="rebuild the report of an output folder from its cells")
    report.add_argument("directory", help="output folder of a run")

    attack = commands.add_parser(
        "attack",
        help="attack one video file and check the written adversarial video",
        description="Decode a video, attack it, write it losslessly, decode the written file again and check "
        "that it keeps the adversarial prediction.",
    )
    attack.add_argument("video", help="input video file")
    _add_model_arguments(attack, default_model="moe-synthetic-atm")
    attack.add_argument("--attack", type=str.lower, choices=ATTACK_NAMES, default="j-tlga", help="attack (default: j-tlga)")
    attack.add_argument("--eps", type=_single_eps_argument, default=8.0, help="budget in units of 1/255 (default: 8)")
    attack.add_argument("--steps", type=_non_negative_int, default=10, help="attack iterations (default: 10)")
    attack.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random start (default: 0)")
    attack.add_argument("--label", type=_non_negative_int, help="true class (default: the clean prediction)")
    attack.add_argument("--out", help="output video, .mkv or .avi (default: <video name>_adv.mkv here)")
    return parser


def _cli_layer(args: argparse.Namespace) -> Dict[str, Any]:
    names = {
        "model": "model", "checkpoint": "checkpoint", "data": "data", "split": "split",
        "num_frames": "num_frames", "size": "size", "attacks": "attacks", "eps": "eps", "steps": "steps",
        "batch_size": "batch_size", "seed": "seed", "out": "out", "force": "force", "device": "device",
    }
    layer = {key: getattr(args, attribute) for attribute, key in names.items() if getattr(args, attribute) is not None}
    if args.limit is not _NOT_GIVEN:
        layer["limit"] = args.limit
    return layer


# -- commands ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    file_layer = read_config_file(args.config) if args.config else None
    config = resolve_config(file_layer, _cli_layer(args))
    results = run_benchmark(config, progress=not args.no_progress)
    if results is None:
        return 0

    failed = [check for check in results["checks"] if not check["passed"]]
    errors = [record for record in results["records"] if record["status"] == "error"]
    print(f"report: {os.path.join(config.out, 'report.md')}")
    print(f"checks: {len(results['checks']) - len(failed)} of {len(results['checks'])} passed; cells failed: {len(errors)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    results = render_report(args.directory)
    print(f"report: {os.path.join(args.directory, 'report.md')} ({len(results['records'])} cells, "
          f"{len(results['missing_cells'])} missing)")
    return 0


def _experts_text(experts: List[List[int]]) -> str:
    return "; ".join(str(layer[0]) if len(layer) == 1 else str(layer) for layer in experts) or "no router"


def _attack(args: argparse.Namespace) -> int:
    entry = ModelEntry(model=args.model, checkpoint=args.checkpoint, num_frames=args.num_frames, size=args.size)
    output = args.out or f"{os.path.splitext(os.path.basename(args.video))[0]}_adv.mkv"
    result = attack_video(
        args.video, entry, output, attack=args.attack, eps=args.eps, steps=args.steps, seed=args.seed,
        label=args.label, device=args.device or "auto",
    )

    print(f"video: {args.video}")
    print(f"label: {result.label}")
    print(f"clean prediction: {result.clean_prediction} (top-1 expert: {_experts_text(result.clean_experts)})")
    print(
        f"adversarial prediction: {result.adversarial_prediction} (top-1 expert: "
        f"{_experts_text(result.adversarial_experts)}){'' if result.fooled else '; the attack did not fool the model'}"
    )
    print(f"decoded prediction: {result.decoded_prediction} (top-1 expert: {_experts_text(result.decoded_experts)})")
    print(f"max L-inf: {255 * result.max_linf:.2f}/255; written vs decoded pixels differ by at most "
          f"{255 * result.pixel_difference:.2f}/255")
    print(f"wrote: {result.output}")

    if not result.round_trip_ok:
        print(
            f"tlga-bench: error: the written file {str(result.output)!r} decodes to prediction "
            f"{result.decoded_prediction}, but the adversarial clip had prediction {result.adversarial_prediction}; "
            "write a lossless .mkv or .avi file",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    print("round trip: the decoded file keeps the adversarial prediction")
    return 0


def _configure_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"{prefix}%(levelname)s %(name)s: %(message)s",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tlga-bench`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)

    # Without a command, "run" is meant: insert it after the global flags.
    position = 0
    while position < len(argv) and argv[position] in VERBOSE_FLAGS:
        position += 1
    if position == len(argv) or argv[position] not in COMMANDS + HELP_FLAGS:
        argv.insert(position, "run")

    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)

    commands = {"run": _run, "report": _report, "attack": _attack}
    try:
        return commands[args.command](args)
    except BenchInterrupted as error:
        print(f"tlga-bench: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as error:
        logger.debug("tlga-bench failed", exc_info=True)
        print(f"tlga-bench: error: {error}", file=sys.stderr)
        return EXIT_USAGE
