import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.backend.preprocess import Preprocessor
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank_client.validation import InvalidRequestError

REQ = 1_767_225_600_000


@pytest.fixture()
def pre():
    emb = np.eye(3, schema.USER_EMB_DIM, dtype=np.float32)
    snap = UserSnapshot(np.array([10, 20, 30]), emb, np.full(schema.USER_EMB_DIM, 0.5, np.float32), {"as_of_ms": 0})
    return Preprocessor(ItemVocab(np.array([100, 200, 300])), snap)


def request(**over):
    req = {
        "user_id": [20], "candidate_ids": [300, 100, 999], "action_item_ids": [200, 555],
        "action_types": [schema.ACTION_IDS["save"], schema.ACTION_IDS["hide"]], "action_surfaces": [1, 0],
        "action_ts_ms": [REQ - 3_600_000, REQ - 60_000], "request_ts_ms": [REQ],
    }
    req.update(over)
    return {k: np.asarray(v, dtype=np.int64) for k, v in req.items()}


def test_lookups_and_passthrough(pre):
    res = pre(request())
    r = res.ranker_inputs
    assert r["cand_idx"].tolist() == [3, 1, 0]  # 999 is unknown -> OOV index 0
    assert res.unknown_items == 1 and not res.unknown_user
    assert np.array_equal(r["user_emb"], np.eye(3, schema.USER_EMB_DIM, dtype=np.float32)[1])
    assert r["seq_item_idx"][:2].tolist() == [0, 2]  # newest (unknown 555) first
    assert res.passthrough["pp_top_k"].tolist() == [3]  # default top_k capped at N
    for s in schema.RANKER_INPUTS:
        assert r[s.name].dtype == np.dtype(s.dtype)
        assert all(d == -1 or d == got for d, got in zip(s.shape, r[s.name].shape))


def test_unknown_user_gets_cold_start(pre):
    res = pre(request(user_id=[12345]))
    assert res.unknown_user
    assert np.allclose(res.ranker_inputs["user_emb"], 0.5)
    assert res.ranker_inputs["context"][schema.CONTEXT_FEATURES.index("user_known")] == 0.0


@pytest.mark.parametrize(
    "over, message",
    [
        ({"candidate_ids": []}, "candidate_ids is empty"),
        ({"candidate_ids": list(range(schema.MAX_CANDIDATES + 1))}, "too many candidates"),
        ({"action_types": [1]}, "equal lengths"),
        ({"action_types": [1, 99]}, "action_types holds 99"),
        ({"action_surfaces": [1, 9]}, "action_surfaces must be"),
        ({"request_ts_ms": [5]}, "request_ts_ms=5"),
        ({"action_ts_ms": [REQ, REQ + 3_600_000]}, "after request_ts_ms"),
        ({"user_id": [1, 2]}, "exactly one element"),
        ({"top_k": [0]}, "top_k must be >= 1"),
    ],
)
def test_bad_requests_say_what_is_wrong(pre, over, message):
    with pytest.raises(InvalidRequestError, match=message):
        pre(request(**over))
