"""Command-line interface ``tlga-train``: train a reference video model and save it with a card.

Examples::

    tlga-train --model moe --data synthetic --epochs 10 --out runs/moe-synthetic
    tlga-train --method atm --eps 8 --attack-steps 3 --out runs/moe-synthetic-atm
    torchrun --nproc-per-node 2 -m tlga_attacks.train --model transformer --out runs/vit

The output folder receives ``checkpoint.pt`` after every epoch, and ``model.safetensors``,
``model.pt`` and ``card.json`` at the end. Running the same command again on the same
``--out`` resumes after the last finished epoch, and a larger ``--epochs`` continues training.
"""

import argparse
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from tlga_attacks.models import BACKBONE_NAMES
from tlga_attacks.training import METHODS, TrainConfig, train
from tlga_attacks.training.checkpoint import TRAINING_STATE_FILE
from tlga_attacks.training.trainer import LR_SCHEDULES, MODEL_CHOICES, OPTIMIZERS

logger = logging.getLogger(__name__)

PROGRAM = "tlga-train"


def _size(text: str) -> Union[int, Tuple[int, int]]:
    """Parse ``32`` or ``32x48`` (height x width)."""
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: pass pixels as 32 or HEIGHTxWIDTH such as 32x48")
    if match.group(2) is None:
        return int(match.group(1))
    return int(match.group(1)), int(match.group(2))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append ``(default: ...)`` to the help of options whose default is not None. Options
    with a None default describe their computed default in their own help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``tlga-train``."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Train a video MoE (or its dense counterpart) and save weights with a model card.",
        formatter_class=_HelpFormatter,
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODEL_CHOICES, default="moe", help="architecture (--method atd always trains 'dense')")
    model.add_argument("--expert", choices=BACKBONE_NAMES, default="tiny3d", help="expert backbone of moe and dense")
    model.add_argument("--num-experts", type=int, default=4, help="experts per MoE layer")
    model.add_argument("--top-k", type=int, default=None, help="experts per routing unit (default: the model's)")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic', 'footage', or a class-folder data set with train/ and test/ (or --split-file)",
    )
    data.add_argument("--split-file", default=None, help="folder of official split files of a folder data set")
    data.add_argument("--fold", type=int, default=1, help="split fold for --split-file")
    data.add_argument("--num-classes", type=int, default=None, help="classes of synthetic data (default 8)")
    data.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    data.add_argument("--size", type=_size, default=32, help="frame size in pixels, 32 or HEIGHTxWIDTH")
    data.add_argument("--clips", type=int, default=None, help="training clips (default 2000 synthetic, 600 footage)")
    data.add_argument("--test-clips", type=int, default=None, help="test clips (default 400 synthetic, 240 footage)")
    data.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic and footage data")
    data.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    data.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep clips in memory after first use (default: on for synthetic and footage)",
    )

    method = parser.add_argument_group("training")
    method.add_argument("--method", choices=sorted(METHODS), default="standard", help="training method")
    method.add_argument("--eps", type=float, default=8.0, help="L-infinity radius of adversarial training and evaluation, in 1/255 units")
    method.add_argument("--attack-steps", type=int, default=3, help="attack steps per batch in adversarial training")
    method.add_argument(
        "--attack-alpha",
        type=float,
        default=None,
        help="step size of the training attack in 1/255 units (default 2.5 * eps / attack-steps). For tlat and "
        "jtlat it is the step of a frame whose gradient norm is the mean over the clip's frames: their attacks get "
        "alpha = attack-alpha / eps * (1 + log 2), relative to eps",
    )
    method.add_argument(
        "--eps-warmup", type=int, default=0, help="epochs over which the training radius grows linearly from 0 to --eps"
    )
    method.add_argument(
        "--init", default=None, help="state dict (.safetensors or .pt) to start from, for example to fine-tune adversarially"
    )
    method.add_argument("--epochs", type=int, default=10, help="training epochs")
    method.add_argument("--batch-size", type=int, default=32, help="global batch size, split over torchrun processes")
    method.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimizer (sgd: momentum 0.9)")
    method.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    method.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    method.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help="learning-rate schedule")
    method.add_argument("--aux-weight", type=float, default=0.01, help="weight of the MoE load-balancing loss")
    method.add_argument("--seed", type=int, default=0, help="seed of initialization, data order and attack noise")
    method.add_argument(
        "--robust-eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure robust accuracy under PGD-10 after training (default: for adversarial methods)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder (a checkpoint already there is resumed)")
    run.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    run.add_argument(
        "--threads", type=int, default=None, help="CPU threads of this process (default: PyTorch's choice)"
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _check_cli_args(args: argparse.Namespace) -> None:
    """Raise ValueError for flags whose CLI units differ from the library's (1/255 units)."""
    if not 0 <= args.eps <= 255:
        raise ValueError(f"--eps {args.eps:g} is invalid: pass a radius in 1/255 units from 0 to 255, such as 8.")
    if args.attack_alpha is not None and not 0 < args.attack_alpha <= 255:
        raise ValueError(f"--attack-alpha {args.attack_alpha:g} is invalid: pass a step in 1/255 units above 0, such as 2.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} is invalid: pass a positive number of threads.")


def config_from_args(args: argparse.Namespace, command: str) -> TrainConfig:
    """Turn parsed flags into a :class:`TrainConfig` (eps and alpha from 1/255 units to [0, 1])."""
    return TrainConfig(
        out=args.out,
        model=args.model,
        expert=args.expert,
        num_experts=args.num_experts,
        top_k=args.top_k,
        data=args.data,
        split_file=args.split_file,
        fold=args.fold,
        num_classes=args.num_classes,
        num_frames=args.num_frames,
        size=args.size,
        clips=args.clips,
        test_clips=args.test_clips,
        data_seed=args.data_seed,
        method=args.method,
        eps=args.eps / 255,
        attack_steps=args.attack_steps,
        attack_alpha=None if args.attack_alpha is None else args.attack_alpha / 255,
        eps_warmup=args.eps_warmup,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        aux_weight=args.aux_weight,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        cache=args.cache,
        progress=not args.no_progress,
        robust_eval=args.robust_eval,
        command=command,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tlga-train`` and return 0, 130 when interrupted (Ctrl-C), or exit with status 2 on
    invalid arguments or settings."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )

    command = shlex.join([PROGRAM] + argv)
    try:
        _check_cli_args(args)
        config = config_from_args(args, command)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    try:
        card = train(config)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{PROGRAM}: error: {error}\n")
    except KeyboardInterrupt:
        if (Path(config.out) / TRAINING_STATE_FILE).is_file():
            logger.warning(
                "interrupted: %s keeps the checkpoint of the last finished epoch; run the same command to resume",
                config.out,
            )
        else:
            logger.warning("interrupted before the first epoch finished: no checkpoint was written to %s", config.out)
        return 130
    logger.info(
        "finished %s: clean accuracy %.4f, robust accuracy %s, %.0f s of training",
        config.out,
        card["clean_accuracy"],
        "n/a" if card["robust_accuracy"] is None else f"{card['robust_accuracy']:.4f}",
        card["train_seconds"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
