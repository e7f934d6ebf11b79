"""Offline retrieval metrics for PinnerFormer ablations (PinnerFormer paper §4.1).

All item indices are the model's 1-based ones (0 = OOV, never retrieved); item
index i is dataset row i - 1 (ds.item_ids / ds.item_topic / ds.item_emb).

- Recall@k: |top-k ∩ eval-window positives| / |positives| (distinct items),
  averaged over users (same definition and users as `evaluate_recall`).
- P90 coverage@k: count how often each item appears in all users' top-k
  lists; the smallest fraction of the catalogue whose items account for 90%
  of those appearances (low = retrieval concentrated on few items).
- Interest entropy@k: Shannon entropy (nats) of the topic distribution of a
  user's top-k items, averaged over users (high = diverse retrieval).

Inference modes (paper §5.3, "batch vs realtime"): every first positive of a
(user, item) in the eval window is scored against the embedding live when it
happened. `once`: the embedding from before train_end_ms, never refreshed;
`daily`: recomputed from everything before the event's day (the nightly
snapshot serving would read); `realtime`: recomputed from everything before
the event itself. A user's recall is the share of their events whose item is
in that embedding's top-k; `once` therefore equals plain Recall@k.

Baselines: popularity (the k most frequent train-period positives, the same
list for everyone), on synthetic data an interest oracle (the hidden
simulator state, not learnable: each user's true topic mixture on the last
training day, log theta + 0.5 log popularity; a rough ceiling) and history-mean (the mean of the frozen content
embeddings of the user's history before train_end_ms, cosine against every
item's content embedding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.dataset import Dataset
from pinrank.data.synthetic import config_from_meta, simulate
from pinrank.embed.batch import user_embeddings
from pinrank.metrics import recall_at_k
from pinrank.models.pinnerformer import PinnerFormer, UserTimelines
from pinrank.train.pinnerformer import eval_targets


def p90_coverage(top: np.ndarray, num_items: int, q: float = 0.9) -> float:
    """Smallest fraction of the `num_items` catalogue covering a share q of all appearances in `top`."""
    counts = np.bincount(np.asarray(top).ravel())
    counts = np.sort(counts[counts > 0])[::-1]
    if counts.size == 0:
        return float("nan")
    needed = math.ceil(q * counts.sum() - 1e-9)
    n = int(np.searchsorted(np.cumsum(counts), needed, side="left")) + 1
    return n / num_items


def interest_entropy(top: np.ndarray, topic_of: np.ndarray) -> float:
    """Mean over rows of the entropy (nats) of the topics `topic_of[top[u]]` (topic ids >= 0)."""
    topics = np.asarray(topic_of)[np.asarray(top)]
    vals = []
    for row in topics:
        p = np.bincount(row) / row.size
        p = p[p > 0]
        vals.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(vals)) if vals else float("nan")


def top_k(user_emb: np.ndarray | torch.Tensor, item_emb: np.ndarray | torch.Tensor, k: int,
          chunk: int = 1024) -> np.ndarray:
    """[U, k] item indices by dot product; item row 0 (OOV) is never returned."""
    users = torch.as_tensor(user_emb, dtype=torch.float32)
    items = torch.as_tensor(item_emb, dtype=torch.float32)
    out = []
    for i in range(0, users.size(0), chunk):
        scores = users[i: i + chunk] @ items.T
        scores[:, 0] = -math.inf
        out.append(scores.topk(k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def popularity_top_k(ds: Dataset, k: int) -> np.ndarray:
    """[k] item indices of the most frequent positives before train_end_ms (ties: lower index)."""
    train_pos = UserTimelines(ds, schema.POSITIVE_ACTIONS, before_ms=ds.train_end_ms)
    counts = np.bincount(train_pos.item_idx, minlength=ds.num_items + 1)
    counts[0] = -1
    return np.argsort(-counts, kind="stable")[:k]


def content_item_matrix(ds: Dataset) -> np.ndarray:
    """[num_items + 1, D] unit-norm frozen item embeddings, row 0 = 0 (OOV)."""
    emb = ds.item_emb / np.maximum(np.linalg.norm(ds.item_emb, axis=1, keepdims=True), 1e-12)
    return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb.astype(np.float32)])


def history_mean_embeddings(hist: UserTimelines, rows: np.ndarray, items: np.ndarray,
                            ends: np.ndarray | None = None) -> np.ndarray:
    """[len(rows), D] unit-norm mean of `items[item_idx]` over each timeline row's actions
    (those before flat index `ends[i]` when given, else the whole row)."""
    rows = np.asarray(rows, dtype=np.int64)
    stops = hist.offsets[rows + 1] if ends is None else np.asarray(ends, dtype=np.int64)
    out = np.zeros((rows.size, items.shape[1]), dtype=np.float32)
    for i, r in enumerate(rows):
        m = items[hist.item_idx[hist.offsets[r]: stops[i]]].mean(axis=0)
        out[i] = m / max(float(np.linalg.norm(m)), 1e-12)
    return out


def _metrics(top: np.ndarray, truth: list[np.ndarray], k: int, num_items: int,
             topic_of: np.ndarray) -> dict[str, float]:
    return {"recall": recall_at_k(top[:, :k], truth), "p90_coverage": p90_coverage(top[:, :k], num_items),
            "interest_entropy": interest_entropy(top, topic_of)}


@torch.inference_mode()
def evaluate_pinnerformer(model: PinnerFormer, ds: Dataset, k: int = 10, entropy_k: int = 50,
                          window_days: float = 14.0, batch_size: int = 64) -> dict[str, Any]:
    """Recall@k, P90 coverage@k and interest entropy@entropy_k for the model and both baselines.

    Returns {"eval_users", "k", "entropy_k", "pinnerformer": {...}, "history_mean": {...},
    "popularity": {...}}, each inner dict holding recall / p90_coverage / interest_entropy.
    """
    hist, users, truth = eval_targets(ds, model.config.sequence_actions, window_days)
    result: dict[str, Any] = {"eval_users": len(users), "k": k, "entropy_k": entropy_k}
    if not users:
        return result
    depth = max(k, entropy_k)
    topic_of = np.concatenate([[0], np.asarray(ds.item_topic, dtype=np.int64)])  # row 0 never retrieved
    rows = np.asarray(users, dtype=np.int64)

    was_training = model.training
    model.eval()
    items = model.all_item_embeddings()
    items[0] = 0.0
    emb = user_embeddings(model, hist, rows, ds.train_end_ms, batch_size)
    model.train(was_training)
    result["pinnerformer"] = _metrics(top_k(emb, items, depth), truth, k, ds.num_items, topic_of)

    content = content_item_matrix(ds)
    hm = history_mean_embeddings(hist, rows, content)
    result["history_mean"] = _metrics(top_k(hm, content, depth), truth, k, ds.num_items, topic_of)

    pop = np.tile(popularity_top_k(ds, depth), (rows.size, 1))
    result["popularity"] = _metrics(pop, truth, k, ds.num_items, topic_of)
    oracle = interest_oracle_top_k(ds, hist.user_ids[rows], depth)
    if oracle is not None:
        result["interest_oracle"] = _metrics(oracle, truth, k, ds.num_items, topic_of)
    return result


def interest_oracle_top_k(ds: Dataset, user_ids: np.ndarray, k: int) -> np.ndarray | None:
    """[len(user_ids), k] item indices from the simulator's hidden interests, or None for non-synthetic data.

    Score = log(theta[u, topic(i)] + 0.02) + 0.5 log(train positives of i + 0.5), theta = the
    user's true topic mixture on the last training day: what a model that recovered the hidden
    interests and item popularity exactly would retrieve (no taste, no session intent).
    """
    cfg = config_from_meta(ds.meta)
    if cfg is None:
        return None
    _, truth = simulate(cfg)
    day = (ds.train_end_ms - cfg.start_ms) // MS_PER_DAY - 1
    rows = np.searchsorted(truth.user_ids, np.asarray(user_ids, dtype=np.int64))
    theta = truth.theta[rows, day]  # [U, topics]
    train_pos = UserTimelines(ds, schema.POSITIVE_ACTIONS, before_ms=ds.train_end_ms)
    log_pop = 0.5 * np.log(np.bincount(train_pos.item_idx, minlength=ds.num_items + 1)[1:] + 0.5)
    scores = np.log(theta[:, np.asarray(ds.item_topic)] + 0.02) + log_pop[None, :]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k] + 1


INFERENCE_MODES: tuple[str, ...] = ("once", "daily", "realtime")


def eval_events(ds: Dataset, window_days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_id, item_idx, ts_ms) of the first positive of each (user, item) in
    [train_end, train_end + window), for users with history before train_end."""
    t0 = ds.train_end_ms
    pos = UserTimelines(ds, schema.POSITIVE_ACTIONS)
    sel = (pos.ts_ms >= t0) & (pos.ts_ms < t0 + int(window_days * MS_PER_DAY))
    users = np.repeat(pos.user_ids, pos.lengths)[sel]
    items, ts = pos.item_idx[sel], pos.ts_ms[sel]
    # Rows are sorted by (user, ts) already, so np.unique's first index is the earliest event.
    _, first = np.unique(users * (np.int64(items.max(initial=0)) + 1) + items, return_index=True)
    first = np.sort(first)
    return users[first], items[first], ts[first]


