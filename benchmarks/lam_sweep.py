"""Sweep of lam, the weight of the Lipschitz ratio terms, and of the gradient of its denominator.

Lip(g) = MSE(g(x'), g(x)) / MSE(x', x) scales like 1/eps^2, so lam has no natural unit and its
default comes from this sweep. For each attack and lam the script prints robust accuracy
(lower = stronger attack). Rows marked "input-grad" let the gradient flow through the
denominator MSE(x', x) as well; the library's attacks detach it.

The model is a bundled checkpoint (--zoo, default moe-synthetic) evaluated on its own test
split, or, with --zoo "", a VideoMoE (tiny3d experts, M=4, k=1) trained here on
SyntheticActions with 16-frame clips.

Usage:
    python benchmarks/lam_sweep.py [--zoo moe-synthetic] [--eps 8] [--clips 96] [--out FILE]
"""

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tlga_attacks import JTLA, JTLGA, TLAM, TLAR, TLGAR, objectives, zoo
from tlga_attacks.data import SyntheticActions
from tlga_attacks.models import VideoMoE

LAMS = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
ATTACKS = [TLAR, TLGAR, TLAM, JTLA, JTLGA]
NUM_CLASSES = 8


def with_input_gradient(attack_class):
    """Return a variant of ``attack_class`` whose Lipschitz denominators pass gradient to x'."""

    class InputGradient(attack_class):
        def model_term(self, clean, adv):
            loss = objectives.model_loss(adv.logits, clean.labels, clean.targets)
            return loss + self.lam * objectives.lipschitz_ratio(adv.logits, clean.logits, adv.x, clean.x)

        def router_term(self, clean, adv, guided):
            loss = objectives.router_loss(adv.router_logits, clean.router_logits)
            loss = loss + self.lam * objectives.router_lipschitz(
                adv.router_logits, clean.router_logits, adv.x, clean.x
            )
            if guided:
                loss = loss - self.gamma1 * objectives.weakest_expert_guidance(
                    adv.router_logits, clean.router_logits
                )
            return loss

    InputGradient.__name__ = attack_class.__name__
    return InputGradient


def train_model(epochs: int, seed: int) -> VideoMoE:
    torch.manual_seed(seed)
    model = VideoMoE(num_classes=NUM_CLASSES, num_experts=4, top_k=1, expert="tiny3d")
    loader = DataLoader(SyntheticActions(1024, num_classes=NUM_CLASSES, seed=seed), batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for videos, labels in loader:
            loss = F.cross_entropy(model(videos), labels) + 0.01 * model.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model, videos, labels) -> float:
    with torch.no_grad():
        return (model(videos).argmax(1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=8, help="L-infinity budget, in 1/255 units")
    parser.add_argument("--clips", type=int, default=96, help="test clips attacked")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs without --checkpoint")
    parser.add_argument("--zoo", default="moe-synthetic", help="bundled checkpoint; '' trains one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args()

    start = time.perf_counter()
    if args.zoo:
        model, card = zoo.load(args.zoo)
        data = card["data"]
        test = SyntheticActions(
            args.clips, num_frames=data["num_frames"], size=data["size"],
            num_classes=data["num_classes"], seed=data["data_seed"], split="test",
        )
    else:
        model = train_model(args.epochs, args.seed)
        test = SyntheticActions(args.clips, num_classes=NUM_CLASSES, seed=args.seed, split="test")
    videos, labels = next(iter(DataLoader(test, batch_size=args.clips)))
    clean = accuracy(model, videos, labels)
    print(f"clean accuracy {clean:.3f} ({args.clips} clips), setup {time.perf_counter() - start:.0f} s")

    eps = args.eps / 255
    rows = []
    for attack_class in ATTACKS:
        for variant, factory in (("detached", attack_class), ("input-grad", with_input_gradient(attack_class))):
            for lam in LAMS:
                if variant == "input-grad" and lam == 0.0:
                    continue  # identical to the detached run
                torch.manual_seed(args.seed)
                adv = factory(model, eps=eps, lam=lam)(videos, labels)
                robust = accuracy(model, adv, labels)
                rows.append({"attack": attack_class.__name__, "variant": variant, "lam": lam, "robust_accuracy": robust})
                print(f"{attack_class.__name__:6s} {variant:10s} lam={lam:<7g} robust accuracy {robust:.3f}", flush=True)

    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                    "eps": args.eps,
                    "clean_accuracy": clean,
                    "rows": rows,
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
