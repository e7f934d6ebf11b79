"""The step models' input checks (pinrank.backend.step_inputs), in-process:
every valid feed preprocessing can produce passes, every bad one is refused
with a message naming the input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.backend.featurize import context_features, featurize_history
from pinrank.backend.postprocess import top_k
from pinrank.backend.ranker_runtime import manifest_num_items, zero_feed
from pinrank.backend.step_inputs import (
    MAX_ABS_USER_EMB,
    MAX_AGE_H,
    StepInputError,
    check_names,
    check_postprocess,
    check_probs,
    check_ranker_feed,
    request_arrays,
)

NUM_ITEMS = 150


def _feed(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """A feed as preprocessing builds it: real featurization of a random history."""
    rng = np.random.default_rng(seed)
    now = 1_700_000_000_000
    h = 30
    seq = featurize_history(rng.integers(0, NUM_ITEMS + 1, h), rng.integers(1, schema.NUM_ACTION_IDS, h),
                            rng.integers(0, schema.NUM_SURFACE_IDS, h), now - rng.integers(0, 10**9, h), now)
    return {
        "cand_idx": rng.integers(0, NUM_ITEMS + 1, n).astype(np.int64),
        "user_emb": rng.normal(size=schema.USER_EMB_DIM).astype(np.float32),
        **seq,
        "context": context_features(now, h, True),
    }


def _postprocess_inputs(n: int = 5, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.random.default_rng(0).uniform(size=(n, schema.NUM_HEADS)).astype(np.float32)
    return probs, np.arange(100, 100 + n, dtype=np.int64), np.asarray([k], dtype=np.int64)


# --- names -------------------------------------------------------------------


def test_exact_names_pass():
    check_names(["a", "b"], ["a", "b"])
    check_names(["a"], (), ["a", "b"])


@pytest.mark.parametrize("names,problem", [
    (["a", "a", "b"], "more than once"),
    (["a", "b", "c"], "unknown input"),
    (["a", "b", "a\x00zzz"], "unknown input"),
    (["a"], "missing input"),
])
def test_names_must_match_exactly(names, problem):
    with pytest.raises(StepInputError, match=problem):
        check_names(names, ["a", "b"])


def test_unknown_names_are_shown_escaped():
    with pytest.raises(StepInputError, match=r"unknown input\(s\) 'a\\x00zzz'; expected \['a'\]"):
        check_names(["a\x00zzz"], ["a"], [])


class _Tensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self._name, self._value = name, value

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._value


class _Request:
    """The two methods of pb_utils.InferenceRequest that request_arrays uses."""

    def __init__(self, tensors: list[_Tensor]) -> None:
        self._tensors = tensors

    def inputs(self) -> list[_Tensor]:
        return self._tensors


def test_request_arrays_keys_by_exact_name_and_refuses_duplicates():
    one = np.ones(1, np.int64)
    assert set(request_arrays(_Request([_Tensor("a", one), _Tensor("b", one)]), ["a", "b"])) == {"a", "b"}
    with pytest.raises(StepInputError, match="'a'.*more than once"):
        request_arrays(_Request([_Tensor("a", one), _Tensor("a", one * 2)]), ["a"])


# --- ranker --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, schema.MAX_CANDIDATES])
def test_featurized_and_zero_feeds_pass(n):
    assert check_ranker_feed(_feed(n), NUM_ITEMS) == n
    assert check_ranker_feed(zero_feed(n), NUM_ITEMS) == n


def test_edge_indices_pass():
    feed = _feed()
    feed["cand_idx"][:] = NUM_ITEMS  # the last table row
    feed["seq_action"][:] = schema.NUM_ACTION_IDS - 1
    feed["seq_surface"][:] = schema.NUM_SURFACE_IDS - 1
    check_ranker_feed(feed, NUM_ITEMS)


def _set(name: str, index: int, value: float) -> dict[str, np.ndarray]:
    feed = _feed()
    feed[name] = feed[name].copy()
    feed[name][index] = value
    return feed


@pytest.mark.parametrize("feed,name,problem", [
    ({**_feed(), "cand_idx": np.zeros(200_000, np.int64)}, "cand_idx", "200000 candidates"),
    ({**_feed(), "cand_idx": np.zeros(0, np.int64)}, "cand_idx", "0 candidates"),
    (_set("cand_idx", 2, -1), "cand_idx", "holds -1"),
    (_set("cand_idx", 0, NUM_ITEMS + 1), "cand_idx", f"holds {NUM_ITEMS + 1}"),
    (_set("seq_item_idx", 3, -7), "seq_item_idx", "holds -7"),
    (_set("seq_item_idx", 3, 2**40), "seq_item_idx", "valid indices are 0..150"),
    (_set("seq_action", 0, schema.NUM_ACTION_IDS), "seq_action", "valid indices"),
    (_set("seq_action", 0, -1), "seq_action", "holds -1"),
    (_set("seq_surface", 9, -3), "seq_surface", "holds -3"),
    (_set("seq_surface", 9, schema.NUM_SURFACE_IDS), "seq_surface", "valid indices"),
    (_set("user_emb", 0, np.inf), "user_emb", "non-finite"),
    (_set("user_emb", 5, np.nan), "user_emb", "non-finite"),
    (_set("context", 1, np.nan), "context", "non-finite"),
    (_set("context", 1, 7.0), "context", r"must be in \[-1, 1\]"),
    (_set("seq_age_h", 4, -np.inf), "seq_age_h", "non-finite"),
    (_set("seq_age_h", 4, -2.0), "seq_age_h", r"must be in \[0, "),
    (_set("seq_age_h", 4, MAX_AGE_H * 2), "seq_age_h", r"must be in \[0, "),
    (_set("user_emb", 3, MAX_ABS_USER_EMB * 10), "user_emb", "must be in"),
    (_set("user_emb", 3, -MAX_ABS_USER_EMB * 10), "user_emb", "must be in"),
    ({**_feed(), "user_emb": np.zeros(schema.USER_EMB_DIM + 1, np.float32)}, "user_emb", "shape"),
    ({**_feed(), "seq_action": np.zeros((2, schema.REALTIME_SEQ_LEN), np.int64)}, "seq_action", "shape"),
    ({**_feed(), "context": np.zeros(schema.CONTEXT_DIM, np.float64)}, "context", "must be float32"),
    ({**_feed(), "cand_idx": np.zeros((5, 2), np.int64)}, "cand_idx", "shape"),
])
def test_bad_ranker_feeds_are_refused_naming_the_input(feed, name, problem):
    with pytest.raises(StepInputError, match=problem) as info:
        check_ranker_feed(feed, NUM_ITEMS)
    assert str(info.value).startswith(name)


def test_probs_must_be_finite_probabilities():
    probs = _postprocess_inputs()[0]
    assert check_probs("probs", probs) == probs.shape[0]
    for bad in (np.nan, np.inf, -0.01, 1.01):
        p = probs.copy()
        p[1, 2] = bad
        with pytest.raises(StepInputError, match="probs"):
            check_probs("probs", p)


# --- postprocess ---------------------------------------------------------------


def test_valid_postprocess_inputs_pass_and_k_is_clamped_to_n():
    probs, ids, k = _postprocess_inputs(5, 3)
    assert check_postprocess(probs, ids, k) == 3
    assert check_postprocess(probs, ids, np.asarray([schema.MAX_CANDIDATES], np.int64)) == 5


@pytest.mark.parametrize("change,name,problem", [
    (lambda p, i, k: (p, i, np.asarray([0], np.int64)), "pp_top_k", "got 0"),
    (lambda p, i, k: (p, i, np.asarray([-5], np.int64)), "pp_top_k", "got -5"),
    (lambda p, i, k: (p, i, np.asarray([schema.MAX_CANDIDATES + 1], np.int64)), "pp_top_k", "MAX_CANDIDATES"),
    (lambda p, i, k: (p, i, np.asarray([1, 2], np.int64)), "pp_top_k", "shape"),
    (lambda p, i, k: (p[:3], i, k), "probs", "3 rows but pp_candidate_ids has 5"),
    (lambda p, i, k: (np.full_like(p, np.nan), i, k), "probs", "non-finite"),
    (lambda p, i, k: (p * 3, i, k), "probs", r"\[0, 1\]"),
    (lambda p, i, k: (p, -i, k), "pp_candidate_ids", "non-negative"),
    (lambda p, i, k: (np.zeros((200_000, 4), np.float32), np.zeros(200_000, np.int64), k),
     "pp_candidate_ids", "200000 candidates"),
])
def test_bad_postprocess_inputs_are_refused_naming_the_input(change, name, problem):
    with pytest.raises(StepInputError, match=problem) as info:
        check_postprocess(*change(*_postprocess_inputs()))
    assert str(info.value).startswith(name)


def test_top_k_refuses_k_below_one():
    probs, ids, _ = _postprocess_inputs()
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        top_k(ids, probs, 0)


# --- the item count the ranker checks against --------------------------------


def test_manifest_num_items(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"num_items": 42}))
    assert manifest_num_items(tmp_path) == 42
    (tmp_path / "manifest.json").write_text(json.dumps({"num_items": "42"}))
    with pytest.raises(ValueError, match="positive integer"):
        manifest_num_items(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="re-export"):
        manifest_num_items(tmp_path)
