"""Request featurization shared by training and serving (numpy only).

The preprocess Triton model and the ranker's training-data builder both call
these functions, so a request is featurized identically offline and online.
"""

from __future__ import annotations

import math

import numpy as np

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_HOUR

_LOG_LEN_NORM = math.log1p(schema.REALTIME_SEQ_LEN)


def featurize_history(
    item_idx: np.ndarray,
    actions: np.ndarray,
    surfaces: np.ndarray,
    ts_ms: np.ndarray,
    request_ts_ms: int,
    seq_len: int = schema.REALTIME_SEQ_LEN,
) -> dict[str, np.ndarray]:
    """Newest-first, 0-padded realtime sequence tensors (schema.RANKER_INPUTS).

    Keeps the newest `seq_len` actions; ties in time keep the later array
    position first so a client's own ordering of simultaneous actions holds.
    Ages are hours before the request, clipped at 0 (small client clock skew).
    """
    n = int(np.asarray(ts_ms).shape[0])
    out = {
        "seq_item_idx": np.zeros(seq_len, dtype=np.int64),
        "seq_action": np.zeros(seq_len, dtype=np.int64),
        "seq_surface": np.zeros(seq_len, dtype=np.int64),
        "seq_age_h": np.zeros(seq_len, dtype=np.float32),
    }
    if n == 0:
        return out
    ts = np.asarray(ts_ms, dtype=np.int64)
    # lexsort sorts ascending by the last key: newest first, then later position first.
    order = np.lexsort((-np.arange(n), -ts))[:seq_len]
    k = order.shape[0]
    out["seq_item_idx"][:k] = np.asarray(item_idx, dtype=np.int64)[order]
    out["seq_action"][:k] = np.asarray(actions, dtype=np.int64)[order]
    out["seq_surface"][:k] = np.asarray(surfaces, dtype=np.int64)[order]
    out["seq_age_h"][:k] = np.maximum(0.0, (request_ts_ms - ts[order]) / MS_PER_HOUR).astype(np.float32)
    return out


def context_features(request_ts_ms: int, history_len: int, user_known: bool) -> np.ndarray:
    """float32 [CONTEXT_DIM] in schema.CONTEXT_FEATURES order (UTC clock)."""
    hours = (request_ts_ms / MS_PER_HOUR) % 24.0
    days = (request_ts_ms / (MS_PER_HOUR * 24.0) + 3.0) % 7.0  # 1970-01-01 was a Thursday; 0 = Monday
    feats = [
        math.sin(2 * math.pi * hours / 24.0),
        math.cos(2 * math.pi * hours / 24.0),
        math.sin(2 * math.pi * days / 7.0),
        math.cos(2 * math.pi * days / 7.0),
        math.log1p(min(history_len, schema.REALTIME_SEQ_LEN)) / _LOG_LEN_NORM,
        1.0 if user_known else 0.0,
    ]
    return np.asarray(feats, dtype=np.float32)
