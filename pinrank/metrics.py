"""Offline metrics on numpy arrays (no torch), shared by the synthetic
log's signal checks, the ranker's validation and the evaluation protocols."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count half); NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, np.float64)
    # average rank (1-based) within each run of tied scores
    starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
    ends = np.concatenate([starts[1:], [s.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def recall_at_k(top: np.ndarray, truth: list[np.ndarray]) -> float:
    """Mean over users of |top[u] ∩ truth[u]| / |truth[u]| (truth = distinct items); nan without users."""
    vals = [np.isin(t, top_row).sum() / t.size for top_row, t in zip(top, truth)]
    return float(np.mean(vals)) if vals else float("nan")
