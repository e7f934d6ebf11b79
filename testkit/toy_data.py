"""A small random but structured Dataset for PinnerFormer / embedding tests.

Users hold two favourite topics (stable over time); items have a topic, a
Zipf popularity inside it and a content embedding near the topic centre, so
a model that reads the history can beat popularity. Built in memory, fast.
"""

from __future__ import annotations

import numpy as np

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.dataset import Dataset

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def make_toy_dataset(num_users: int = 200, num_items: int = 400, num_topics: int = 8,
                     actions_per_user: int = 40, days: int = 56, train_days: int = 42,
                     seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    item_ids = np.arange(1, num_items + 1, dtype=np.int64) * 7  # ids != indices, on purpose
    topic = rng.permutation(np.arange(num_items) % num_topics).astype(np.int32)
    centres = rng.normal(size=(num_topics, schema.ITEM_EMB_DIM))
    emb = centres[topic] + 0.5 * rng.normal(size=(num_items, schema.ITEM_EMB_DIM))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    pop = 1.0 / (1.0 + rng.permutation(num_items)) ** 0.8
    by_topic = [np.flatnonzero(topic == t) for t in range(num_topics)]
    p_in_topic = [pop[ix] / pop[ix].sum() for ix in by_topic]

    names = ("user_id", "item_id", "action", "surface", "ts_ms", "duration_ms")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}
    positive = [schema.ACTION_IDS[a] for a in ("click", "closeup", "save", "purchase")]
    for u in range(num_users):
        favs = rng.choice(num_topics, size=2, replace=False)
        n = max(2, int(rng.poisson(actions_per_user)))
        ts = np.sort(START_MS + rng.integers(0, days * MS_PER_DAY, size=n))
        on_topic = rng.random(n) < 0.85
        topics = np.where(on_topic, favs[rng.integers(0, 2, size=n)], rng.integers(0, num_topics, size=n))
        items = np.array([by_topic[t][rng.choice(by_topic[t].size, p=p_in_topic[t])] for t in topics])
        act = np.where(on_topic, rng.choice(positive, size=n, p=[0.4, 0.3, 0.25, 0.05]),
                       np.where(rng.random(n) < 0.6, schema.ACTION_IDS["hide"], schema.ACTION_IDS["impression"]))
        dur = np.where(np.isin(act, positive[:2]), rng.integers(500, 60_000, size=n), -1)
        cols["user_id"].append(np.full(n, 1000 + u, dtype=np.int64))
        cols["item_id"].append(item_ids[items])
        cols["action"].append(act.astype(np.int64))
        cols["surface"].append(rng.integers(0, schema.NUM_SURFACE_IDS, size=n).astype(np.int64))
        cols["ts_ms"].append(ts.astype(np.int64))
        cols["duration_ms"].append(dur.astype(np.int64))
    actions = {k: np.concatenate(v) for k, v in cols.items()}
    meta = {
        "source": "test-toy",
        "seed": seed,
        "start_ms": START_MS,
        "end_ms": START_MS + days * MS_PER_DAY,
        "train_end_ms": START_MS + train_days * MS_PER_DAY,
    }
    return Dataset(actions, item_ids, topic, emb, meta)
