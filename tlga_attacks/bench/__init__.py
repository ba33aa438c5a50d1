"""Benchmark runner: every attack at every budget on video MoE classifiers, side by side.

From the command line::

    tlga-bench run --model my_models:build_moe --checkpoint moe.pt --attacks pgd,j-tlga --eps 8,12
    tlga-bench report tlga-bench-results
    tlga-bench attack clip.mkv --model my_models:build_moe --checkpoint moe.pt

From Python::

    >>> from tlga_attacks.bench import resolve_config, run_benchmark
    >>> config = resolve_config({"model": "my_models:build_moe", "attacks": "pgd,j-tlga", "eps": [8, 12]})
    >>> results = run_benchmark(config)
    >>> results["records"][0]["robust_accuracy"]
"""

from .config import ATTACK_NAMES, BenchConfig, ModelEntry, parse_attacks, parse_eps, resolve_config
from .metrics import check_eps_ball, check_eps_zero, check_monotonic
from .report import render_report
from .runner import BenchInterrupted, VideoAttackResult, attack_video, run_benchmark

__all__ = [
    "ATTACK_NAMES",
    "BenchConfig",
    "BenchInterrupted",
    "ModelEntry",
    "VideoAttackResult",
    "attack_video",
    "check_eps_ball",
    "check_eps_zero",
    "check_monotonic",
    "parse_attacks",
    "parse_eps",
    "render_report",
    "resolve_config",
    "run_benchmark",
]
