"""Small MoE models and data for the tests of the hooks and attacks.

The models here are written the way users write their own MoEs (other attribute names,
tuple-returning routers, ModuleDict experts), which is what the hooks must cope with; the
library's reference models are tested separately.
"""

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 4
CLIP_SHAPE = (3, 4, 16, 16)  # (C, T, H, W)


class TinyRouter(nn.Module):
    def __init__(self, num_experts: int):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4, num_experts)

    def forward(self, x):
        h = F.adaptive_avg_pool3d(F.relu(self.conv(x)), (1, 2, 2))
        return self.fc(h.flatten(1))


class TinyExpert(nn.Module):
    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.conv = nn.Conv3d(3, width, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm3d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.adaptive_max_pool3d(h, 1).flatten(1)
        return self.fc(h)


def sparse_dispatch(x_units, router_logits, experts, top_k):
    """Top-k sparse dispatch over flattened units: (R, ...) inputs, (R, M) logits."""
    selected = router_logits.topk(top_k, dim=-1).indices
    gates = torch.softmax(router_logits, dim=-1).gather(-1, selected)
    output = None
    for index, expert in enumerate(experts):
        hit = selected == index
        rows = hit.any(dim=-1).nonzero().flatten()
        if rows.numel() == 0:
            continue
        weight = (gates * hit).sum(dim=-1)[rows]
        result = expert(x_units[rows])
        if output is None:
            output = result.new_zeros((x_units.shape[0],) + result.shape[1:])
        shape = (-1,) + (1,) * (result.dim() - 1)
        output = output.index_add(0, rows, weight.reshape(shape) * result)
    return output


class ClipMoE(nn.Module):
    """Clip-level MoE following the router/experts protocol."""

    def __init__(self, num_classes=NUM_CLASSES, num_experts=4, top_k=1):
        super().__init__()
        self.router = TinyRouter(num_experts)
        self.experts = nn.ModuleList(TinyExpert(num_classes) for _ in range(num_experts))
        self.top_k = top_k

    def forward(self, x):
        return sparse_dispatch(x, self.router(x), self.experts, self.top_k)


class TupleRouter(TinyRouter):
    def forward(self, x):
        logits = super().forward(x)
        aux_loss = logits.softmax(-1).mean(0).pow(2).sum()
        return logits, aux_loss


class TupleMoE(nn.Module):
    """A gate that returns (logits, aux_loss), experts in an nn.ModuleDict, model output a
    tuple (logits, aux_loss)."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.gate = TupleRouter(3)
        self.experts = nn.ModuleDict(
            {name: TinyExpert(num_classes) for name in ("motion", "appearance", "context")}
        )
        self.k = 2

    def forward(self, x):
        logits, aux_loss = self.gate(x)
        out = sparse_dispatch(x, logits, list(self.experts.values()), self.k)
        return out, aux_loss


class OddNamesMoE(nn.Module):
    """A user MoE whose router and experts have names the search does not know; the model
    returns a dict."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.selector = TinyRouter(2)
        self.towers = nn.ModuleList(TinyExpert(num_classes) for _ in range(2))

    def forward(self, x):
        return {"logits": sparse_dispatch(x, self.selector(x), self.towers, 1)}


class TokenMoEMLP(nn.Module):
    def __init__(self, dim, num_experts=4, top_k=2):
        super().__init__()
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(num_experts)
        )
        self.top_k = top_k

    def forward(self, tokens):
        batch, units, dim = tokens.shape
        logits = self.router(tokens)
        flat = sparse_dispatch(
            tokens.reshape(-1, dim), logits.reshape(-1, logits.shape[-1]), self.experts, self.top_k
        )
        return flat.reshape(batch, units, dim)


class TokenMoENet(nn.Module):
    """Two token-routed MoE layers with top-2 selection over (T/2 * H/4 * W/4) tokens."""

    def __init__(self, num_classes=NUM_CLASSES, dim=16):
        super().__init__()
        self.embed = nn.Conv3d(3, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.blocks = nn.ModuleList(TokenMoEMLP(dim) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        for norm, block in zip(self.norms, self.blocks):
            tokens = tokens + block(norm(tokens))
        return self.head(tokens.mean(dim=1))


class TimeFirst(nn.Module):
    """Wraps a (N, C, T, H, W) model to take (N, T, C, H, W) input."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.transpose(1, 2))


def make_clips(num_clips, seed=0, num_classes=NUM_CLASSES):
    """Clips whose class is a fixed coarse random template (2 x 2 blocks per frame), plus
    pixel noise; labels balanced."""
    generator = torch.Generator().manual_seed(1234)
    channels, frames, height, width = CLIP_SHAPE
    coarse = torch.rand((num_classes, channels, frames, 2, 2), generator=generator)
    templates = F.interpolate(coarse, size=(frames, height, width), mode="nearest")
    generator.manual_seed(seed)
    labels = torch.arange(num_clips) % num_classes
    noise = torch.rand((num_clips,) + CLIP_SHAPE, generator=generator)
    clips = (0.3 * templates[labels] + 0.7 * noise).clamp(0, 1)
    return clips, labels


def train(model, clips, labels, epochs=30, lr=0.01, route_by_class=1.0):
    """Train with Adam. A clip-level router also learns to send class c to expert c mod M
    (a cross-entropy on its logits), so that routing depends on the clip as in a trained MoE
    with specialized experts; a router trained only through top-1 gates often collapses on
    a task this small."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(clips), 32):
            x, y = clips[start:start + 32], labels[start:start + 32]
            output = model(x)
            logits = output[0] if isinstance(output, tuple) else output
            loss = F.cross_entropy(logits, y)
            router = getattr(model, "router", None)
            if router is not None and route_by_class:
                router_logits = router(x)
                loss = loss + route_by_class * F.cross_entropy(
                    router_logits, y % router_logits.shape[-1]
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def accuracy(model, clips, labels):
    with torch.no_grad():
        output = model(clips)
    logits = output[0] if isinstance(output, tuple) else output
    return (logits.argmax(1) == labels).float().mean().item()


_TRAINED = {}


def trained_clip_moe():
    """A ClipMoE trained once per test session, with its held-out clips and labels."""
    if "model" not in _TRAINED:
        torch.manual_seed(0)
        clips, labels = make_clips(128, seed=0)
        _TRAINED["model"] = train(ClipMoE(), clips, labels, epochs=12)
        _TRAINED["test"] = make_clips(48, seed=1)
    return _TRAINED["model"], _TRAINED["test"]
