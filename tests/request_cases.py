"""Raw ensemble requests for the integration tests (shared so every served
profile is checked on the same edge cases)."""

from __future__ import annotations

import numpy as np

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY

#: name -> make_request keyword arguments: the shapes serving must get right.
CASES: dict[str, dict] = {
    "known_user": dict(),
    "cold_start_user": dict(known_user=False),
    "unknown_items": dict(unknown_items=20),
    "empty_history": dict(history=0),
    "history_longer_than_L": dict(history=schema.REALTIME_SEQ_LEN + 150),
    "one_candidate": dict(n=1, top_k=1),
    "max_candidates": dict(n=schema.MAX_CANDIDATES, top_k=schema.MAX_CANDIDATES),
    "default_top_k": dict(top_k=None),
}


def make_request(item_ids: np.ndarray, user_ids: np.ndarray, rng: np.random.Generator, req_ts: int, *,
                 n: int = 200, history: int = 50, known_user: bool = True, unknown_items: int = 0,
                 top_k: int | None = 10) -> dict[str, np.ndarray]:
    """One user x `n` distinct candidates drawn from `item_ids`; unknown ids lie
    above the catalogue's (and fill up `n` beyond the catalogue's size: the
    server ranks each distinct item once)."""
    user = int(rng.choice(user_ids)) if known_user else int(np.max(user_ids) + 10_000)
    known = rng.choice(item_ids, size=min(n, item_ids.size), replace=False)
    filler = item_ids.max() + 1 + unknown_items + np.arange(n - known.size)
    cands = rng.permutation(np.concatenate([known, filler]))
    if unknown_items:
        cands[:unknown_items] = item_ids.max() + 1 + np.arange(unknown_items)
    req = {
        "user_id": np.array([user]),
        "candidate_ids": cands,
        "action_item_ids": rng.choice(item_ids, size=history),
        "action_types": rng.integers(1, schema.NUM_ACTION_IDS, size=history),
        "action_surfaces": rng.integers(0, schema.NUM_SURFACE_IDS, size=history),
        "action_ts_ms": req_ts - rng.integers(1, 7 * MS_PER_DAY, size=history),
        "request_ts_ms": np.array([req_ts]),
    }
    if top_k is not None:
        req["top_k"] = np.array([top_k])
    return {k: np.asarray(v, dtype=np.int64) for k, v in req.items()}


def assert_same_ranking(served: dict[str, np.ndarray], expected: dict[str, np.ndarray], k: int,
                        atol: float = 1e-4) -> None:
    """Served top-k == reference top-k up to `atol`, where near-ties may swap places.

    Two runtimes can order items whose utilities differ by ~1e-7 differently,
    so rows are compared per item id, not per position; an item only one side
    ranked (a swap at the k boundary) must tie in utility within atol.
    """
    assert served["item_ids"].shape == (k,)  # never empty (the numpy-2 stub trap)
    assert np.all(np.diff(served["scores"]) <= 0)
    np.testing.assert_allclose(served["scores"], expected["scores"], atol=atol, rtol=0)
    row_of = {int(item): j for j, item in enumerate(expected["item_ids"])}  # duplicates share their row
    for i, item in enumerate(served["item_ids"]):
        j = row_of.get(int(item))
        if j is None:
            assert abs(served["scores"][i] - expected["scores"][i]) <= atol, f"item {item} ranked by one side only"
            continue
        np.testing.assert_allclose(served["head_probs"][i], expected["head_probs"][j], atol=atol, rtol=0)
        assert abs(served["scores"][i] - expected["scores"][j]) <= atol
