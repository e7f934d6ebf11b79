"""Canary requests replayed from a dataset's action log: a user, the moment
just after one of their actions, their real history up to it (the newest
REALTIME_SEQ_LEN actions) and candidates drawn from the catalogue. What
production sends, minus retrieval (no retrieval here: any catalogue item is
a fair candidate for a contract and latency check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pinrank.data.dataset import Dataset, load_dataset
from pinrank_client import schema
from pinrank_client.types import RankRequest

#: The request comes a second after the replayed action, which is then its history's newest.
REQUEST_DELAY_MS = 1000


def replayed_requests(ds: Dataset, count: int, *, candidates: int, top_k: int, seed: int = 0) -> list[RankRequest]:
    """`count` requests at moments of the eval period (of the whole log when it has none)."""
    if count < 1:
        return []
    log = ds.actions
    by_user_then_time = np.lexsort((log["ts_ms"], log["user_id"]))
    user, ts = log["user_id"][by_user_then_time], log["ts_ms"][by_user_then_time]
    item, kind = log["item_id"][by_user_then_time], log["action"][by_user_then_time]
    surface = log["surface"][by_user_then_time]
    moments = np.flatnonzero(ts >= ds.train_end_ms)
    if moments.size == 0:
        moments = np.arange(user.size)
    if moments.size == 0:
        raise ValueError(f"{ds.path or 'the dataset'} has no actions to replay")
    rng = np.random.default_rng(seed)
    picks = rng.choice(moments, size=count, replace=moments.size < count)
    user_start = np.searchsorted(user, user[picks], side="left")
    n = min(candidates, ds.item_ids.size, schema.MAX_CANDIDATES)
    out = []
    for pick, first in zip(picks.tolist(), user_start.tolist()):
        history = slice(max(first, pick + 1 - schema.REALTIME_SEQ_LEN), pick + 1)
        out.append(RankRequest.from_arrays(
            int(user[pick]), rng.choice(ds.item_ids, size=n, replace=False),
            action_item_ids=item[history], action_types=kind[history], action_ts_ms=ts[history],
            action_surfaces=surface[history], request_ts_ms=int(ts[pick]) + REQUEST_DELAY_MS, top_k=top_k))
    return out


def requests_from_dataset(data: Path, count: int, *, candidates: int, top_k: int,
                          seed: int = 0) -> list[RankRequest]:
    return replayed_requests(load_dataset(data), count, candidates=candidates, top_k=top_k, seed=seed)
