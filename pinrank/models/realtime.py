"""Realtime action-sequence encoder (TransAct) in two layouts.

Both layouts read the newest-first, 0-padded sequence of schema.RANKER_INPUTS
(padding = action id 0) and are grouped: R requests each carry one sequence,
B candidates point at their request through `req_index` [B]. Serving is the
R = 1 case; training batches hold whole requests.

- `early` (TransAct): the candidate embedding is concatenated to every token
  and the transformer runs once per candidate, so it encodes B x L tokens.
  Output = first `first_k` tokens + max-pool over the kept tokens, flattened.
- `fused` (request-level dedup): the transformer encodes each request's
  sequence once (R x L tokens); each candidate reads it with one
  cross-attention whose keys/values are computed once per request, plus the
  sequence's max-pool and a projection of its first `first_k` tokens (all
  three computed once per request). Cost is L + N per request, not N x L.
  Without positional encodings the first-k slots are what tells either
  layout which actions are the newest.
- `avgpool` (the TransAct paper's "WDL + avg-pool sequence" baseline): the
  mean of the kept tokens, once per request; no transformer, no candidate
  fusion. The ablation that shows what the encoder itself buys.

The random time window (training only) arrives as a tensor argument, one T
per request (every candidate of a request sees the same masked history, as at
serving), so forward is deterministic and export-friendly; masks use finite negatives so fully
masked rows stay finite, and their outputs are zeroed.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pinrank.backend import schema

#: Finite "minus infinity" for attention masks: -inf NaNs fully masked rows,
#: and -1e4 still fits fp16 (TensorRT) while softmax maps it to exactly 0.
#: TorchScript cannot read float globals, so scripted code spells the literal.
MASK_NEG = -1.0e4
MODES = ("early", "fused", "avgpool")


def keep_mask(seq_action: torch.Tensor, seq_age_h: torch.Tensor,
              mask_window_h: Optional[torch.Tensor]) -> torch.Tensor:
    """Which tokens attention may use: [R, L] bool.

    Padding (action 0) is never kept. With a window T [R] (training only),
    actions younger than T hours are dropped too, except the newest token
    (position 0): TransAct keeps it so the model always sees some recent intent.
    """
    keep = seq_action != 0  # schema.PAD_ID (a literal: TorchScript)
    if mask_window_h is not None:
        young = seq_age_h < mask_window_h.to(seq_age_h.dtype).unsqueeze(1)
        pos = torch.arange(seq_action.size(1), device=seq_action.device).unsqueeze(0)
        young = young & (pos > 0)
        keep = keep & ~young
    return keep


class SelfAttention(nn.Module):
    """Multi-head self-attention over kept keys (hand-written: finite masks, scriptable)."""

    def __init__(self, dim: int, nhead: int, dropout: float) -> None:
        super().__init__()
        if dim % nhead:
            raise ValueError(f"dim {dim} not divisible by nhead {nhead}")
        self.nhead = nhead
        self.head_dim = dim // nhead
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.nhead, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [b, h, n, hd]
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.masked_fill(~keep.unsqueeze(1).unsqueeze(2), -1.0e4)
        attn = self.drop(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    """Transformer encoder layer: post-norm by default, like TransAct's
    nn.TransformerEncoderLayer (ReLU FFN, dropout), pre-norm as an option."""

    def __init__(self, dim: int, nhead: int, ffn_dim: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, nhead, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop1(self.attn(self.norm1(x), keep))
            return x + self.drop2(self.ff(self.norm2(x)))
        x = self.norm1(x + self.drop1(self.attn(x, keep)))
        return self.norm2(x + self.drop2(self.ff(x)))


def masked_max_pool(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Max over kept tokens [.., L, d] -> [.., d]; 0 where nothing is kept."""
    pooled = x.masked_fill(~keep.unsqueeze(-1), -1.0e4).max(dim=-2).values
    return pooled * keep.any(dim=-1, keepdim=True).to(x.dtype)


