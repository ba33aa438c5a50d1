"""An ART pipeline around a small video MoE: train, attack with J-TLGA, adversarially fine-tune.

Steps:

1. render a small motion-classification task (``SyntheticActions``: the class is the motion
   of a textured disc, so it can only be read across frames);
2. wrap a ``VideoMoE`` with tiny 3-D CNN experts in an ART ``PyTorchClassifier`` with
   per-channel mean/std preprocessing, and train it with ``PyTorchClassifier.fit``;
3. report clean accuracy and robust accuracy under the ART version of J-TLGA;
4. fine-tune with ART's ``AdversarialTrainer`` on J-TLGA examples and report both again.

Run ``python examples/art_pipeline.py`` (about a minute on two CPU cores) or add ``--quick``
for a smoke run of a few seconds. Every option is listed by ``--help``.
"""

import argparse
import time

import numpy as np
import torch
from art.defences.trainer import AdversarialTrainer
from art.estimators.classification import PyTorchClassifier

from tlga_attacks.art import JTLGA
from tlga_attacks.data.synthetic import SyntheticActions
from tlga_attacks.models import VideoMoE


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=2, help="motion classes, 2 to 12 (default: 2)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default: 8)")
    parser.add_argument("--size", type=int, default=16, help="frame height and width in pixels (default: 16)")
    parser.add_argument("--train-clips", type=int, default=256, help="training clips (default: 256)")
    parser.add_argument("--test-clips", type=int, default=64, help="test clips (default: 64)")
    parser.add_argument("--epochs", type=int, default=10, help="clean training epochs (default: 10)")
    parser.add_argument("--adv-epochs", type=int, default=2, help="adversarial fine-tuning epochs (default: 2)")
    parser.add_argument("--eps", type=float, default=4 / 255, help="L-infinity budget in [0, 1] pixel units (default: 4/255)")
    parser.add_argument("--steps", type=int, default=5, help="J-TLGA steps (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch, numpy and the data (default: 0)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 32 clips, 1 epoch each, 2 steps")
    args = parser.parse_args(argv)

    if args.quick:
        args.train_clips, args.test_clips, args.epochs, args.adv_epochs, args.steps = 32, 16, 1, 1, 2
    return args


def render(num_clips: int, split: str, args: argparse.Namespace):
    """Render a split as numpy arrays: float32 clips (N, 3, T, H, W) and int64 labels (N,)."""
    dataset = SyntheticActions(
        num_clips, num_frames=args.frames, size=args.size, num_classes=args.classes,
        seed=args.seed, split=split,
    )
    clips = np.stack([dataset.render(index).numpy() for index in range(num_clips)])
    return clips, np.asarray(dataset.targets, dtype=np.int64)


def accuracy(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray) -> float:
    return float((classifier.predict(x, batch_size=64).argmax(axis=1) == y).mean())


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    started = time.perf_counter()

    # Data and model.
    x_train, y_train = render(args.train_clips, "train", args)
    x_test, y_test = render(args.test_clips, "test", args)
    mean = x_train.mean(axis=(0, 2, 3, 4))
    std = x_train.std(axis=(0, 2, 3, 4))

    model = VideoMoE(args.classes, num_experts=4, top_k=1, expert="tiny3d", expert_width=0.5)
    classifier = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=5e-3),
        input_shape=x_train.shape[1:],
        nb_classes=args.classes,
        clip_values=(0.0, 1.0),
        preprocessing=(mean, std),
        device_type="cpu",
    )

    # Clean training.
    classifier.fit(x_train, y_train, batch_size=32, nb_epochs=args.epochs, verbose=False)
    model.eval()

    # Robust accuracy under J-TLGA.
    attack = JTLGA(classifier, eps=args.eps, steps=args.steps, batch_size=32, verbose=False)
    x_adv = attack.generate(x_test, y_test)
    print(f"clean accuracy              {accuracy(classifier, x_test, y_test):.3f}")
    print(f"J-TLGA robust accuracy      {accuracy(classifier, x_adv, y_test):.3f}  (eps {args.eps:.4f})")

    # Adversarial fine-tuning: every training clip is replaced by its J-TLGA example. Training
    # examples are the iterates after the last step (early_stop=False), as in PGD training.
    training_attack = JTLGA(classifier, eps=args.eps, steps=args.steps, early_stop=False, batch_size=32, verbose=False)
    trainer = AdversarialTrainer(classifier, training_attack, ratio=1.0)
    trainer.fit(x_train, y_train, batch_size=32, nb_epochs=args.adv_epochs)
    model.eval()

    x_adv = attack.generate(x_test, y_test)
    print(f"after adversarial training  clean {accuracy(classifier, x_test, y_test):.3f}, "
          f"J-TLGA robust {accuracy(classifier, x_adv, y_test):.3f}")
    print(f"wall time                   {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
