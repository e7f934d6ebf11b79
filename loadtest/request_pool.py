"""Ranking requests for load tests, drawn from a dataset rather than made up.

Each request replays a moment of the action log: a user, a request time and
that user's real history before it (the newest REALTIME_SEQ_LEN actions), so
history lengths follow the data (new users send short ones). The candidate
count is drawn from a log-normal clipped to [100, 1000]: retrieval returns a
few hundred candidates most of the time and the maximum sometimes, which is
what the serving cost depends on. Candidates are catalogue items.

The pool is built once (by the runner) and saved as flat arrays in one .npz,
so every locust process replays the same requests without loading Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinrank.data.dataset import load_dataset
from pinrank_client import schema
from pinrank_client.types import RankRequest

MIN_CANDIDATES = 100
MEDIAN_CANDIDATES = 400
CANDIDATE_SIGMA = 0.6
_HISTORY = ("action_item_ids", "action_types", "action_surfaces", "action_ts_ms")


def candidate_counts(rng: np.random.Generator, size: int, *, low: int = MIN_CANDIDATES,
                     high: int = schema.MAX_CANDIDATES, median: int = MEDIAN_CANDIDATES,
                     sigma: float = CANDIDATE_SIGMA) -> np.ndarray:
    """Candidate counts per request: log-normal around `median`, clipped to [low, high]."""
    n = np.exp(rng.normal(np.log(median), sigma, size=size))
    return np.clip(np.rint(n), low, high).astype(np.int64)


@dataclass(frozen=True)
class RequestPool:
    """Ragged requests stored flat: request i's candidates are
    candidate_ids[cand_offsets[i]:cand_offsets[i+1]], likewise its actions."""

    user_id: np.ndarray
    request_ts_ms: np.ndarray
    cand_offsets: np.ndarray
    candidate_ids: np.ndarray
    act_offsets: np.ndarray
    action_item_ids: np.ndarray
    action_types: np.ndarray
    action_surfaces: np.ndarray
    action_ts_ms: np.ndarray

    def __len__(self) -> int:
        return int(self.user_id.shape[0])

    def arrays(self, i: int, top_k: int = 10) -> dict[str, np.ndarray]:
        """Request i as the contract's input tensors."""
        c0, c1 = self.cand_offsets[i], self.cand_offsets[i + 1]
        a0, a1 = self.act_offsets[i], self.act_offsets[i + 1]
        return {
            "user_id": self.user_id[i:i + 1],
            "candidate_ids": self.candidate_ids[c0:c1],
            **{h: getattr(self, h)[a0:a1] for h in _HISTORY},
            "request_ts_ms": self.request_ts_ms[i:i + 1],
            "top_k": np.array([top_k], np.int64),
        }

    def requests(self, top_k: int = 10) -> list[RankRequest]:
        """SDK requests, validated once here so the load loop only sends."""
        out = []
        for i in range(len(self)):
            a = self.arrays(i, top_k)
            out.append(RankRequest.from_arrays(
                int(a["user_id"][0]), a["candidate_ids"], action_item_ids=a["action_item_ids"],
                action_types=a["action_types"], action_ts_ms=a["action_ts_ms"],
                action_surfaces=a["action_surfaces"], request_ts_ms=int(a["request_ts_ms"][0]), top_k=top_k))
        return out

    def candidate_counts(self) -> np.ndarray:
        return np.diff(self.cand_offsets)

    def history_lengths(self) -> np.ndarray:
        return np.diff(self.act_offsets)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})
        return path

    @classmethod
    def load(cls, path: Path) -> RequestPool:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


def build_pool(actions: dict[str, np.ndarray], item_ids: np.ndarray, size: int, *, seed: int = 0,
               since_ms: int | None = None) -> RequestPool:
    """`size` requests at moments of `actions` (ts >= since_ms when given,
    e.g. the eval period), each with the user's history before that moment."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((actions["ts_ms"], actions["user_id"]))
    users, ts = actions["user_id"][order], actions["ts_ms"][order]
    eligible = np.arange(users.size) if since_ms is None else np.flatnonzero(ts >= since_ms)
    if eligible.size == 0:
        raise ValueError("no actions to replay requests at" + ("" if since_ms is None else f" after {since_ms}"))
    picks = rng.choice(eligible, size=size, replace=eligible.size < size)
    # A request 1 s after the picked action: that action is the newest in the history.
    req_ts = ts[picks] + 1000
    first_of_user = np.searchsorted(users, users[picks], side="left")
    ends = picks + 1
    starts = np.maximum(first_of_user, ends - schema.REALTIME_SEQ_LEN)
    hist = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
    ns = candidate_counts(rng, size)
    cands = [rng.choice(item_ids, size=n, replace=n > item_ids.size) for n in ns]
    return RequestPool(
        user_id=users[picks].astype(np.int64),
        request_ts_ms=req_ts.astype(np.int64),
        cand_offsets=np.concatenate([[0], np.cumsum(ns)]).astype(np.int64),
        candidate_ids=np.concatenate(cands).astype(np.int64),
        act_offsets=np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64),
        action_item_ids=actions["item_id"][order][hist].astype(np.int64),
        action_types=actions["action"][order][hist].astype(np.int64),
        action_surfaces=actions["surface"][order][hist].astype(np.int64),
        action_ts_ms=ts[hist].astype(np.int64),
    )


def pool_from_dataset(data: Path, size: int, seed: int = 0) -> RequestPool:
    """Requests replayed from a dataset's eval period (all of it when it has none)."""
    ds = load_dataset(data)
    since = ds.train_end_ms if (ds.actions["ts_ms"] >= ds.train_end_ms).any() else None
    return build_pool(ds.actions, ds.item_ids, size, seed=seed, since_ms=since)
