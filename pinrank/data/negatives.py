"""Negatives for derived impressions: each request shows its engaged item
plus `k` catalogue items, drawn half uniformly and half by train-period
popularity, seeded."""

from __future__ import annotations

import numpy as np

from pinrank.data.dataset import DatasetError


def draw_negatives(rng: np.random.Generator, pos: np.ndarray, n_items: int, k: int,
                   popularity: np.ndarray) -> np.ndarray:
    """[len(pos), k] item indices, distinct per row and != pos."""
    n = pos.shape[0]
    cdf = np.cumsum(popularity + 1e-12)
    by_pop = np.minimum(np.searchsorted(cdf, rng.random((n, k)) * cdf[-1], side="right"), n_items - 1)
    neg = np.where(rng.random((n, k)) < 0.5, rng.integers(0, n_items, size=(n, k)), by_pop)
    full = np.concatenate([pos[:, None], neg], axis=1)
    rows = None  # all rows at first; after that only redrawn rows can hold a duplicate
    for _ in range(1000):
        part = full if rows is None else full[rows]
        dup = _duplicates(part)
        if not dup.any():
            return full[:, 1:]
        # Rows are in order, so the draws land where a pass over all rows would put them.
        part[dup] = rng.integers(0, n_items, size=int(dup.sum()))
        redrawn = np.flatnonzero(dup.any(axis=1))
        if rows is not None:
            full[rows] = part
            redrawn = rows[redrawn]
        rows = redrawn
    raise DatasetError("could not draw distinct negatives; catalogue too small for --negatives")


def _duplicates(full: np.ndarray) -> np.ndarray:
    """Where an entry repeats an earlier one of its row; the engaged item
    (column 0) stays, its duplicates are redrawn."""
    order = np.argsort(full, axis=1, kind="stable")
    s = np.take_along_axis(full, order, axis=1)
    dup_sorted = np.zeros(s.shape, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    dup[:, 0] = False
    return dup
