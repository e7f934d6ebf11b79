"""The synthetic generator: determinism, format validity and the signals
the models are supposed to find."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.data.dataset import load_dataset
from pinrank.data.synthetic import (
    ACTION_WINDOW_MS,
    QUICK,
    generate,
    signal_stats,
    simulate,
)

FILES = ("actions.parquet", "impressions.parquet", "items.parquet", "item_embeddings.npy", "meta.json")


def test_same_seed_gives_identical_files(tmp_path, small_cfg):
    a = generate(small_cfg, tmp_path / "a", progress=False)
    b = generate(small_cfg, tmp_path / "b", progress=False)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_different_seed_differs(small_world, small_cfg):
    ds, _ = small_world
    other, _ = simulate(replace(small_cfg, seed=small_cfg.seed + 1))
    assert not np.array_equal(ds.item_emb, other.item_emb)
    n = min(ds.actions["ts_ms"].size, other.actions["ts_ms"].size)
    assert not np.array_equal(ds.actions["ts_ms"][:n], other.actions["ts_ms"][:n])


@pytest.mark.parametrize(
    "bad",
    [
        dict(users=0),
        dict(eval_days=10, days=10),
        dict(items=5, topics=10),
        dict(items_per_request=300, items=400),
        dict(sessions_per_day=(0.5, 0.1)),
        dict(requests_per_session=(0, 2)),
        dict(explore_prob=1.5),
        dict(start_ms=10),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="SyntheticConfig"):
        replace(QUICK, **bad)


def test_written_dataset_loads_and_is_valid(tmp_path, small_world, small_cfg):
    cfg = small_cfg
    path = generate(cfg, tmp_path / "ds", progress=False)
    ds = load_dataset(path)
    mem, _ = small_world
    assert np.array_equal(ds.actions["ts_ms"], mem.actions["ts_ms"])  # the file is the simulation
    meta = ds.meta
    for key in ("source", "seed", "config", "start_ms", "end_ms", "train_end_ms", "num_topics", "counts"):
        assert key in meta, key
    assert meta["source"] == "synthetic" and meta["seed"] == cfg.seed
    assert meta["config"]["users"] == cfg.users
    assert meta["train_end_ms"] == cfg.start_ms + (cfg.days - cfg.eval_days) * 86_400_000

    a, im = ds.actions, ds.impressions
    assert im is not None
    order = np.lexsort((a["item_id"], a["ts_ms"], a["user_id"]))
    assert np.array_equal(order, np.arange(order.size))
    order = np.lexsort((im["item_id"], im["request_id"]))
    assert np.array_equal(order, np.arange(order.size))
    assert np.unique(im["request_id"] * 10**9 + im["item_id"]).size == im["item_id"].size  # no repeats
    for ts in (a["ts_ms"], im["ts_ms"]):
        assert ts.min() >= max(schema.MIN_TS_MS, meta["start_ms"]) and ts.max() < meta["end_ms"]
    assert np.isin(a["item_id"], ds.item_ids).all() and np.isin(im["item_id"], ds.item_ids).all()
    assert ds.item_emb.dtype == np.float32 and np.isfinite(ds.item_emb).all()
    assert set(np.unique(a["action"])) <= {schema.ACTION_IDS[x] for x in ("click", "closeup", "save", "hide")}
    timed = np.isin(a["action"], [schema.ACTION_IDS["click"], schema.ACTION_IDS["closeup"]])
    assert (a["duration_ms"][timed] > 0).all() and (a["duration_ms"][~timed] == -1).all()
    labels = im["labels"]
    assert set(np.unique(labels)) <= {0, 1}
    hide = labels[:, schema.HEADS.index("hide")] == 1
    assert not labels[hide][:, [schema.HEADS.index(h) for h in ("save", "click", "closeup")]].any()
    assert meta["counts"]["actions"] == a["ts_ms"].size
    assert meta["counts"]["impressions"] == im["ts_ms"].size
    assert int(labels.sum()) == a["ts_ms"].size  # one action row per positive label


@pytest.mark.parametrize("k", [None, 40])
def test_actions_follow_their_request_and_precede_the_next(small_world, small_cfg, k):
    """An action belongs to the user's latest request at or before it, shows
    that item, and so is visible to the user's next request (the realtime
    sequence invariant), even with many items per request."""
    ds = small_world[0] if k is None else simulate(replace(small_cfg, items_per_request=k))[0]
    a, im = ds.actions, ds.impressions
    req_first = np.unique(im["request_id"], return_index=True)[1]
    r_user, r_ts, r_id = im["user_id"][req_first], im["ts_ms"][req_first], im["request_id"][req_first]
    # Request ids are in time order.
    assert (np.diff(r_ts[np.argsort(r_id)]) >= 0).all()
    span = 10**13
    req_key = r_user * span + r_ts
    order = np.argsort(req_key)
    pos = np.searchsorted(req_key[order], a["user_id"] * span + a["ts_ms"], side="right") - 1
    assert (pos >= 0).all()
    owner = order[pos]
    assert (r_user[owner] == a["user_id"]).all()
    assert ((a["ts_ms"] - r_ts[owner]) < ACTION_WINDOW_MS).all() and ((a["ts_ms"] - r_ts[owner]) > 0).all()
    shown = set(zip(im["request_id"].tolist(), im["item_id"].tolist()))
    assert all((int(r), int(i)) in shown for r, i in zip(r_id[owner], a["item_id"]))


def test_quick_default_size_and_speed(quick_world):
    ds, _ = quick_world
    assert 150_000 <= ds.actions["ts_ms"].size <= 300_000
    assert 150_000 <= ds.impressions["ts_ms"].size <= 300_000
    assert ds.meta["counts"]["users"] == 2000 and ds.num_items == 5000 and ds.meta["num_topics"] == 50
    t0 = time.perf_counter()
    simulate(replace(QUICK, seed=1))
    assert time.perf_counter() - t0 < 30.0


def test_signals(quick_world):
    ds, truth = quick_world
    st = signal_stats(ds, truth)
    tr = st["truth"]
    # Hides fall on off-interest items.
    assert tr["hide_rate_off_interest"] > 5 * tr["hide_rate_on_interest"]
    # Long-term interest and session intent both drive engagement.
    assert tr["engage_rate_on_interest"] > 3 * tr["engage_rate_off_interest"]
    assert tr["engage_rate_intent"] > 1.5 * tr["engage_rate_not_intent"]
    # An exploratory intent shows only through the session's own actions,
    # and engaging with it raises later engagement.
    by_req = tr["engage_rate_explore_intent_by_request"]
    assert by_req[-1] > by_req[0] + 0.05
    auc_e, auc_h = st["auc_engage"], st["auc_hide"]
    assert auc_e["history"] > auc_e["popularity"] + 0.03  # user history beats popularity
    assert auc_e["history+realtime"] > auc_e["history"] + 0.02  # the recent sequence adds signal
    assert auc_h["history"] > auc_h["popularity"] + 0.05  # hides follow interests
    assert st["top1pct_item_impression_share"] > 0.15  # Zipf skew


def test_world_structure(quick_world):
    ds, truth = quick_world
    # Interests drift but stay recognisable over the 35 days.
    first, last = truth.theta[:, 0], truth.theta[:, -1]
    corr = np.mean([np.corrcoef(first[u], last[u])[0, 1] for u in range(200)])
    assert 0.3 < corr < 0.99
    assert (truth.interests.sum(axis=1) >= 2).all()
    # Some intents fall outside the user's interests.
    assert 0.2 < truth.session_explore.mean() < 0.4
    # Daily rhythm: evenings (UTC) are busier than the small hours.
    hour = (truth.session_start_ms // 3_600_000) % 24
    assert np.isin(hour, [19, 20, 21]).sum() > 3 * np.isin(hour, [2, 3, 4]).sum()
    # Content embeddings sit near their topic: same-topic items are closer.
    emb = ds.item_emb / np.linalg.norm(ds.item_emb, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, ds.num_items, size=(2, 5000))
    same = ds.item_topic[i] == ds.item_topic[j]
    cos = (emb[i] * emb[j]).sum(axis=1)
    assert cos[same].mean() > cos[~same].mean() + 0.3