def live_cut_ms(mode: str, train_end_ms: int, ts_ms: np.ndarray) -> np.ndarray:
    """The history cut-off of the embedding that is live at each event under `mode`."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if mode == "once":
        return np.full_like(ts_ms, train_end_ms)
    if mode == "daily":
        return train_end_ms + (ts_ms - train_end_ms) // MS_PER_DAY * MS_PER_DAY
    if mode == "realtime":
        return ts_ms
    raise ValueError(f"unknown inference mode {mode!r}; expected one of {INFERENCE_MODES}")


@torch.inference_mode()
def evaluate_inference_modes(model: PinnerFormer, ds: Dataset, k: int = 10, window_days: float = 14.0,
                             modes: tuple[str, ...] = INFERENCE_MODES, batch_size: int = 64) -> dict[str, float]:
    """Recall@k per inference mode (module docstring), averaged over users."""
    seq = UserTimelines(ds, model.config.sequence_actions)
    users, items, ts = eval_events(ds, window_days)
    hist_rows = UserTimelines(ds, model.config.sequence_actions, before_ms=ds.train_end_ms).rows_of(users)
    keep = hist_rows >= 0  # the same users as Recall@k: those with a history before train_end
    users, items, ts = users[keep], items[keep], ts[keep]
    rows = seq.rows_of(users)
    was_training = model.training
    model.eval()
    item_matrix = model.all_item_embeddings()
    item_matrix[0] = 0.0
    out: dict[str, float] = {}
    for mode in modes:
        cut = live_cut_ms(mode, ds.train_end_ms, ts)
        # One embedding per distinct (user, cut): `once` embeds each user once.
        pairs, inv = np.unique(np.stack([rows, cut], axis=1), axis=0, return_inverse=True)
        emb = user_embeddings(model, seq, pairs[:, 0], pairs[:, 1], batch_size)
        top = top_k(emb, item_matrix, k)
        hit = (top[inv.ravel()] == items[:, None]).any(axis=1)
        uniq, u_inv = np.unique(users, return_inverse=True)
        per_user = np.bincount(u_inv, weights=hit) / np.bincount(u_inv)
        out[mode] = float(per_user.mean()) if uniq.size else float("nan")
    model.train(was_training)
    return out


__all__ = [
    "INFERENCE_MODES",
    "content_item_matrix",
    "eval_events",
    "evaluate_inference_modes",
    "live_cut_ms",
    "evaluate_pinnerformer",
    "history_mean_embeddings",
    "interest_oracle_top_k",
    "interest_entropy",
    "p90_coverage",
    "popularity_top_k",
    "recall_at_k",
    "top_k",
]
