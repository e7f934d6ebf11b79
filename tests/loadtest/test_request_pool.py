"""Requests replayed from an action log: real histories, clipped candidate counts."""

from __future__ import annotations

import numpy as np
from request_pool import RequestPool, build_pool, candidate_counts

from pinrank_client import schema

T0 = 1_767_000_000_000


def toy_actions(n: int = 400, users: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"user_id": rng.integers(0, users, n), "item_id": rng.integers(0, 60, n),
            "action": rng.integers(1, schema.NUM_ACTION_IDS, n), "surface": rng.integers(0, schema.NUM_SURFACE_IDS, n),
            "ts_ms": T0 + rng.integers(0, 10**9, n)}


def test_candidate_counts_are_clipped():
    n = candidate_counts(np.random.default_rng(0), 5000)
    assert n.min() == 100 and n.max() == schema.MAX_CANDIDATES
    assert 300 < np.median(n) < 500


def test_histories_are_the_users_own_actions_before_the_request(tmp_path):
    actions = toy_actions()
    pool = build_pool(actions, np.arange(60), 50, seed=3, since_ms=T0 + 5 * 10**8)
    assert len(pool) == 50
    assert (pool.history_lengths() >= 1).all() and (pool.history_lengths() <= schema.REALTIME_SEQ_LEN).all()
    for i in range(len(pool)):
        a = pool.arrays(i)
        user, ts = int(a["user_id"][0]), int(a["request_ts_ms"][0])
        mine = np.sort(actions["ts_ms"][(actions["user_id"] == user) & (actions["ts_ms"] < ts)])
        assert np.array_equal(a["action_ts_ms"], mine[-schema.REALTIME_SEQ_LEN:])
        assert ts - 1000 >= T0 + 5 * 10**8
    reqs = RequestPool.load(pool.save(tmp_path / "p.npz")).requests()
    assert [r.candidate_ids.size for r in reqs] == pool.candidate_counts().tolist()