def masked_mean_pool(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept tokens [.., L, d] -> [.., d]; 0 where nothing is kept (no 0/0)."""
    w = keep.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=-2) / w.sum(dim=-2).clamp_min(1.0)


def _slots_within_request(req_index: torch.Tensor, num_requests: int) -> tuple[torch.Tensor, int]:
    """Each candidate's position among its request's candidates, and the max count."""
    b = req_index.size(0)
    order = torch.argsort(req_index, stable=True)
    counts = torch.bincount(req_index, minlength=num_requests)
    starts = torch.cumsum(counts, 0) - counts
    slot_sorted = torch.arange(b, device=req_index.device) - starts.index_select(0, req_index.index_select(0, order))
    slot = torch.zeros_like(req_index).index_put((order,), slot_sorted)
    return slot, (int(counts.max()) if counts.numel() > 0 else 0)


class RealtimeEncoder(nn.Module):
    """TransAct encoder over the last L actions, `early` or `fused` (module docstring).

    Token = action-type embedding (+ surface embedding if `use_surface`) ⊕
    item embedding; no positional encoding (TransAct found every PE hurt).
    Item embeddings (sequence and candidates) are looked up by the caller so
    the ranker's frozen table and OOV vector are shared.
    """

    def __init__(self, mode: str = "early", item_dim: int = schema.ITEM_EMB_DIM, action_dim: int = 32,
                 num_layers: int = 2, nhead: int = 1, ffn_dim: int = 32, dropout: float = 0.1,
                 first_k: int = 10, use_surface: bool = False, norm_first: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.early = mode == "early"
        self.avgpool = mode == "avgpool"
        self.first_k = first_k
        self.use_surface = use_surface
        self.action_emb = nn.Embedding(schema.NUM_ACTION_IDS, action_dim, padding_idx=schema.PAD_ID)
        self.surface_emb = nn.Embedding(schema.NUM_SURFACE_IDS, action_dim, padding_idx=schema.PAD_ID)
        token_dim = action_dim + item_dim
        self.dim = token_dim + item_dim if self.early else token_dim
        self.layers = nn.ModuleList(
            [EncoderLayer(self.dim, nhead, ffn_dim, dropout, norm_first) for _ in range(num_layers)]
        )
        # Readout layers used by `fused` only. Built in both modes because
        # TorchScript compiles both branches of forward (~0.1M idle params).
        self.nhead = nhead
        self.head_dim = self.dim // nhead
        self.q_proj = nn.Linear(item_dim, self.dim)
        self.kv_proj = nn.Linear(self.dim, 2 * self.dim)
        self.cross_out = nn.Linear(self.dim, self.dim)
        # fused: the first-k tokens are user-only, so compress them once per
        # request instead of widening the per-candidate crossing by k x d
        self.recent_proj = nn.Linear(first_k * self.dim, self.dim)
        self.out_dim = (self.first_k + 1) * self.dim if self.early else 3 * self.dim
        if self.avgpool:
            self.out_dim = token_dim

    def tokens(self, seq_item_emb: torch.Tensor, seq_action: torch.Tensor,
               seq_surface: torch.Tensor) -> torch.Tensor:
        act = self.action_emb(seq_action)
        if self.use_surface:
            act = act + self.surface_emb(seq_surface)
        return torch.cat([act, seq_item_emb], dim=-1)

    def forward(self, cand_emb: torch.Tensor, req_index: torch.Tensor, seq_item_emb: torch.Tensor,
                seq_action: torch.Tensor, seq_surface: torch.Tensor, seq_age_h: torch.Tensor,
                mask_window_h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """cand_emb [B, Di], req_index [B] into R requests; seq_* [R, L(, Di)];
        mask_window_h [R] hours or None -> [B, out_dim]."""
        keep = keep_mask(seq_action, seq_age_h, mask_window_h)
        tok = self.tokens(seq_item_emb, seq_action, seq_surface)
        if self.early:
            return self._early(cand_emb, req_index, tok, keep)
        if self.avgpool:
            pooled = masked_mean_pool(tok, keep)  # [R, token_dim], once per request
            if pooled.size(0) == 1:
                return pooled.expand(cand_emb.size(0), pooled.size(1))
            return pooled.index_select(0, req_index)
        return self._fused(cand_emb, req_index, tok, keep)

    def encode(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, keep)
        # Dropped tokens still produce outputs through their residual path; zero
        # them so a masked action cannot leak into first-k or the pool.
        return x * keep.unsqueeze(-1).to(x.dtype)

    def _early(self, cand_emb: torch.Tensor, req_index: torch.Tensor, tok: torch.Tensor,
               keep: torch.Tensor) -> torch.Tensor:
        b = cand_emb.size(0)
        n = tok.size(1)
        if tok.size(0) == 1:  # serving: broadcast the one sequence without a gather
            tok_b = tok.expand(b, n, tok.size(2))
            keep_b = keep.expand(b, n)
        else:
            tok_b = tok.index_select(0, req_index)
            keep_b = keep.index_select(0, req_index)
        x = torch.cat([tok_b, cand_emb.unsqueeze(1).expand(b, n, cand_emb.size(1))], dim=-1)
        x = self.encode(x, keep_b)
        return torch.cat([self._first_k(x), masked_max_pool(x, keep_b)], dim=1)

    def _first_k(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> [B, first_k * d]: the newest first_k token outputs, flattened."""
        first = x[:, : self.first_k]
        if x.size(1) < self.first_k:  # training trims trailing padding; restore the fixed width
            first = F.pad(first, (0, 0, 0, self.first_k - x.size(1)))
        return first.reshape(x.size(0), self.first_k * self.dim)

    def _fused(self, cand_emb: torch.Tensor, req_index: torch.Tensor, tok: torch.Tensor,
               keep: torch.Tensor) -> torch.Tensor:
        r, n = keep.shape
        b = cand_emb.size(0)
        h, hd = self.nhead, self.head_dim
        seq = self.encode(tok, keep)  # [R, L, d]: once per request
        # user-only summaries, once per request: [R, 2d]
        summary = torch.cat([masked_max_pool(seq, keep), self.recent_proj(self._first_k(seq))], dim=1)
        kv = self.kv_proj(seq).reshape(r, n, 2, h, hd).permute(2, 0, 3, 1, 4)  # [2, R, h, L, hd]
        k, v = kv[0], kv[1]
        q = self.q_proj(cand_emb).reshape(b, h, 1, hd) * (1.0 / math.sqrt(hd))
        if r == 1:  # serving: all candidates against the one cached K/V
            scores = torch.matmul(q.transpose(0, 1).reshape(h, b, hd), k[0].transpose(-1, -2))  # [h, B, L]
            scores = scores.masked_fill(~keep[0].reshape(1, 1, n), -1.0e4)
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v[0]).transpose(0, 1).reshape(b, h * hd)
            any_kept = keep.any(dim=1).to(ctx.dtype).expand(b)
            summary_b = summary.expand(b, summary.size(1))
        else:
            # Training: pack each request's candidates into [R, Nmax] slots so
            # every request's K/V is used in place (gathering K/V per candidate
            # would cost B x L x d copies forward and scatter-adds backward).
            slot, nmax = _slots_within_request(req_index, r)
            q_pad = torch.zeros(r * nmax, h, hd, dtype=q.dtype, device=q.device)
            q_pad = q_pad.index_put((req_index * nmax + slot,), q.reshape(b, h, hd))
            q_pad = q_pad.reshape(r, nmax, h, hd).transpose(1, 2)  # [R, h, Nmax, hd]
            scores = torch.matmul(q_pad, k.transpose(-1, -2))  # [R, h, Nmax, L]
            scores = scores.masked_fill(~keep.reshape(r, 1, 1, n), -1.0e4)
            ctx_pad = torch.matmul(torch.softmax(scores, dim=-1), v)  # [R, h, Nmax, hd]
            ctx = ctx_pad.transpose(1, 2).reshape(r * nmax, h * hd).index_select(0, req_index * nmax + slot)
            any_kept = keep.any(dim=1).to(ctx.dtype).index_select(0, req_index)
            summary_b = summary.index_select(0, req_index)
        cross = self.cross_out(ctx) * any_kept.unsqueeze(1)
        return torch.cat([cross, summary_b], dim=1)
