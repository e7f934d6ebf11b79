"""SASRec (Kang and McAuley, ICDM 2018): the field's next-item baseline.

Only item ids and positions go in: one learned embedding table is both the
input tokens and the output item vectors (shared, as in the paper), causal
self-attention blocks, the newest position's state is the user vector and
the score of an item is a plain dot product. It exposes the same methods as
`PinnerFormer` (`encode`, `head`, `embed_users`, `encode_items`,
`all_item_embeddings`, `config.sequence_actions` / `max_len` / `out_dim`) so
the same sampler, loss, trainer and metrics run it; it ignores the action,
surface and time inputs by design. `pinrank eval loo` trains it beside
pinrank's recipes, with the same budget, so the table compares like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pinrank.models.layers import TransformerBlock, newest_first_causal_mask
from pinrank.models.pinnerformer import DEFAULT_SEQUENCE_ACTIONS


@dataclass
class SASRecConfig:
    """The paper's MovieLens setting: 2 blocks, d=64, dropout 0.2, 200 positions."""

    num_layers: int = 2
    hidden: int = 64
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 200
    sequence_actions: tuple[str, ...] = field(default_factory=lambda: DEFAULT_SEQUENCE_ACTIONS)

    @property
    def out_dim(self) -> int:
        return self.hidden


class SASRec(nn.Module):
    """Item-id transformer; see the module docstring."""

    def __init__(self, config: SASRecConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.max_len = config.max_len
        h = config.hidden
        self.item_emb = nn.Embedding(num_items + 1, h, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=h ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(config.max_len, h)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            [TransformerBlock(h, config.heads, h, config.dropout, config.dropout) for _ in range(config.num_layers)]
        )
        self.out_norm = nn.LayerNorm(h)

    def encode(self, item_idx: Tensor, action: Tensor, surface: Tensor, duration_ms: Tensor, ts_ms: Tensor) -> Tensor:
        """Hidden states [B, L, H]; the extra inputs exist for interface parity only."""
        valid = action > 0
        length = item_idx.size(1)
        positions = torch.arange(length, device=item_idx.device)
        x = self.item_emb(item_idx) * math.sqrt(self.config.hidden) + self.pos_emb(positions).unsqueeze(0)
        x = self.dropout(x) * valid.unsqueeze(-1).to(x.dtype)
        blocked = newest_first_causal_mask(length, x.device).unsqueeze(0) | (~valid).unsqueeze(1)
        for block in self.blocks:
            x = block(x, None, blocked)
        return x

    def head(self, hidden: Tensor) -> Tensor:
        return self.out_norm(hidden)

    def embed_users(self, item_idx: Tensor, action: Tensor, surface: Tensor, duration_ms: Tensor,
                    ts_ms: Tensor) -> Tensor:
        return self.head(self.encode(item_idx, action, surface, duration_ms, ts_ms)[:, 0])

    def encode_items(self, item_idx: Tensor) -> Tensor:
        return self.item_emb(item_idx)

    def all_item_embeddings(self) -> Tensor:
        """[num_items + 1, H]; row 0 is padding, never a candidate."""
        return self.item_emb.weight


__all__ = ["SASRec", "SASRecConfig"]
