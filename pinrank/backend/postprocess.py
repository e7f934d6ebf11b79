"""Head probabilities -> utility -> top-k (numpy only): the ensemble's last step."""

from __future__ import annotations

import numpy as np

from pinrank.backend import schema

_WEIGHTS = schema.utility_weight_vector()


def utility(probs: np.ndarray) -> np.ndarray:
    """Weighted head sum, [N, H] -> [N] float32 (weights from the schema)."""
    return (np.asarray(probs, dtype=np.float32) @ _WEIGHTS).astype(np.float32)


def top_k(candidate_ids: np.ndarray, probs: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The k best candidates by utility; ties keep request order (stable sort)."""
    if probs.ndim != 2 or probs.shape != (candidate_ids.shape[0], schema.NUM_HEADS):
        raise ValueError(
            f"probs must be [{candidate_ids.shape[0]}, {schema.NUM_HEADS}], got {list(probs.shape)}"
        )
    if int(k) < 1:
        raise ValueError(f"top_k must be >= 1, got {int(k)}")
    u = utility(probs)
    k = min(int(k), u.shape[0])
    if k < u.shape[0]:
        # Partition keeps this O(N); keeping every tie of the k-th value makes
        # the result identical to a full stable sort.
        kth = np.partition(u, u.shape[0] - k)[u.shape[0] - k]
        keep = np.flatnonzero(u >= kth)
        order = keep[np.lexsort((keep, -u[keep]))][:k]
    else:
        order = np.lexsort((np.arange(u.shape[0]), -u))
    return {
        "item_ids": candidate_ids[order].astype(np.int64),
        "scores": u[order],
        "head_probs": np.ascontiguousarray(probs[order], dtype=np.float32),
    }
