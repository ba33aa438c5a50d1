"""Small video transformer whose MLPs are token-routed Mixture-of-Experts layers.

    clip (N, 3, T, H, W)
      -> patch_embed: TubeletEmbedding (conv3d, kernel = stride = tubelet) -> tokens (N, U, D)
      -> + pos_embed (learned, one vector per token)
      -> blocks: depth x TransformerBlock
             tokens + attention(norm1(tokens))
             tokens + moe(norm2(tokens))      MoEMLP: router nn.Linear(D, M) -> (N, U, M),
                                              top-k experts per token, each an ExpertMLP
      -> norm, mean over the U tokens, head -> logits (N, K)

Each ``MoEMLP`` follows the MoE layer protocol described in ``tlga_attacks.models.moe``,
with U routing units per clip, so hooks that work on the clip-level ``VideoMoE`` also work
here.
"""

import logging
import math
from typing import Sequence, Union

import torch
from torch import nn

from .backbones import check_int_range, check_num_classes, to_int_triple
from .moe import AuxLossCopyMixin, dispatch_to_experts, load_balancing_loss

logger = logging.getLogger(__name__)


class TubeletEmbedding(nn.Module):
    """Cut a clip into non-overlapping tubelets and project each one to a D-dim token.

    Args:
        dim: token dimension D.
        tubelet_size: (t, h, w) extent of one tubelet.

    Shape: (N, 3, T, H, W) -> (N, U, D) with U = (T/t) * (H/h) * (W/w), tokens in
    time-major order.
    """

    def __init__(self, dim: int, tubelet_size: Sequence[int]):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=tuple(tubelet_size), stride=tuple(tubelet_size))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the tokens of each clip separately.

    Args:
        dim: token dimension D, divisible by ``num_heads``.
        num_heads: attention heads.

    Shape: (N, U, D) -> (N, U, D).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, dim = tokens.shape
        qkv = self.qkv(tokens).view(batch, num_tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        # Explicit matrix products rather than F.scaled_dot_product_attention, because
        # FlopCounterMode (torch 2.14) has no formula for the fused CPU attention kernel and
        # would count attention as 0 FLOPs.
        scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
        attended = scores.softmax(dim=-1) @ value

        return self.proj(attended.transpose(1, 2).reshape(batch, num_tokens, dim))


class ExpertMLP(nn.Sequential):
    """Feed-forward expert: Linear(D, hidden), GELU, Linear(hidden, D). Shape: (R, D) -> (R, D)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)


class MoEMLP(AuxLossCopyMixin, nn.Module):
    """Token-routed Mixture-of-Experts MLP with top-k routing and sparse dispatch.

    ``router`` is an ``nn.Linear(D, M)`` applied to every token, so it returns router logits
    of shape (N, U, M). The tokens are flattened to N*U rows (sample-major), each row goes
    to its ``top_k`` experts, and their outputs are summed with weights from the softmax
    over all M logits, taken at the selected experts. ``aux_loss`` stores the load-balancing loss after each
    forward pass.

    Args:
        dim: token dimension D.
        hidden_dim: hidden width of each expert.
        num_experts: number of experts M.
        top_k: experts per token.

    Shape: (N, U, D) -> (N, U, D).
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.aux_loss = None

        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(ExpertMLP(dim, hidden_dim) for _ in range(num_experts))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, dim = tokens.shape
        router_logits = self.router(tokens)

        rows = tokens.reshape(batch * num_tokens, dim)
        row_logits = router_logits.reshape(batch * num_tokens, -1)
        output, selected = dispatch_to_experts(rows, row_logits, self.experts, self.top_k)
        self.aux_loss = load_balancing_loss(row_logits, selected)

        return output.view(batch, num_tokens, dim)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention, then a token-routed MoE MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.moe = MoEMLP(dim, hidden_dim, num_experts, top_k)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens))
        return tokens + self.moe(self.norm2(tokens))


