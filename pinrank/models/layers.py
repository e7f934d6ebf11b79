"""Shared transformer building blocks (PinnerFormer and the ranker use them).

Written by hand rather than with nn.TransformerEncoder / nn.MultiheadAttention:
their fused fast path changes between calls (it breaks `torch.jit.trace`
checks) and their -inf masks turn fully masked rows into NaN. Everything here
is `torch.jit.script`-able and exports to ONNX with the TorchScript exporter.

Mask convention (same as PyTorch): a boolean mask is True where attention is
*blocked*. Blocked scores get a finite MASK_VALUE (never -inf) and a query
whose keys are all blocked (an empty history, a padding query) returns
exactly zero instead of NaN.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Finite "minus infinity" for masked logits: representable in fp16 (TensorRT
#: FP16 engines would turn -1e9 into -inf and bring the NaN back), and far below
#: any real score of a normalised model, so exp() underflows to exactly 0.
MASK_VALUE = -1.0e4


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Unit-L2 rows along the last dim; a zero vector stays zero (no NaN)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True).clamp_min(eps * eps))


def newest_first_causal_mask(length: int, device: torch.device) -> Tensor:
    """[length, length] bool, True = blocked, for sequences stored newest first.

    Position i may attend to itself and to older actions (j >= i) only; with
    newest-first order "the future" is the *lower* indices, the mirror image of
    the usual upper-triangular mask.
    """
    idx = torch.arange(length, device=device)
    return idx.unsqueeze(0) < idx.unsqueeze(1)


class MLP(nn.Module):
    """Linear -> GELU (-> dropout) ... -> Linear over `dims` = [in, hidden..., out]."""

    def __init__(self, dims: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least [in, out] dims, got {list(dims)}")
        layers: List[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention as plain matmuls + softmax.

    `forward(x)` is self-attention; pass `context` for cross-attention (e.g.
    candidates attending to a cached user sequence). `key_padding_mask` is
    [B, Lk]; `attn_mask` is [Lq, Lk] or [B, Lq, Lk]; both True = blocked.
    A query whose keys are all blocked outputs exactly zero. `dropout` acts
    on the attention probabilities (training only).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, context_dim: Optional[int] = None) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        kv_in = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in, dim)
        self.v_proj = nn.Linear(kv_in, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(dropout)
        self.mask_value = MASK_VALUE  # TorchScript cannot read module-level floats

    def _split(self, x: Tensor) -> Tensor:
        b, n = x.size(0), x.size(1)
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        kv = x if context is None else context
        blocked: Optional[Tensor] = None
        if key_padding_mask is not None:
            blocked = key_padding_mask.unsqueeze(1).unsqueeze(2)
        if attn_mask is not None:
            am = attn_mask.unsqueeze(0).unsqueeze(0) if attn_mask.dim() == 2 else attn_mask.unsqueeze(1)
            blocked = am if blocked is None else (blocked | am)
        if self.training:
            # Training only: the fused kernel is 3-4x faster on CPU than the
            # matmul-softmax-matmul below, which stays the inference (export) path.
            return self._fused(x, kv, blocked)

        # Scaling q (not the [B, h, Lq, Lk] scores) saves a full pass over the scores.
        q = self._split(self.q_proj(x) * self.scale)
        k = self._split(self.k_proj(kv))
        v = self._split(self.v_proj(kv))
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, h, Lq, Lk]
        if blocked is not None:
            # The bias is built without the head dim and broadcast: cheaper than
            # masked_fill on the full scores.
            bias = torch.zeros(blocked.shape, dtype=scores.dtype, device=scores.device)
            scores = scores + bias.masked_fill(blocked, self.mask_value)
        probs = torch.softmax(scores, dim=-1)
        if self.training and self.dropout_p > 0.0:
            probs = self.dropout(probs)

        out = torch.matmul(probs, v)  # [B, h, Lq, head_dim]
        if blocked is not None:
            # All-blocked rows would otherwise average the (padding) values.
            out = out * (~blocked.all(dim=-1, keepdim=True)).to(out.dtype)
        out = out.transpose(1, 2)
        out = out.reshape(out.size(0), out.size(1), self.heads * self.head_dim)
        return self.out_proj(out)

    def _fused(self, x: Tensor, kv: Tensor, blocked: Optional[Tensor]) -> Tensor:
        """The same attention through F.scaled_dot_product_attention (same outputs,
        all-blocked queries included: they attend to nothing and output zero)."""
        q = self._split(self.q_proj(x))
        k = self._split(self.k_proj(kv))
        v = self._split(self.v_proj(kv))
        allowed: Optional[Tensor] = None
        empty: Optional[Tensor] = None
        if blocked is not None:
            empty = blocked.all(dim=-1, keepdim=True)
            # The kernel returns NaN for a query with no key; give those one key, then zero them.
            allowed = ~(blocked & ~(empty & (torch.arange(blocked.size(-1), device=x.device) == 0)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        if empty is not None:
            out = out * (~empty).to(out.dtype)
        out = out.transpose(1, 2)
        out = out.reshape(out.size(0), out.size(1), self.heads * self.head_dim)
        return self.out_proj(out)


class TransformerBlock(nn.Module):
    """PreNorm block: x + Attn(LN(x)), then x + FFN(LN(x)) (FFN = MLP dim->ffn->dim).

    PreNorm (as in PinnerFormer) trains stably without warm-up tricks at depth.
    `dropout` acts on the residual branches and inside the FFN, `attn_dropout`
    on the attention probabilities (costly on long sequences, so off by default).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MLP([dim, ffn_dim, dim], dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None
    ) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), None, key_padding_mask, attn_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))
