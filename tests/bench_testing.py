"""Small models and data for the benchmark tests, loaded as ``bench_testing:<factory>``.

The factories build architectures only. The tests train ``tiny_moe`` once on the
synthetic motion data and save its state dict. The benchmark loads it with
``--checkpoint``, as it would load a user's checkpoint.
"""

import torch
import torch.nn.functional as F

from tlga_attacks.data.synthetic import SyntheticActions
from tlga_attacks.models import VideoMoE, build_backbone

NUM_CLASSES = 4
NUM_FRAMES = 8
SIZE = 16


def tiny_moe(num_classes: int = NUM_CLASSES) -> VideoMoE:
    """A clip-routed MoE with 4 narrow tiny3d experts and top-1 routing."""
    return VideoMoE(num_classes, num_experts=4, top_k=1, expert="tiny3d", router_width=4, expert_width=0.25)


def tiny_dense(num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """A single narrow tiny3d classifier: a model without a router."""
    return build_backbone("tiny3d", num_classes, width=0.25)


def synthetic_clips(num_clips: int, split: str = "train"):
    """Clips (N, 3, 8, 16, 16) and labels of the synthetic motion data, as the benchmark reads them."""
    dataset = SyntheticActions(num_clips, num_frames=NUM_FRAMES, size=SIZE, num_classes=NUM_CLASSES, split=split)
    clips = torch.stack([dataset[index][0] for index in range(num_clips)])
    return clips, torch.tensor(dataset.targets)


def train_briefly(model: torch.nn.Module, epochs: int = 6, num_clips: int = 96) -> torch.nn.Module:
    """Train with Adam for a few epochs.

    A MoE also gets its load-balancing loss, so that its router spreads clips over the
    experts instead of collapsing onto one."""
    torch.manual_seed(0)
    clips, labels = synthetic_clips(num_clips)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    model.train()
    for _ in range(epochs):
        for start in range(0, num_clips, 16):
            logits = model(clips[start:start + 16])
            loss = F.cross_entropy(logits, labels[start:start + 16])
            if getattr(model, "aux_loss", None) is not None:
                loss = loss + 0.1 * model.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