class MoEVideoTransformer(nn.Module):
    """Video transformer with a token-routed MoE MLP in every block.

    The defaults give 64 tokens of dimension 32 for a 16x32x32 clip and two blocks, each
    with a 4-expert top-2 MoE MLP. The clip size is fixed at construction because the
    positional embedding has one learned vector per token.

    Args:
        num_classes: number of classes K, at least 2.
        clip_size: (T, H, W) of the input clips, each divisible by the tubelet size.
            Default (16, 32, 32).
        tubelet_size: (t, h, w) of one token's tubelet. Default (4, 8, 8).
        dim: token dimension D, divisible by ``num_heads``. Default 32.
        depth: number of transformer blocks, each with one MoE layer. Default 2.
        num_heads: attention heads. Default 4.
        num_experts: experts per MoE layer M, at least 1. Default 4.
        top_k: experts per token, from 1 to M. Default 2.
        hidden_dim: hidden width of each expert MLP. Default 64.

    Attributes:
        num_classes, num_experts, top_k, num_tokens: as above, num_tokens = U.
        config: JSON-serializable constructor arguments plus ``"name"``, so that
            ``build_model(**model.config)`` rebuilds the architecture.

    The model's forward returns only the logits. Each block's ``moe.aux_loss`` stores that
    layer's load-balancing loss, and a trainer adds the sum over the layers.

    Shape: (N, 3, T, H, W) floats in [0, 1], (T, H, W) == clip_size -> logits (N, K).

    Example:
        >>> model = MoEVideoTransformer(num_classes=10)
        >>> model(torch.rand(2, 3, 16, 32, 32)).shape
        torch.Size([2, 10])
        >>> model.blocks[0].moe.router(torch.rand(2, model.num_tokens, 32)).shape
        torch.Size([2, 64, 4])
    """

    def __init__(
        self,
        num_classes: int,
        clip_size: Union[int, Sequence[int]] = (16, 32, 32),
        tubelet_size: Union[int, Sequence[int]] = (4, 8, 8),
        dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        num_experts: int = 4,
        top_k: int = 2,
        hidden_dim: int = 64,
    ):
        super().__init__()
        check_num_classes(num_classes)
        clip_size = to_int_triple("clip_size", clip_size)
        tubelet_size = to_int_triple("tubelet_size", tubelet_size)
        if any(size % tubelet != 0 for size, tubelet in zip(clip_size, tubelet_size)):
            raise ValueError(
                f"clip_size={clip_size} is not divisible by tubelet_size={tubelet_size}: "
                "pick sizes where each of T, H and W is a multiple of the tubelet's extent."
            )
        check_int_range("num_heads", num_heads, 1)
        check_int_range("dim", dim, 1)
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is invalid: pass a multiple of num_heads={num_heads}.")
        check_int_range("depth", depth, 1)
        check_int_range("num_experts", num_experts, 1)
        check_int_range("top_k", top_k, 1, num_experts, hint=f" (num_experts={num_experts})")
        check_int_range("hidden_dim", hidden_dim, 1)

        self.num_classes = num_classes
        self.num_experts = num_experts
        self.top_k = top_k
        self.clip_size = clip_size
        self.num_tokens = math.prod(size // tubelet for size, tubelet in zip(clip_size, tubelet_size))
        self.config = {
            "name": "transformer",
            "num_classes": num_classes,
            "clip_size": list(clip_size),
            "tubelet_size": list(tubelet_size),
            "dim": dim,
            "depth": depth,
            "num_heads": num_heads,
            "num_experts": num_experts,
            "top_k": top_k,
            "hidden_dim": hidden_dim,
        }

        self.patch_embed = TubeletEmbedding(dim, tubelet_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, hidden_dim, num_experts, top_k) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != 3 or tuple(video.shape[2:]) != self.clip_size:
            raise ValueError(
                f"video has shape {tuple(video.shape)}: expected (N, 3, {', '.join(map(str, self.clip_size))}) "
                "because the positional embedding is sized for clip_size. Resize the clips or build the "
                "model with a matching clip_size."
            )

        tokens = self.patch_embed(video) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)

        return self.head(self.norm(tokens).mean(dim=1))
