"""Ranking metrics of the two protocols, from per-user score rows.

Every scorer (a trained tower, SASRec, popularity, history-mean) gives a
score per item for each evaluated user; these functions remove the items
already in the user's input, rank, and measure:

- leave-one-out: HR@10 and NDCG@10 of the one target under full ranking
  over the whole catalogue, and the same among the target plus 100 items
  drawn uniformly from those the user never interacted with (the sampled
  variant older papers report; seeded, identical for every scorer);
- temporal window: Recall@10 of the window's positives, P90 coverage@10 and
  interest entropy@50 (pinrank.train.pinnerformer_eval's definitions).

Ties are counted against the target (rank = items scoring >= it, minus
itself), so a constant scorer cannot look good.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pinrank.eval.splits import ProtocolSplit
from pinrank.metrics import recall_at_k
from pinrank.train.pinnerformer_eval import interest_entropy, p90_coverage

#: scores(split, indices) -> float32 [len(indices), num_items + 1]; column 0 (OOV) is ignored.
Scorer = Callable[[ProtocolSplit, np.ndarray], np.ndarray]
_CHUNK = 512


def _masked_chunks(split: ProtocolSplit, scorer: Scorer) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, scores with OOV and seen items at -inf) per chunk of evaluated users."""
    for lo in range(0, split.rows.size, _CHUNK):
        idx = np.arange(lo, min(lo + _CHUNK, split.rows.size))
        scores = np.array(scorer(split, idx), dtype=np.float64)
        scores[:, 0] = -np.inf
        for j, i in enumerate(idx):
            scores[j, split.seen(int(i))] = -np.inf
        yield idx, scores


def leave_one_out_metrics(split: ProtocolSplit, scorer: Scorer, k: int = 10, sampled: int = 100,
                          seed: int = 0) -> dict[str, float]:
    """hr_at_10 / ndcg_at_10 (full ranking) and sampled_hr_at_10 / sampled_ndcg_at_10 (1 + `sampled`)."""
    rng = np.random.default_rng(seed)
    t = split.timelines
    num_items = None
    full_rank, sampled_rank = [], []
    for idx, scores in _masked_chunks(split, scorer):
        num_items = scores.shape[1] - 1
        target = np.asarray([split.targets[i][0] for i in idx])
        s_target = scores[np.arange(idx.size), target]
        # A target the input already holds cannot be retrieved: it counts as a miss.
        full_rank.append(np.where(np.isfinite(s_target), (scores >= s_target[:, None]).sum(axis=1) - 1, num_items))
        for j, i in enumerate(idx):
            r = int(split.rows[i])
            touched = np.zeros(num_items + 1, dtype=bool)
            touched[t.item_idx[t.offsets[r]: t.offsets[r + 1]]] = True
            touched[0] = True
            pool = np.flatnonzero(~touched)
            negs = rng.choice(pool, size=min(sampled, pool.size), replace=False)
            s_neg = scores[j, negs]
            sampled_rank.append(int((s_neg >= s_target[j]).sum()) if np.isfinite(s_target[j]) else sampled)
    full = np.concatenate(full_rank)
    samp = np.asarray(sampled_rank)

    def hr_ndcg(rank: np.ndarray) -> tuple[float, float]:
        hit = rank < k
        return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())

    hr, ndcg = hr_ndcg(full)
    s_hr, s_ndcg = hr_ndcg(samp)
    return {"hr_at_10": hr, "ndcg_at_10": ndcg, "sampled_hr_at_10": s_hr, "sampled_ndcg_at_10": s_ndcg,
            "users": int(full.size), "catalogue": int(num_items or 0), "sampled_negatives": sampled}


def top_k_lists(split: ProtocolSplit, scorer: Scorer, k: int) -> np.ndarray:
    """[users, k] item indices by score, seen items and OOV removed (ties: lower index)."""
    out = []
    for _idx, scores in _masked_chunks(split, scorer):
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def window_metrics(split: ProtocolSplit, scorer: Scorer, item_topic: np.ndarray, k: int = 10,
                   entropy_k: int = 50) -> dict[str, float]:
    """recall_at_10, p90_coverage_at_10 and entropy_at_50 (item_topic: dataset order, 0-based rows)."""
    top = top_k_lists(split, scorer, max(k, entropy_k))
    topic_of = np.concatenate([[0], np.asarray(item_topic, dtype=np.int64)])
    num_items = int(np.asarray(item_topic).size)
    return {"recall_at_10": recall_at_k(top[:, :k], split.targets),
            "p90_coverage_at_10": p90_coverage(top[:, :k], num_items),
            "entropy_at_50": interest_entropy(top[:, :entropy_k], topic_of),
            "users": int(split.rows.size)}


__all__ = ["Scorer", "leave_one_out_metrics", "top_k_lists", "window_metrics"]
