"""Cost of J-TLGA against torchattacks.PGD: time per step and peak memory, one run.

Both attacks run on the same model, batch and number of steps. J-TLGA's time includes its
clean reference pass, spread over its steps. Peak memory is measured in a fresh process per
attack: on CUDA with torch.cuda.max_memory_allocated, on the CPU as the rise of the process's
peak resident set size (VmHWM, reset through /proc/self/clear_refs) over its size before the
attack.

Usage:
    python benchmarks/attack_cost.py [--batch-size 8] [--steps 10] [--repeats 5] [--device cpu]

Targets: time ratio at most 1.15, memory ratio at most 1.2.
"""

import argparse
import json
import multiprocessing
import platform
import statistics
import time

import torch
import torchattacks

from tlga_attacks import JTLGA
from tlga_attacks.models import VideoMoE

# Cost does not depend on eps, and with a budget this small no clip is fooled, so J-TLGA
# runs every step instead of stopping early.
EPS = 1 / 255
CLIP_SHAPE = (3, 16, 32, 32)
NUM_CLASSES = 8


def build(device: str, batch_size: int):
    torch.manual_seed(0)
    model = VideoMoE(num_classes=NUM_CLASSES, num_experts=4, top_k=1, expert="tiny3d")
    model = model.to(device).eval()
    videos = torch.rand((batch_size,) + CLIP_SHAPE, device=device)
    with torch.no_grad():
        labels = model(videos).argmax(1)
    return model, videos, labels


def make_attack(name: str, model, steps: int):
    if name == "pgd":
        return torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=steps, random_start=True)
    return JTLGA(model, eps=EPS, steps=steps)


def _steps_run(attack, steps: int) -> int:
    return attack.passes["backward"] if isinstance(attack, JTLGA) else steps


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_memory(name: str, device: str, batch_size: int, steps: int, queue) -> None:
    """Run in a child process: peak memory of one attack call, in MiB."""
    torch.set_num_threads(torch.get_num_threads())
    model, videos, labels = build(device, batch_size)
    attack = make_attack(name, model, steps)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        attack(videos, labels)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        queue.put(peak / 2**20)
        return

    before = _read_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident size
    attack(videos, labels)
    peak = _read_status_kib("VmHWM") - before
    queue.put(peak / 1024)


def measure_time(model, videos, labels, steps: int, repeats: int, device: str) -> dict:
    seconds = {"pgd": [], "jtlga": []}
    attacks = {name: make_attack(name, model, steps) for name in seconds}

    for name, attack in attacks.items():  # warm-up
        attack(videos, labels)

    # Interleaved so that a load change on the machine affects both attacks alike.
    for _ in range(repeats):
        for name, attack in attacks.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            attack(videos, labels)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name].append((time.perf_counter() - start) / _steps_run(attack, steps))

    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    parser.add_argument("--steps", type=int, default=10, help="attack steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per attack")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model, videos, labels = build(args.device, args.batch_size)
    jtlga = make_attack("jtlga", model, args.steps)
    jtlga(videos, labels)
    if jtlga.passes["backward"] != args.steps:
        raise SystemExit(f"J-TLGA stopped after {jtlga.passes['backward']} steps; lower EPS")

    per_step = measure_time(model, videos, labels, args.steps, args.repeats, args.device)

    context = multiprocessing.get_context("spawn")
    memory = {}
    for name in ("pgd", "jtlga"):
        queue = context.Queue()
        child = context.Process(
            target=measure_memory, args=(name, args.device, args.batch_size, args.steps, queue)
        )
        child.start()
        memory[name] = queue.get()
        child.join()

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {args.device}",
        "torch": torch.__version__,
        "model": f"VideoMoE(tiny3d, M=4, k=1), clip {CLIP_SHAPE}",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": per_step,
        "peak_memory_mib": memory,
        "time_ratio": per_step["jtlga"] / per_step["pgd"],
        "memory_ratio": memory["jtlga"] / memory["pgd"],
    }
    print(json.dumps(result, indent=2))
    print(
        f"time ratio JTLGA/PGD {result['time_ratio']:.3f} (target <= 1.15), "
        f"memory ratio {result['memory_ratio']:.3f} (target <= 1.2)"
    )


if __name__ == "__main__":
    main()
