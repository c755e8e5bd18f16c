"""Building blocks of :mod:`mindzoo.models.neuroformer` (written from the paper and the facts read
in the official code, a-antoniades/Neuroformer ``neuroformer/model_neuroformer.py`` and
``neuroformer/modules.py``; no code copied).

- :class:`Attention`: multi-head attention, query from one sequence, keys/values from another
  (or the same); optional boolean keep-mask; can record its weights (coupling scores).
- :class:`Block`: the official block -- LayerNorm on the *query* only (keys/values enter raw),
  attention + residual, LayerNorm + 4x GELU MLP + residual, then a final LayerNorm.
- :func:`sinusoid`: the official "wave" embedding of a time value (sin/cos interleaved).
- :class:`FrameEncoder`: Conv3d patches over (time, h, w) -> LayerNorm -> ReLU -> tokens.
- :func:`info_nce`: the official ``contrastive_loss`` (one direction, cosine / temperature).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention ``[B, Tq, E] x [B, Tk, E] -> [B, Tq, E]`` with output projection."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not a multiple of n_head={n_head}")
        self.n_head = n_head
        self.query = nn.Linear(n_embd, n_embd)
        self.key = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.attn_drop = dropout
        self.resid_drop = nn.Dropout(dropout)
        self.record = False
        self.weights: torch.Tensor | None = None  # [B, H, Tq, Tk] when ``record``

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        return x.view(b, t, self.n_head, e // self.n_head).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, kv: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``keep`` bool broadcastable to ``[B, H, Tq, Tk]`` (True: may attend)."""
        b, t, e = q.shape
        qh, kh, vh = (
            self._heads(self.query(q)),
            self._heads(self.key(kv)),
            self._heads(self.value(kv)),
        )
        drop = self.attn_drop if self.training else 0.0
        if self.record:
            att = (qh @ kh.transpose(-2, -1)) / math.sqrt(kh.shape[-1])
            if keep is not None:
                att = att.masked_fill(~keep, float("-inf"))
            att = att.softmax(dim=-1)
            self.weights = att.detach()
            y = F.dropout(att, drop, self.training) @ vh
        else:
            y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=keep, dropout_p=drop)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, e)))


class Block(nn.Module):
    """Official Neuroformer block: ``x + attn(ln1(x), kv)``, ``+ mlp(ln2(.))``, then ``ln_f``.

    ``kv=None`` is self-attention (keys/values are the raw ``x``, as in the official code).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = Attention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), x if kv is None else kv, keep)
        x = x + self.mlp(self.ln2(x))
        return self.ln_f(x)


def blocks(n: int, n_embd: int, n_head: int, dropout: float) -> nn.ModuleList:
    """``n`` fresh :class:`Block` s."""
    return nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n))


def causal_mask(t: int, device: torch.device) -> torch.Tensor:
    """Bool ``[t, t]``, True on and below the diagonal (position q sees keys <= q)."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def sinusoid(values: torch.Tensor, n_embd: int) -> torch.Tensor:
    """Sin/cos embedding of ``values`` (any shape, float) -> ``[..., n_embd]``: even channels
    ``sin(v * f_k)``, odd ``cos(v * f_k)``, ``f_k = 10000^(-2k / n_embd)`` (official
    ``TemporalEmbedding``; it embeds the dt *token index*)."""
    freqs = torch.exp(
        torch.arange(0, n_embd, 2, device=values.device, dtype=torch.float32)
        * (-math.log(10000.0) / n_embd)
    )
    angles = values.float().unsqueeze(-1) * freqs
    out = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return out[..., :n_embd]


class FrameEncoder(nn.Module):
    """Frames ``[B, n_frames, 1, h, w]`` -> tokens ``[B, n_tokens, E]`` (Conv3d patches with
    ``kernel``/``stride`` over (time, h, w), LayerNorm, ReLU; then learned positions).

    A kernel larger than the input along an axis is clipped to the input size.
    """

    def __init__(
        self,
        n_embd: int,
        shape: tuple[int, int, int],
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int] | None,
    ) -> None:
        super().__init__()
        kernel = tuple(min(k, s) for k, s in zip(kernel, shape, strict=True))
        stride = (
            kernel
            if stride is None
            else tuple(min(k, s) for k, s in zip(stride, kernel, strict=True))
        )
        self.conv = nn.Conv3d(1, n_embd, kernel_size=kernel, stride=stride)
        self.norm = nn.LayerNorm(n_embd)
        grid = [(s - k) // st + 1 for s, k, st in zip(shape, kernel, stride, strict=True)]
        self.n_tokens = int(math.prod(grid))
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, n_embd))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.conv(frames.transpose(1, 2))  # [B, E, t, h, w]
        x = torch.relu(self.norm(x.flatten(2).transpose(1, 2)))
        return x + self.pos


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Official ``contrastive_loss`` between paired features ``a``, ``b`` ``[B, D]``: rows of the
    cosine-similarity matrix / temperature, cross-entropy towards the diagonal (one direction)."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.t() / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


