"""PinnerFormer: the long-term user tower (and its item tower).

Input: a user's last M actions, newest first, 0-padded at the end. Each token
is the frozen item content embedding + learned action-type and surface
embeddings + log1p(duration) + Time2vec-style encodings (fixed periods,
learned phases) of the absolute time, the time since the newest action and
the gap to the previous (older) action. A causal PreNorm transformer lets
every position see only itself and older actions, so the output at position
i is a valid user embedding "as of action i"; the dense all-action loss
trains all positions, serving keeps position 0 (the newest).

The forward is export-friendly: int64/float tensors in, no Python randomness,
no data-dependent control flow, finite masks. `UserTimelines` (numpy) turns a
Dataset into those tensors the same way for training and the daily batch job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY, MS_PER_HOUR
from pinrank.backend.vocab import ItemVocab
from pinrank.data.dataset import Dataset
from pinrank.models.checkpoints import PINNERFORMER_KIND, load_checkpoint
from pinrank.models.layers import (
    MLP,
    TransformerBlock,
    l2_normalize,
    newest_first_causal_mask,
)

#: Absolute-time periods from the paper: 0.25h ... 365d.
ABS_PERIODS_MS: tuple[int, ...] = tuple(
    int(h * MS_PER_HOUR) for h in (0.25, 0.5, 0.75, 1, 2, 4, 8, 16, 24, 24 * 7, 24 * 28, 24 * 365)
)
#: Relative-time periods from the paper: 32, log-spaced from 1 s to 4 weeks.
REL_PERIODS_MS: tuple[int, ...] = tuple(int(round(p)) for p in np.geomspace(1_000, 28 * MS_PER_DAY, 32))
#: Inputs of `PinnerFormer.forward`, in order (all [B, L]; L <= max_len).
INPUT_NAMES: tuple[str, ...] = ("item_idx", "action", "surface", "duration_ms", "ts_ms")
#: Actions fed to the user tower by default: everything but impressions, which
#: would drown the engagement signal; hides stay in (the action-type embedding
#: tells them apart), a deviation from the paper's positives-only input.
DEFAULT_SEQUENCE_ACTIONS: tuple[str, ...] = tuple(a for a in schema.ACTIONS if a != "impression")


@dataclass
class PinnerFormerConfig:
    """User/item tower sizes. The default is CPU-sized; `paper()` is the paper's.

    `out_dim` must equal schema.USER_EMB_DIM for the embedding to go into a
    serving snapshot; the paper preset (D=256) therefore needs the schema dim
    changed too (it is a serving-contract change, not just a training flag).
    """

    num_layers: int = 2
    hidden: int = 64
    heads: int = 4
    ffn_mult: int = 4
    out_dim: int = schema.USER_EMB_DIM
    max_len: int = schema.LONG_SEQ_LEN
    dropout: float = 0.0
    action_dim: int = 16
    surface_dim: int = 16
    item_hidden: int = 256
    #: Add a learned per-item embedding to the item tower. PinSage embeddings
    #: carry engagement (graph) signal; a pure content stand-in does not, and
    #: without it the tower cannot represent popularity at all.
    item_id_embedding: bool = True
    #: Add a learned per-item embedding to every input token of the user tower
    #: (hybrid with the frozen content embedding). Logs without real content
    #: features only have an SVD stand-in there; ids let the tower learn what
    #: an item means from the sequences themselves (SASRec's only input).
    #: Measured on MovieLens in docs/results.md ("Items without content").
    input_id_embedding: bool = True
    #: Use the dataset's frozen content table (False: the table is zeros, so
    #: both towers run on learned ids alone; for the measurement in
    #: docs/results.md and for logs whose stand-in content is noise).
    content_features: bool = True
    #: Paper feature. It tells older positions the newest timestamp in the
    #: window (never any item or action content); False makes every position
    #: strictly independent of newer actions.
    time_since_latest: bool = True
    sequence_actions: tuple[str, ...] = field(default_factory=lambda: DEFAULT_SEQUENCE_ACTIONS)

    @classmethod
    def paper(cls) -> "PinnerFormerConfig":
        """6 layers, H=768, D=256, 8 heads (requires schema.USER_EMB_DIM = 256 to serve)."""
        return cls(num_layers=6, hidden=768, heads=8, out_dim=256, item_hidden=1024)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sequence_actions"] = list(self.sequence_actions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PinnerFormerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PinnerFormerConfig keys {unknown}")
        # Checkpoints written before the input id table existed were trained without it.
        d = {"input_id_embedding": False, **d}
        if "sequence_actions" in d:
            d["sequence_actions"] = tuple(d["sequence_actions"])
        return cls(**d)

    def __post_init__(self) -> None:
        bad = [a for a in self.sequence_actions if a not in schema.ACTION_IDS]
        if bad:
            raise ValueError(f"sequence_actions {bad} not in schema.ACTIONS {schema.ACTIONS}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")


class TimeEncoding(nn.Module):
    """[cos(2*pi*t/p + phi), sin(2*pi*t/p + phi)] for fixed periods p, learned phases phi, plus log t.

    The phase is taken as (t mod p) in int64 milliseconds: unix ms in float32
    is only good to ~2 minutes, which would scramble the short periods.
    """

    def __init__(self, periods_ms: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("periods_ms", torch.tensor(list(periods_ms), dtype=torch.int64))
        self.phase = nn.Parameter(torch.zeros(len(periods_ms)))
        self.two_pi = 2.0 * math.pi
        self.out_dim = 2 * len(periods_ms) + 1

    def forward(self, t_ms: Tensor) -> Tensor:
        periods = self.periods_ms
        frac = torch.remainder(t_ms.unsqueeze(-1), periods).to(torch.float32) / periods.to(torch.float32)
        angle = frac * self.two_pi + self.phase
        # log1p(seconds) is <= ~22 even for unix time; /10 keeps it O(1) next to cos/sin.
        log_t = torch.log1p(t_ms.to(torch.float32).clamp_min(0.0) / 1000.0).unsqueeze(-1) * 0.1
        return torch.cat([torch.cos(angle), torch.sin(angle), log_t], dim=-1)


class PinnerFormer(nn.Module):
    """User tower + item tower; see the module docstring for the token layout.

    `item_emb` is the dataset's frozen content table [num_items, ITEM_EMB_DIM]
    (row i = item index i+1); it becomes a non-trainable buffer with a zero
    padding/OOV row 0, and is saved in the state dict.
    """

    def __init__(self, config: PinnerFormerConfig, item_emb: np.ndarray | Tensor) -> None:
        super().__init__()
        emb = torch.as_tensor(np.asarray(item_emb), dtype=torch.float32)
        if emb.dim() != 2 or emb.size(1) != schema.ITEM_EMB_DIM:
            raise ValueError(f"item_emb must be [num_items, {schema.ITEM_EMB_DIM}], got {tuple(emb.shape)}")
        self.config = config
        self.num_items = int(emb.size(0))
        self.max_len = config.max_len
        self.use_latest = config.time_since_latest
        table = torch.zeros(self.num_items + 1, schema.ITEM_EMB_DIM)
        if config.content_features:
            table[1:] = emb
        self.register_buffer("item_table", table)

        h = config.hidden
        self.action_emb = nn.Embedding(schema.NUM_ACTION_IDS, config.action_dim, padding_idx=0)
        self.surface_emb = nn.Embedding(schema.NUM_SURFACE_IDS, config.surface_dim, padding_idx=0)
        self.abs_time = TimeEncoding(ABS_PERIODS_MS)
        self.latest_time = TimeEncoding(REL_PERIODS_MS)
        self.gap_time = TimeEncoding(REL_PERIODS_MS)
        in_dim = (
            schema.ITEM_EMB_DIM + config.action_dim + config.surface_dim + 1
            + self.abs_time.out_dim + self.latest_time.out_dim + self.gap_time.out_dim
        )
        self.input_proj = nn.Linear(in_dim, h)
        self.use_input_id = config.input_id_embedding
        # Width 1 when off keeps the module (and TorchScript's attribute set) identical.
        self.input_id_emb = nn.Embedding(self.num_items + 1, h if self.use_input_id else 1, padding_idx=0)
        nn.init.normal_(self.input_id_emb.weight, std=0.02)
        with torch.no_grad():
            self.input_id_emb.weight[0].zero_()
        self.input_dropout = nn.Dropout(config.dropout)
        self.pos_emb = nn.Parameter(torch.randn(config.max_len, h) * 0.02)
        self.blocks = nn.ModuleList(
            [TransformerBlock(h, config.heads, config.ffn_mult * h, config.dropout) for _ in range(config.num_layers)]
        )
        self.out_norm = nn.LayerNorm(h)
        self.out_mlp = MLP([h, 4 * h, config.out_dim])
        self.item_mlp = MLP([schema.ITEM_EMB_DIM, config.item_hidden, config.out_dim])
        self.use_item_id = config.item_id_embedding
        # Zero-initialised: the tower starts as pure content and learns ids on top.
        self.item_id_emb = nn.Embedding(self.num_items + 1, config.out_dim if self.use_item_id else 1)
        nn.init.zeros_(self.item_id_emb.weight)

    def encode(self, item_idx: Tensor, action: Tensor, surface: Tensor, duration_ms: Tensor, ts_ms: Tensor) -> Tensor:
        """Hidden states [B, L, H] before the output head (padding = action 0)."""
        valid = action > 0
        valid_l = valid.to(torch.int64)
        ts = ts_ms * valid_l
        if self.use_latest:
            since_latest = (ts[:, :1] - ts).clamp_min(0) * valid_l
        else:
            since_latest = torch.zeros_like(ts)
        # Newest first: the previous (older) action is the next position.
        older = torch.cat([ts[:, 1:], ts[:, -1:]], dim=1)
        older_valid = torch.cat([valid_l[:, 1:], torch.zeros_like(valid_l[:, :1])], dim=1)
        gap = (ts - older).clamp_min(0) * older_valid
        log_dur = torch.log1p(duration_ms.clamp_min(0).to(torch.float32) / 1000.0).unsqueeze(-1)

        tokens = torch.cat(
            [
                self.item_table[item_idx],
                self.action_emb(action),
                self.surface_emb(surface),
                log_dur,
                self.abs_time(ts),
                self.latest_time(since_latest),
                self.gap_time(gap),
            ],
            dim=-1,
        )
        tokens = tokens * valid.unsqueeze(-1).to(tokens.dtype)
        length = item_idx.size(1)
        x = self.input_proj(tokens) + self.pos_emb[:length].unsqueeze(0)
        if self.use_input_id:
            x = x + self.input_id_emb(item_idx) * valid.unsqueeze(-1).to(x.dtype)
        x = self.input_dropout(x)
        # One [B, L, L] mask for all layers: causal (older-or-self only) or padding key.
        blocked = newest_first_causal_mask(length, x.device).unsqueeze(0) | (~valid).unsqueeze(1)
        for block in self.blocks:
            x = block(x, None, blocked)
        return x

    def head(self, hidden: Tensor) -> Tensor:
        """Per-position LN -> MLP -> L2 norm: [..., H] -> [..., D]."""
        return l2_normalize(self.out_mlp(self.out_norm(hidden)))

    def forward(self, item_idx: Tensor, action: Tensor, surface: Tensor, duration_ms: Tensor, ts_ms: Tensor) -> Tensor:
        """Unit-norm embeddings [B, L, D] at every position; [:, 0] is the user embedding."""
        return self.head(self.encode(item_idx, action, surface, duration_ms, ts_ms))

    @torch.jit.export
    def embed_users(self, item_idx: Tensor, action: Tensor, surface: Tensor, duration_ms: Tensor,
                    ts_ms: Tensor) -> Tensor:
        """User embeddings [B, D] (position 0, the newest); the head runs only there."""
        return self.head(self.encode(item_idx, action, surface, duration_ms, ts_ms)[:, 0])

    @torch.jit.export
    def encode_items(self, item_idx: Tensor) -> Tensor:
        """Item tower: unit-norm [..., D] from the frozen content embeddings (+ learned id embedding)."""
        z = self.item_mlp(self.item_table[item_idx])
        if self.use_item_id:
            z = z + self.item_id_emb(item_idx)
        return l2_normalize(z)

    @torch.jit.export
    def all_item_embeddings(self) -> Tensor:
        """[num_items + 1, D]; row 0 (OOV) is not a real item, callers exclude it."""
        z = self.item_mlp(self.item_table)
        if self.use_item_id:
            z = z + self.item_id_emb.weight
        return l2_normalize(z)


def load_pinnerformer(source: str | Path | dict[str, Any]) -> tuple[PinnerFormer, dict[str, Any]]:
    """Rebuild a model (eval mode) from a "pinnerformer" checkpoint path or loaded dict."""
    ckpt = load_checkpoint(source, PINNERFORMER_KIND) if not isinstance(source, dict) else source
    cfg = PinnerFormerConfig.from_dict(ckpt["config"]["model"])
    model = PinnerFormer(cfg, np.zeros((int(ckpt["config"]["num_items"]), schema.ITEM_EMB_DIM), np.float32))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


# --- numpy side: dataset -> model inputs ---------------------------------------


class UserTimelines:
    """Per-user, time-sorted sequence actions in CSR form (numpy only).

    Keeps actions of `sequence_actions` whose item is in the vocabulary (the
    paper drops OOV tokens) and, if `before_ms` is given, with ts < before_ms.
    Row r covers `offsets[r]:offsets[r+1]` of the flat arrays, oldest first.
    """

    def __init__(self, ds: Dataset, sequence_actions: Sequence[str] = DEFAULT_SEQUENCE_ACTIONS,
                 before_ms: int | None = None) -> None:
        a = ds.actions
        vocab = ItemVocab(ds.item_ids)
        item_idx = vocab.lookup(a["item_id"])
        action_ids = np.asarray([schema.ACTION_IDS[x] for x in sequence_actions], dtype=np.int64)
        keep = np.isin(a["action"], action_ids) & (item_idx > 0)
        if before_ms is not None:
            keep &= a["ts_ms"] < before_ms
        # The dataset is sorted by (user_id, ts_ms); a stable sort keeps that if a caller's isn't.
        order = np.lexsort((a["ts_ms"][keep], a["user_id"][keep]))
        users = a["user_id"][keep][order]
        self.item_idx = item_idx[keep][order]
        self.action = a["action"][keep][order]
        self.surface = a["surface"][keep][order]
        self.duration_ms = a["duration_ms"][keep][order]
        self.ts_ms = a["ts_ms"][keep][order]
        self.user_ids, starts = np.unique(users, return_index=True)
        self.offsets = np.append(starts, users.size).astype(np.int64)
        self.before_ms = before_ms

    def __len__(self) -> int:
        return int(self.user_ids.size)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows_of(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user id, -1 where the user has no actions here."""
        ids = np.asarray(user_ids, dtype=np.int64)
        if self.user_ids.size == 0:
            return np.full(ids.size, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.user_ids, ids), self.user_ids.size - 1)
        return np.where(self.user_ids[pos] == ids, pos, -1).astype(np.int64)

    def ends_before(self, rows: np.ndarray, ts_ms: int | np.ndarray) -> np.ndarray:
        """Per row, the flat index one past its last action with ts < ts_ms (scalar or per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        if np.ndim(ts_ms) == 0:
            # One cut for everyone (the daily job): a cumulative count, no per-row search.
            before = np.concatenate([[0], np.cumsum(self.ts_ms < int(ts_ms))])
            return self.offsets[rows] + before[self.offsets[rows + 1]] - before[self.offsets[rows]]
        ts = np.asarray(ts_ms, dtype=np.int64)
        out = np.empty(rows.size, dtype=np.int64)
        for i, (r, t) in enumerate(zip(rows, ts)):
            lo, hi = self.offsets[r], self.offsets[r + 1]
            out[i] = lo + np.searchsorted(self.ts_ms[lo:hi], t, side="left")
        return out

    def batch(self, rows: np.ndarray, ends: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
        """Model inputs (INPUT_NAMES) for windows ending at flat index `ends` (exclusive).

        Each window is the row's last <= max_len actions before `ends`, newest
        first, 0-padded; the batch is trimmed to its longest window (>= 1)
        because trailing padding does not change any output.
        """
        rows = np.asarray(rows, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        starts = np.maximum(self.offsets[rows], ends - max_len)
        lens = np.maximum(ends - starts, 0)
        width = int(max(1, lens.max(initial=0)))
        # Newest first: column j of row b is flat index ends[b] - 1 - j.
        flat = ends[:, None] - 1 - np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < lens[:, None]
        flat = np.where(valid, flat, 0)
        out = {}
        for name in INPUT_NAMES:
            src = getattr(self, name)
            out[name] = np.where(valid, src[flat], 0).astype(np.int64) if src.size else np.zeros_like(flat)
        return out


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
