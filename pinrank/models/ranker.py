"""The ranker: candidate + PinnerFormer user embedding + context + realtime
sequence -> DCN v2 (full rank) -> MLP -> one logit per schema.HEADS.

Two entry points share one grouped core (`Ranker.forward`):
- training: `forward_batch` (one row per impression) or `forward` with
  `req_index`, which lets impressions of one request share their sequence;
- serving: `RankerServing`, exactly the schema.RANKER_INPUTS -> RANKER_OUTPUTS
  contract for one request (user side once, broadcast to N candidates). It
  scripts (`torch.jit.script`) and exports to ONNX with a dynamic N axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from pinrank.backend import schema
from pinrank.models.checkpoints import RANKER_KIND, load_checkpoint
from pinrank.models.realtime import MODES, RealtimeEncoder


@dataclass
class RankerConfig:
    """Architecture. Defaults are the TransAct sizes except where noted."""

    mode: str = "fused"  # "early" (TransAct, N x L) or "fused" (dedup, L + N)
    action_dim: int = 32
    num_layers: int = 2
    nhead: int = 1  # paper: 1 (official code: 2)
    ffn_dim: int = 32
    dropout: float = 0.1
    first_k: int = 10  # early mode: first-k tokens kept (+ max-pool)
    use_surface: bool = False  # TransAct tokens carry no surface; TransAct V2's do
    norm_first: bool = False
    rt_proj_dim: int = 0  # >0: project the realtime output before DCN (cheaper crossing)
    cross_layers: int = 2
    mlp_dims: tuple[int, ...] = (256, 128)
    mlp_dropout: float = 0.0
    use_realtime: bool = True  # ablation: no realtime sequence
    use_pinnerformer: bool = True  # ablation: no long-term user embedding
    use_context: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.mlp_dims = tuple(int(d) for d in self.mlp_dims)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mlp_dims"] = list(self.mlp_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class CrossLayer(nn.Module):
    """DCN v2 full-rank cross: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.lin.weight, gain=0.5)  # start near identity: x_l dominates
        nn.init.zeros_(self.lin.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.lin(x) + x


class Ranker(nn.Module):
    """Multi-head pointwise ranker (module docstring)."""

    def __init__(self, config: RankerConfig, item_emb: np.ndarray | torch.Tensor | None = None,
                 num_items: int | None = None) -> None:
        """`item_emb` [num_items, ITEM_EMB_DIM] is the frozen table (row i = vocab
        index i + 1); pass only `num_items` when weights come from a checkpoint."""
        super().__init__()
        if item_emb is None and num_items is None:
            raise ValueError("give item_emb or num_items")
        if item_emb is not None:
            emb = torch.as_tensor(np.asarray(item_emb, dtype=np.float32))
            if emb.ndim != 2 or emb.shape[1] != schema.ITEM_EMB_DIM:
                raise ValueError(f"item_emb must be [num_items, {schema.ITEM_EMB_DIM}], got {tuple(emb.shape)}")
            num_items = emb.shape[0]
        else:
            emb = torch.zeros(int(num_items), schema.ITEM_EMB_DIM)
        self.config = config
        self.num_items = int(num_items)
        # Frozen content embeddings (the PinSage role): a buffer, so the
        # optimizer never touches it but it ships inside the checkpoint/export.
        self.register_buffer("item_table", torch.cat([torch.zeros(1, schema.ITEM_EMB_DIM), emb], dim=0))
        # Unknown items (index 0) get a learned vector instead of the zero row.
        self.oov_emb = nn.Parameter(torch.randn(schema.ITEM_EMB_DIM) * 0.02)
        self.use_realtime = config.use_realtime
        self.use_pinnerformer = config.use_pinnerformer
        self.use_context = config.use_context
        # `user_known` means "in the PinnerFormer snapshot". Without PinnerFormer,
        # training data has no snapshot (always 0) but serving always does, so
        # the column is zeroed inside the model to keep the two identical.
        context_scale = torch.ones(schema.CONTEXT_DIM)
        if not config.use_pinnerformer:
            context_scale[schema.CONTEXT_FEATURES.index("user_known")] = 0.0
        self.register_buffer("context_scale", context_scale, persistent=False)
        self.realtime = RealtimeEncoder(
            config.mode, schema.ITEM_EMB_DIM, config.action_dim, config.num_layers, config.nhead,
            config.ffn_dim, config.dropout, config.first_k, config.use_surface, config.norm_first,
        )
        rt_dim = self.realtime.out_dim
        if config.rt_proj_dim > 0:
            self.rt_proj: nn.Module = nn.Linear(rt_dim, config.rt_proj_dim)
            rt_dim = config.rt_proj_dim
        else:
            self.rt_proj = nn.Identity()
        in_dim = schema.ITEM_EMB_DIM
        in_dim += schema.USER_EMB_DIM if config.use_pinnerformer else 0
        in_dim += schema.CONTEXT_DIM if config.use_context else 0
        in_dim += rt_dim if config.use_realtime else 0
        self.in_dim = in_dim
        self.cross = nn.ModuleList([CrossLayer(in_dim) for _ in range(config.cross_layers)])
        mlp: list[nn.Module] = []
        prev = in_dim
        for width in config.mlp_dims:
            mlp += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(config.mlp_dropout)]
            prev = width
        mlp.append(nn.Linear(prev, schema.NUM_HEADS))
        self.mlp = nn.Sequential(*mlp)

    def item_lookup(self, idx: torch.Tensor) -> torch.Tensor:
        emb = self.item_table[idx]
        return emb + (idx == 0).unsqueeze(-1).to(emb.dtype) * self.oov_emb

    def forward(self, cand_idx: torch.Tensor, req_index: torch.Tensor, user_emb: torch.Tensor,
                seq_item_idx: torch.Tensor, seq_action: torch.Tensor, seq_surface: torch.Tensor,
                seq_age_h: torch.Tensor, context: torch.Tensor,
                mask_window_h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Grouped core: B candidates over R requests -> logits [B, H].

        cand_idx, req_index [B] (req_index in [0, R)); user_emb [R, D];
        seq_* [R, L]; context [R, C]; mask_window_h [R] hours (training) or None.
        Realtime padding tokens (action 0) are masked, so a sequence may be
        trimmed to any length >= its last real action.
        """
        cand = self.item_lookup(cand_idx)
        parts = [cand]
        single = user_emb.size(0) == 1
        b = cand_idx.size(0)
        if self.use_pinnerformer:
            parts.append(user_emb.expand(b, user_emb.size(1)) if single else user_emb.index_select(0, req_index))
        if self.use_context:
            ctx = context * self.context_scale
            parts.append(ctx.expand(b, ctx.size(1)) if single else ctx.index_select(0, req_index))
        if self.use_realtime:
            rt = self.realtime(cand, req_index, self.item_lookup(seq_item_idx), seq_action, seq_surface,
                               seq_age_h, mask_window_h)
            parts.append(self.rt_proj(rt))
        x0 = torch.cat(parts, dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.mlp(x)

    def forward_batch(self, cand_idx: torch.Tensor, user_emb: torch.Tensor, seq_item_idx: torch.Tensor,
                      seq_action: torch.Tensor, seq_surface: torch.Tensor, seq_age_h: torch.Tensor,
                      context: torch.Tensor, mask_window_h: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One row per impression: cand_idx [B], user_emb [B, D], seq_* [B, L],
        context [B, C], mask_window_h [B] or None -> logits [B, H]."""
        req_index = torch.arange(cand_idx.size(0), device=cand_idx.device)
        return self.forward(cand_idx, req_index, user_emb, seq_item_idx, seq_action, seq_surface,
                            seq_age_h, context, mask_window_h)


class RankerServing(nn.Module):
    """The served ranker: schema.RANKER_INPUTS (one request) -> probs [N, H]."""

    def __init__(self, ranker: Ranker) -> None:
        super().__init__()
        self.ranker = ranker
        self.num_items = ranker.num_items  # rows of the item table (export checks it against the vocab)
        cfg = ranker.config
        self.anchor_user = not cfg.use_pinnerformer
        self.anchor_context = not cfg.use_context
        self.anchor_seq = not cfg.use_realtime
        self.anchor_surface = not (cfg.use_realtime and cfg.use_surface)

    def forward(self, cand_idx: torch.Tensor, user_emb: torch.Tensor, seq_item_idx: torch.Tensor,
                seq_action: torch.Tensor, seq_surface: torch.Tensor, seq_age_h: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        # All candidates belong to request 0: user-side tensors get a leading
        # R = 1 axis and the core broadcasts them instead of copying N times.
        req_index = torch.zeros_like(cand_idx)
        logits = self.ranker(cand_idx, req_index, user_emb.unsqueeze(0), seq_item_idx.unsqueeze(0),
                             seq_action.unsqueeze(0), seq_surface.unsqueeze(0), seq_age_h.unsqueeze(0),
                             context.unsqueeze(0), None)
        probs = torch.sigmoid(logits)
        # ONNX export silently drops inputs the graph never reads, which would
        # break the fixed schema.RANKER_INPUTS contract for ablated models, so
        # each ignored input is folded in as an exact (always finite) zero.
        if self.anchor_user:
            probs = probs + _zero_from(user_emb)
        if self.anchor_context:
            probs = probs + _zero_from(context)
        if self.anchor_seq:
            probs = probs + _zero_from(seq_item_idx) + _zero_from(seq_action)
        # Ages only drive the training-time window mask (TransAct uses time for
        # masking, not as a feature), so serving never reads them.
        probs = probs + _zero_from(seq_age_h)
        if self.anchor_surface:
            probs = probs + _zero_from(seq_surface)
        return probs


def _zero_from(x: torch.Tensor) -> torch.Tensor:
    """A [1] float zero that depends on x (finite even if x holds NaN)."""
    return (x.reshape(-1)[:1] == 0).to(torch.float32) * 0.0


def ranker_from_checkpoint(ckpt: dict[str, Any]) -> Ranker:
    """Rebuild a Ranker from a loaded `kind="ranker"` checkpoint dict; ValueError
    when its config is incomplete or its weights don't fit that config."""
    try:
        cfg = RankerConfig.from_dict(ckpt["config"]["ranker"])
        model = Ranker(cfg, num_items=int(ckpt["config"]["num_items"]))
        model.load_state_dict(ckpt["state_dict"])
    except KeyError as exc:
        raise ValueError(f"ranker checkpoint is missing {exc}") from None
    except (TypeError, RuntimeError) as exc:
        # load_state_dict lists every mismatch; the first two lines name the problem.
        detail = " ".join(str(exc).strip().splitlines()[:2])
        raise ValueError(f"ranker checkpoint weights do not fit its config: {detail}") from None
    return model.eval()


def load_ranker(checkpoint_path: str | Path) -> Ranker:
    """Trained Ranker (eval mode) from a checkpoint file."""
    ckpt = load_checkpoint(checkpoint_path, kind=RANKER_KIND)
    try:
        return ranker_from_checkpoint(ckpt)
    except ValueError as exc:
        raise ValueError(f"{checkpoint_path}: {exc}") from None


def load_serving_module(checkpoint_path: str | Path) -> RankerServing:
    """The serving module (eval mode) of a ranker checkpoint; script or export it as is."""
    return RankerServing(load_ranker(checkpoint_path)).eval()


def example_serving_inputs(num_candidates: int = 8, num_items: int = 100, history: int = 30,
                           seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs in schema.RANKER_INPUTS order (tests, tracing, export)."""
    g = torch.Generator().manual_seed(seed)
    L = schema.REALTIME_SEQ_LEN
    h = min(history, L)
    seq_item = torch.zeros(L, dtype=torch.int64)
    seq_action = torch.zeros(L, dtype=torch.int64)
    seq_surface = torch.zeros(L, dtype=torch.int64)
    seq_age = torch.zeros(L, dtype=torch.float32)
    seq_item[:h] = torch.randint(0, num_items + 1, (h,), generator=g)
    seq_action[:h] = torch.randint(1, schema.NUM_ACTION_IDS, (h,), generator=g)
    seq_surface[:h] = torch.randint(0, schema.NUM_SURFACE_IDS, (h,), generator=g)
    seq_age[:h] = torch.sort(torch.rand(h, generator=g) * 72.0).values
    user = torch.nn.functional.normalize(torch.randn(schema.USER_EMB_DIM, generator=g), dim=0)
    return (
        torch.randint(0, num_items + 1, (num_candidates,), generator=g),
        user,
        seq_item,
        seq_action,
        seq_surface,
        seq_age,
        torch.rand(schema.CONTEXT_DIM, generator=g),
    )