# ------------------------------------------------------------ generation and coupling readout
# (used by mindzoo.models.neuroformer.Neuroformer; ``model`` is that class, duck-typed here)
def sample_windows(
    model: Any, batch: Any, generator: torch.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Autoregressive draw of each row's current window given its past/frames context: the next
    unit (or EOS) from the id head, then, for a unit, its bin from the dt head restricted to the
    current window's bins ``0..n_bins-1``; stops at EOS or after ``data.max_tokens`` spikes (the
    batch's token length - 2). Returns ``(bins, units)`` int64 per row, specials dropped."""
    info = model.info
    eos, sos, pad = info.specials(batch.subject)
    device = batch.id.device
    b, max_spikes = len(batch), batch.id.shape[1] - 2
    ctx = model.context(batch)
    ids = torch.full((b, 1), sos, dtype=torch.long, device=device)
    dts = torch.full((b, 1), info.n_dt + 1, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(max_spikes):
        x = model.decode(batch.subject, ids, dts, ctx)["x"][:, -1:]
        if model.id_given_dt is not None:  # canonical order: the bin (or EOS), then the unit
            ldt = model.dt_log_probs(batch.subject, x, ids[:, -1:], dts[:, -1:])
            p_dt = ldt[:, 0].exp().cpu().double()
            bins = torch.multinomial(p_dt, 1, generator=generator)[:, 0]
            lid = model.id_log_probs(
                batch.subject, x, ids[:, -1:], dts[:, -1:], bins[:, None].to(device)
            )
            nxt = torch.multinomial(lid[:, 0].exp().cpu().double(), 1, generator=generator)[:, 0]
        else:
            lid, ldt = model.logits(batch.subject, x)
            p_id = lid[:, 0].exp().cpu().double()
            p_dt = ldt[:, 0, : info.n_bins].exp().cpu().double()
            nxt = torch.multinomial(p_id, 1, generator=generator)[:, 0]
            bins = torch.multinomial(p_dt.clamp_min(1e-300), 1, generator=generator)[:, 0]
        stop = done | (nxt == eos)
        nxt = torch.where(stop, torch.full_like(nxt, pad), nxt)
        bins = torch.where(stop, torch.full_like(bins, info.n_dt + 2), bins)
        done = stop
        ids = torch.cat([ids, nxt[:, None].to(device)], dim=1)
        dts = torch.cat([dts, bins[:, None].to(device)], dim=1)
        if bool(done.all()):
            break
    out = []
    for row_id, row_dt in zip(ids[:, 1:].cpu().numpy(), dts[:, 1:].cpu().numpy(), strict=True):
        real = row_id < eos
        out.append((row_dt[real].astype(np.int64), row_id[real].astype(np.int64)))
    return out


@torch.no_grad()
def coupling_scores(model: Any, view: Any, subject: str, batch_size: int = 64) -> np.ndarray:
    """Attention coupling ``[i, j]`` (see ``Neuroformer.coupling``), float64 ``[U, U]``."""
    n_units = model.info.units[subject]
    eos, _, pad = model.info.specials(subject)
    sums = np.zeros(n_units * n_units)
    counts = np.zeros(n_units * n_units)
    attns = [block.attn for block in model.history]
    if not attns:
        return sums.reshape(n_units, n_units)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for a in attns:
        a.record = True
    try:
        rows = view.subject_slice(subject)
        for start in range(rows.start, rows.stop, batch_size):
            batch = view.batch(range(start, min(start + batch_size, rows.stop))).to(device)
            ids, dts, tid, _, valid = model._split(batch)
            model.decode(subject, ids, dts, model.context(batch))
            att = torch.stack([a.weights.mean(1) for a in attns]).mean(0).double()  # [B,Tq,Tk]
            keys = batch.prev_id[:, : att.shape[-1]]
            kmask = keys != pad
            qmask = valid & (tid < eos)
            att = att * kmask.sum(1).clamp_min(1)[:, None, None]
            pair = qmask[:, :, None] & kmask[:, None, :]
            flat = (keys[:, None, :] * n_units + tid[:, :, None])[pair].cpu().numpy()
            sums += np.bincount(flat, att[pair].cpu().numpy(), minlength=n_units * n_units)
            counts += np.bincount(flat, minlength=n_units * n_units)
    finally:
        for a in attns:
            a.record = False
            a.weights = None
        model.train(was_training)
    score = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return score.reshape(n_units, n_units)
