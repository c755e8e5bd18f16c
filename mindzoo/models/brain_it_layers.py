"""Brain-IT's building blocks: voxel-to-cluster pooling, attention blocks, patch-token layouts.

Used by :class:`mindzoo.models.brain_it.BrainIT` (the model, its stages and its adaptation
strategy live there); see that module for the paper's facts and our departures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mindzoo.errors import UserInputError
from mindzoo.models.base import flat_size


class SubjectBuffers(nn.Module):
    """One buffer per subject (state-dict keys ``<owner>.<subject>``)."""

    def get(self, subject: str) -> torch.Tensor:
        return getattr(self, subject)


class VoxelClusterPooling(nn.Module):
    """Voxel-to-cluster attention: ``x_v = y_v e_v`` pooled into one token per cluster.

    For head ``h`` the score of voxel ``v`` in its cluster ``c`` is ``q_{c,h} . (W_k x_v)_h /
    sqrt(d)``; the softmax runs over the members of ``c`` only (a scatter softmax), and the token
    is ``W_r q_c + sum_v a_v (W_v x_v)``. Since ``x_v`` is a scalar times ``e_v``, keys and values
    are ``y_v W e_v`` and ``W e_v`` is computed once per forward, not per trial. Optional
    ``log_weights`` (soft membership: one entry per (voxel, cluster) pair) are added to the
    scores, i.e. a member with weight ``w`` counts ``w * exp(score)`` in its cluster's softmax.
    """

    def __init__(self, dim: int, n_clusters: int, n_heads: int) -> None:
        super().__init__()
        self.n_clusters, self.n_heads, self.head_dim = n_clusters, n_heads, dim // n_heads
        self.cluster_queries = nn.Parameter(torch.randn(n_clusters, dim) * dim**-0.5)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.root = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        voxels: torch.Tensor,
        embeddings: torch.Tensor,
        clusters: torch.Tensor,
        log_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``voxels [B, V]``, ``embeddings [V, D]``, ``clusters [V]`` (long), optional
        ``log_weights [V]`` (log membership weights; None: all 1) -> ``[B, K, D]``."""
        batch, n_vox = voxels.shape
        heads, d = self.n_heads, self.head_dim
        keys = self.key(embeddings).view(n_vox, heads, d)
        values = self.value(embeddings).view(n_vox, heads, d)
        queries = self.cluster_queries.view(self.n_clusters, heads, d)[clusters]  # [V, H, d]
        affinity = (queries * keys).sum(-1) / math.sqrt(d)  # [V, H]
        scores = voxels.unsqueeze(-1) * affinity  # [B, V, H]
        if log_weights is not None:
            scores = scores + log_weights.view(1, n_vox, 1)
        index = clusters.view(1, n_vox, 1).expand(batch, n_vox, heads)
        shape = (batch, self.n_clusters, heads)
        peak = scores.new_full(shape, -torch.inf).scatter_reduce(
            1, index, scores, "amax", include_self=True
        )
        weights = torch.exp(scores - peak.detach().gather(1, index))
        total = scores.new_zeros(shape).scatter_add(1, index, weights)
        weights = weights / total.gather(1, index)  # softmax within each cluster
        contributions = (weights * voxels.unsqueeze(-1)).unsqueeze(-1) * values  # [B, V, H, d]
        pooled = contributions.new_zeros(batch, self.n_clusters, heads, d)
        pooled.index_add_(1, clusters, contributions)
        tokens = self.root(self.cluster_queries) + pooled.flatten(2)
        return self.norm(F.relu(tokens))


class AttentionBlock(nn.Module):
    """Self-attention over brain tokens, then cross-attention from the query tokens to them."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.brain_mlp = mlp(dim, hidden, dropout)
        self.norm_query = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.query_mlp = mlp(dim, hidden, dropout)

    def forward(
        self, brain: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm_self(brain)
        brain = brain + self.self_attn(x, x, x, need_weights=False)[0]
        brain = brain + self.brain_mlp(brain)
        memory = self.norm_memory(brain)
        queries = (
            queries
            + self.cross_attn(self.norm_query(queries), memory, memory, need_weights=False)[0]
        )
        queries = queries + self.query_mlp(queries)
        return brain, queries


def mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, dim),
    )


def patch_size(height: int, width: int, max_tokens: int = 64) -> int:
    """Smallest patch side dividing both image sides with at most ``max_tokens`` patches."""
    for side in range(1, min(height, width) + 1):
        if (
            height % side == 0
            and width % side == 0
            and (height // side) * (width // side) <= max_tokens
        ):
            return side
    raise UserInputError(f"Cannot cut a {height} x {width} image target into patches")


def token_layout(shape: Sequence[int]) -> tuple[int, int]:
    """(query tokens, channels per token) of a target: ``(L, C)`` -> (L, C), ``(C,)`` -> (1, C),
    an image ``(H, W, C)`` -> one token per ``p x p`` patch, ``p * p * C`` values each."""
    if len(shape) == 3:
        height, width, channels = (int(v) for v in shape)
        side = patch_size(height, width)
        return (height // side) * (width // side), side * side * channels
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    return 1, flat_size(shape)


def unpatchify(tokens: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``[B, L, p*p*C]`` patch tokens (row-major patch grid) -> ``[B, *shape]``."""
    if len(shape) != 3:
        return tokens.reshape(len(tokens), *shape)
    height, width, channels = (int(v) for v in shape)
    side = patch_size(height, width)
    grid = tokens.reshape(len(tokens), height // side, width // side, side, side, channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(len(tokens), height, width, channels)
