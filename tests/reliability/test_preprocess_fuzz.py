"""Property-based fuzzing of the request path's CPU half (pinrank.backend.preprocess).

Whatever arrives, the Preprocessor either raises InvalidRequestError (a
ValueError with a message) or returns exactly the ranker contract: the
schema's dtypes and shapes, finite floats, indices inside the embedding
tables, each candidate once. It never fails any other way: in the preprocess
model another exception would be an opaque server error.

Examples are derandomized (the same ones every run, no .hypothesis/ database)
so CI is repeatable; PINRANK_FUZZ_EXAMPLES=N scales every test's budget up
for a longer local hunt.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pinrank.backend import schema
from pinrank.backend.preprocess import Preprocessor, unique_in_order
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_HOUR
from pinrank.backend.vocab import ItemVocab
from pinrank_client.validation import InvalidRequestError

SCALE = int(os.environ.get("PINRANK_FUZZ_EXAMPLES", "0")) or None
REQ_TS = 1_767_225_600_000
ITEMS = np.arange(1, 61, dtype=np.int64) * 3  # ids 3, 6, ..., 180
USERS = np.arange(100, 120, dtype=np.int64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
REQUIRED = [s.name for s in schema.REQUEST_INPUTS if not s.optional]
HISTORY = ("action_item_ids", "action_types", "action_surfaces", "action_ts_ms")


def budget(n: int) -> Any:
    return settings(max_examples=SCALE or n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def pre() -> Preprocessor:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(USERS.size, schema.USER_EMB_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Preprocessor(ItemVocab(ITEMS), UserSnapshot(USERS, emb, emb.mean(0), {"as_of_ms": 0}))


def check_contract(res: Any, raw: dict[str, np.ndarray]) -> None:
    """Everything the ranker and postprocess rely on."""
    r, p = res.ranker_inputs, res.passthrough
    assert set(r) == {s.name for s in schema.RANKER_INPUTS}
    assert set(p) == {s.name for s in schema.PASSTHROUGH}
    for s in schema.RANKER_INPUTS + schema.PASSTHROUGH:
        arr = {**r, **p}[s.name]
        assert isinstance(arr, np.ndarray) and arr.dtype == np.dtype(s.dtype), (s.name, arr.dtype)
        assert arr.ndim == len(s.shape) and all(d in (-1, g) for d, g in zip(s.shape, arr.shape)), (s.name, arr.shape)
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all(), s.name
    n = r["cand_idx"].shape[0]
    assert 1 <= n <= schema.MAX_CANDIDATES
    assert p["pp_candidate_ids"].shape == (n,)
    assert np.unique(p["pp_candidate_ids"]).size == n  # each item ranked once
    assert 1 <= int(p["pp_top_k"][0]) <= n
    table = len(ITEMS) + 1
    for name in ("cand_idx", "seq_item_idx"):
        assert ((r[name] >= 0) & (r[name] < table)).all(), name
    assert ((r["seq_action"] >= 0) & (r["seq_action"] < schema.NUM_ACTION_IDS)).all()
    assert ((r["seq_surface"] >= 0) & (r["seq_surface"] < schema.NUM_SURFACE_IDS)).all()
    assert (r["seq_age_h"] >= 0).all()
    assert res.unknown_user or np.isclose(np.linalg.norm(r["user_emb"]), 1.0, atol=1e-3)
    # Padding is a suffix: real actions first (newest first), then zeros.
    real = int((r["seq_action"] > 0).sum())
    assert real == min(schema.REALTIME_SEQ_LEN, raw["action_types"].shape[0])
    assert (r["seq_action"][:real] > 0).all() and (r["seq_action"][real:] == 0).all()
    assert res.unknown_items == int((r["cand_idx"] == 0).sum())
    assert res.duplicate_candidates == raw["candidate_ids"].shape[0] - n


def run(pre: Preprocessor, raw: dict[str, Any]) -> Any:
    """The property: a result that meets the contract, or InvalidRequestError with a message."""
    try:
        res = pre(raw)
    except InvalidRequestError as exc:
        assert isinstance(exc, ValueError) and str(exc).strip()
        return None
    check_contract(res, {k: np.asarray(v) for k, v in raw.items()})
    return res


# --- 1. anything at all ------------------------------------------------------------------

EDGES = [0, 1, -1, 2, 3, 7, 100, schema.MIN_TS_MS, schema.MAX_TS_MS, REQ_TS, REQ_TS - MS_PER_HOUR,
         schema.MAX_CANDIDATES, INT64_MAX, INT64_MIN, INT64_MAX - 1]
DTYPES = [np.int64, np.int64, np.int64, np.int32, np.uint64, np.int8, np.float64, np.float32, np.bool_]


@st.composite
def any_array(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.one_of(st.tuples(st.integers(0, 6)), st.just((1,)), st.just(()),
                           st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 1200))))
    if dtype.kind == "i" and dtype.itemsize == 8:
        elements = st.one_of(st.sampled_from(EDGES), st.integers(INT64_MIN, INT64_MAX), st.integers(0, 200))
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@given(raw=st.dictionaries(st.sampled_from([s.name for s in schema.REQUEST_INPUTS] + ["bogus"]), any_array(),
                           max_size=9))
@budget(200)
def test_any_input_is_served_by_contract_or_rejected_clearly(pre, raw):
    run(pre, raw)


@given(raw=st.fixed_dictionaries({name: any_array() for name in REQUIRED},
                                 optional={"top_k": any_array()}))
@budget(200)
def test_every_field_present_but_anything_in_it(pre, raw):
    run(pre, raw)


# --- 2. plausible requests, edge values --------------------------------------------------


@st.composite
def plausible(draw: st.DrawFn) -> dict[str, np.ndarray]:
    req_ts = draw(st.one_of(st.just(REQ_TS), st.integers(schema.MIN_TS_MS + 400 * 24 * MS_PER_HOUR, schema.MAX_TS_MS)))
    pool = st.one_of(st.sampled_from(ITEMS.tolist()), st.integers(0, 10**12), st.just(0), st.just(INT64_MAX))
    n = draw(st.one_of(st.integers(1, 12), st.integers(1, schema.MAX_CANDIDATES)))
    if n > 12:  # long lists: built, not drawn one by one (hypothesis caps a draw's size)
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        cands = rng.choice(np.concatenate([ITEMS, np.arange(10**6, 10**6 + 2000)]), size=n)
    else:
        cands = np.asarray(draw(st.lists(pool, min_size=n, max_size=n)), dtype=np.int64)
    length = draw(st.one_of(st.integers(0, 5), st.integers(0, 2 * schema.REALTIME_SEQ_LEN),
                            st.just(schema.MAX_REQUEST_ACTIONS)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    oldest = max(schema.MIN_TS_MS, req_ts - 400 * 24 * MS_PER_HOUR)
    ts = rng.integers(oldest, req_ts + schema.MAX_FUTURE_SKEW_MS + 1, size=length)
    if length and draw(st.booleans()):
        ts[:] = ts[0]  # simultaneous actions: order must still be deterministic
    req = {
        "user_id": np.asarray([draw(st.one_of(st.sampled_from(USERS.tolist()), st.integers(0, INT64_MAX)))]),
        "candidate_ids": cands,
        "action_item_ids": rng.choice(np.concatenate([ITEMS, [0, 10**9]]), size=length),
        "action_types": rng.integers(1, schema.NUM_ACTION_IDS, size=length),
        "action_surfaces": rng.integers(0, schema.NUM_SURFACE_IDS, size=length),
        "action_ts_ms": ts,
        "request_ts_ms": np.asarray([req_ts]),
    }
    top_k = draw(st.one_of(st.none(), st.integers(1, 3 * schema.MAX_CANDIDATES), st.just(INT64_MAX)))
    if top_k is not None:
        req["top_k"] = np.asarray([top_k])
    return {k: np.asarray(v, dtype=np.int64) for k, v in req.items()}


@given(raw=plausible())
@budget(150)
def test_plausible_requests_are_always_served(pre, raw):
    res = run(pre, raw)
    assert res is not None, "a plausible request was rejected"
    unique = unique_in_order(raw["candidate_ids"])
    np.testing.assert_array_equal(res.passthrough["pp_candidate_ids"], unique)
    np.testing.assert_array_equal(res.ranker_inputs["cand_idx"], pre.vocab.lookup(unique))
    k = int(raw["top_k"][0]) if "top_k" in raw else schema.DEFAULT_TOP_K
    assert int(res.passthrough["pp_top_k"][0]) == min(k, unique.size)
    known = bool(np.isin(raw["user_id"], USERS)[0])
    assert res.unknown_user == (not known)
    assert res.ranker_inputs["context"][schema.CONTEXT_FEATURES.index("user_known")] == float(known)


# --- 3. one defect in an otherwise good request ----------------------------------------------


def _set(name: str, value: Any) -> Any:
    return lambda r: {**r, name: np.asarray(value)}


def _history_len(n: int) -> Any:
    def edit(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**r, **{h: np.resize(r[h], n) if r[h].size else np.ones(n, np.int64) for h in HISTORY},
                "action_ts_ms": np.full(n, int(r["request_ts_ms"][0]) - 1, np.int64),
                "action_types": np.ones(n, np.int64)}
    return edit


DEFECTS: dict[str, Any] = {
    "negative candidate": lambda r: {**r, "candidate_ids": np.append(r["candidate_ids"], -1)},
    "no candidates": _set("candidate_ids", np.zeros(0, np.int64)),
    "too many candidates": _set("candidate_ids", np.arange(1, schema.MAX_CANDIDATES + 2)),
    "float candidates": lambda r: {**r, "candidate_ids": r["candidate_ids"].astype(np.float64) + 0.5},
    "2-D candidates": lambda r: {**r, "candidate_ids": r["candidate_ids"][None, :]},
    "unequal history": lambda r: {**r, "action_types": np.append(r["action_types"], 1)},
    "too many actions": _history_len(schema.MAX_REQUEST_ACTIONS + 1),
    "action type 0": lambda r: {**r, "action_types": np.zeros_like(r["action_types"])} if r["action_types"].size
    else {**_history_len(1)(r), "action_types": np.zeros(1, np.int64)},
    "surface out of range": lambda r: {**_history_len(3)(r), "action_surfaces": np.full(3, schema.NUM_SURFACE_IDS)},
    "request ts in seconds": lambda r: {**r, "request_ts_ms": r["request_ts_ms"] // 1000},
    "request ts far future": _set("request_ts_ms", [schema.MAX_TS_MS + 1]),
    "action ts negative": lambda r: {**_history_len(2)(r), "action_ts_ms": np.asarray([-1, -2])},
    "action after request": lambda r: {**_history_len(2)(r), "action_ts_ms": np.full(
        2, int(r["request_ts_ms"][0]) + schema.MAX_FUTURE_SKEW_MS + 1)},
    "top_k zero": _set("top_k", [0]),
    "top_k negative": _set("top_k", [INT64_MIN]),
    "negative user": _set("user_id", [-5]),
    "two users": _set("user_id", [1, 2]),
    "no user": lambda r: {k: v for k, v in r.items() if k != "user_id"},
    "no request time": lambda r: {k: v for k, v in r.items() if k != "request_ts_ms"},
    "unknown field": lambda r: {**r, "user": np.asarray([1])},
    "string ids": _set("candidate_ids", ["7", "14"]),
    "ragged ids": lambda r: {**r, "candidate_ids": [[1, 2], [3]]},
}


@given(raw=plausible(), defect=st.sampled_from(sorted(DEFECTS)))
@budget(150)
def test_one_defect_is_always_rejected_with_a_message(pre, raw, defect):
    bad = DEFECTS[defect](raw)
    with pytest.raises(InvalidRequestError) as err:
        pre(bad)
    assert str(err.value).strip()
