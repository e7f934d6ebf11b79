"""Request building, validation messages and response parsing (no server)."""

import dataclasses
import inspect
import json
import time

import numpy as np
import pytest

from pinrank_client import (
    Action,
    ActionHistory,
    AsyncRankingClient,
    InvalidRequestError,
    PinrankError,
    RankedItem,
    RankingClient,
    RankRequest,
    RankResponse,
    ServerError,
    schema,
    validation,
)

NOW = 1_718_000_000_000


def act(item=7, action="save", ts=NOW - 60_000, surface="home"):
    return Action(item, action, ts, surface)


def request(**kw):
    args = dict(user_id=42, candidate_ids=[101, 102, 103], actions=[act()], request_ts_ms=NOW)
    args.update(kw)
    return RankRequest(**args)


# --- Action ------------------------------------------------------------------


def test_action_accepts_names_and_ids_and_stores_ids():
    a = Action(7, "save", NOW, "search")
    assert (a.action, a.surface) == (schema.ACTION_IDS["save"], schema.SURFACE_IDS["search"])
    assert (a.action_name, a.surface_name) == ("save", "search")
    assert Action(7, schema.ACTION_IDS["save"], NOW, schema.SURFACE_IDS["search"]) == a
    assert Action(7, "SAVE", NOW, " Search ") == a  # case/space-insensitive names
    assert Action(7, "click", NOW).surface == 0 and Action(7, "click", NOW).surface_name is None


def test_unknown_action_name_lists_valid_ones():
    with pytest.raises(InvalidRequestError) as info:
        Action(7, "like", NOW)
    for name in schema.ACTIONS:
        assert name in str(info.value)
    assert "'like'" in str(info.value)


def test_unknown_surface_name_lists_valid_ones():
    with pytest.raises(InvalidRequestError, match="unknown surface 'feed'.*home, search, related, profile"):
        Action(7, "save", NOW, "feed")


@pytest.mark.parametrize("bad", [1.5, "7", None, True])
def test_action_item_id_must_be_integer(bad):
    with pytest.raises(InvalidRequestError, match="item_id must be an integer"):
        Action(bad, "save", NOW)


def test_actions_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        act().item_id = 3  # type: ignore[misc]


# --- RankRequest: building -------------------------------------------------------


def test_to_arrays_follows_the_schema():
    arrays = request(top_k=2).to_arrays()
    assert list(arrays) == [s.name for s in schema.REQUEST_INPUTS]
    for s in schema.REQUEST_INPUTS:
        assert arrays[s.name].dtype == np.dtype(s.dtype), s.name
        if s.shape == (1,):
            assert arrays[s.name].shape == (1,)
    assert arrays["candidate_ids"].tolist() == [101, 102, 103]
    assert arrays["action_types"].tolist() == [schema.ACTION_IDS["save"]]
    assert arrays["action_surfaces"].tolist() == [schema.SURFACE_IDS["home"]]
    assert arrays["top_k"].tolist() == [2]


def test_optional_top_k_is_omitted_when_unset():
    arrays = request().to_arrays()
    optional = {s.name for s in schema.REQUEST_INPUTS if s.optional}
    assert optional and not optional & set(arrays)
    assert set(arrays) == {s.name for s in schema.REQUEST_INPUTS if not s.optional}


def test_to_arrays_passes_the_shared_validator():
    arrays = request(top_k=5).to_arrays()
    checked = validation.validate_request(arrays)
    assert all(np.array_equal(checked[k], arrays[k]) for k in arrays)


def test_request_ts_defaults_to_now_and_is_fixed():
    before = int(time.time() * 1000)
    req = RankRequest(1, [1])
    after = int(time.time() * 1000)
    assert before <= req.request_ts_ms <= after
    assert req.to_arrays()["request_ts_ms"][0] == req.request_ts_ms


def test_arrays_are_read_only_copies():
    cands = np.array([5, 6, 7])
    req = RankRequest(1, cands, request_ts_ms=NOW)
    cands[0] = 99  # the caller reusing its buffer must not change the request
    assert req.candidate_ids.tolist() == [5, 6, 7]
    with pytest.raises(ValueError):
        req.to_arrays()["candidate_ids"][0] = 1


def test_from_arrays_matches_object_form():
    by_objects = request(top_k=2)
    by_arrays = RankRequest.from_arrays(
        42,
        np.array([101, 102, 103]),
        action_item_ids=np.array([7]),
        action_types=np.array([schema.ACTION_IDS["save"]]),
        action_ts_ms=np.array([NOW - 60_000]),
        action_surfaces=np.array([schema.SURFACE_IDS["home"]]),
        request_ts_ms=NOW,
        top_k=2,
    )
    assert by_arrays == by_objects
    assert list(by_arrays.actions) == [act()]


def test_from_arrays_accepts_names_in_type_columns_and_default_surfaces():
    req = RankRequest.from_arrays(
        1,
        [1, 2],
        action_item_ids=[3, 4],
        action_types=["save", "click"],
        action_ts_ms=[NOW - 2, NOW - 1],
        request_ts_ms=NOW,
    )
    assert req.actions.types.tolist() == [schema.ACTION_IDS["save"], schema.ACTION_IDS["click"]]
    assert req.actions.surfaces.tolist() == [0, 0]


def test_action_history_is_a_sequence_of_actions():
    history = ActionHistory.from_actions([act(1), act(2, "click", surface=0)])
    assert len(history) == 2
    assert history[1] == Action(2, "click", NOW - 60_000)
    assert list(history[:1]) == [act(1)]
    assert [a.item_id for a in history] == [1, 2]


def test_dict_round_trip_and_replace():
    req = request(top_k=3)
    assert RankRequest.from_dict(req.to_dict()) == req
    assert req.to_dict()["actions"][0] == {"item_id": 7, "action": "save", "ts_ms": NOW - 60_000, "surface": "home"}
    smaller = dataclasses.replace(req, top_k=1)
    assert smaller.top_k == 1 and smaller.candidate_ids.tolist() == req.candidate_ids.tolist()
    with pytest.raises(InvalidRequestError, match="top_k must be >= 1"):
        dataclasses.replace(req, top_k=0)


def test_from_dict_with_columns():
    req = RankRequest.from_dict(
        {
            "user_id": 1,
            "candidate_ids": [9],
            "action_item_ids": [3],
            "action_types": ["hide"],
            "action_ts_ms": [NOW - 5],
            "request_ts_ms": NOW,
        }
    )
    assert req.actions.types.tolist() == [schema.ACTION_IDS["hide"]]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"user_id": 1, "candidate_ids": [1], "actons": []}, r"unknown request field\(s\) \['actons'\]"),
        ({"candidate_ids": [1]}, "'user_id' is missing"),
        ({"user_id": 1, "candidate_ids": [1], "actions": [], "action_types": []}, "not both"),
        (
            {"user_id": 1, "candidate_ids": [1], "actions": [{"item_id": 1, "ts_ms": NOW}]},
            r"actions\[0\]: missing \['action'\]",
        ),
        ({"user_id": 1, "candidate_ids": [1], "actions": [[1, "save", NOW]]}, r"actions\[0\] must be an object"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_from_dict_errors(data, message):
    with pytest.raises(InvalidRequestError, match=message):
        RankRequest.from_dict(data)


# --- RankRequest: validation messages ------------------------------------------


def test_empty_candidates():
    with pytest.raises(InvalidRequestError, match="candidate_ids is empty: send at least one candidate"):
        request(candidate_ids=[])


def test_too_many_candidates():
    n = schema.MAX_CANDIDATES + 1
    with pytest.raises(InvalidRequestError, match=f"too many candidates: {n} > MAX_CANDIDATES={schema.MAX_CANDIDATES}"):
        request(candidate_ids=np.arange(n))
    assert request(candidate_ids=np.arange(schema.MAX_CANDIDATES)).num_candidates == schema.MAX_CANDIDATES


def test_unequal_action_lengths_name_each_column():
    with pytest.raises(InvalidRequestError, match="action arrays must have equal lengths") as info:
        RankRequest.from_arrays(1, [1], action_item_ids=[1, 2], action_types=[1], action_ts_ms=[NOW, NOW])
    assert "'action_item_ids': 2" in str(info.value) and "'action_types': 1" in str(info.value)


def test_bad_action_name_via_arrays():
    with pytest.raises(InvalidRequestError, match="unknown action 'like'"):
        RankRequest.from_arrays(1, [1], action_item_ids=[1], action_types=["like"], action_ts_ms=[NOW])


def test_out_of_range_action_id():
    with pytest.raises(InvalidRequestError, match="action_types holds 99"):
        request(actions=[Action(1, 99, NOW - 1)])


def test_timestamps_in_seconds_are_rejected():
    with pytest.raises(InvalidRequestError, match="not unix milliseconds"):
        request(actions=[Action(1, "save", NOW // 1000)])


def test_request_ts_must_be_milliseconds():
    with pytest.raises(InvalidRequestError, match="request_ts_ms=1718000000 is not a plausible unix time"):
        request(request_ts_ms=NOW // 1000)


def test_actions_after_the_request_are_rejected():
    with pytest.raises(InvalidRequestError, match="after request_ts_ms"):
        request(actions=[Action(1, "save", NOW + schema.MAX_FUTURE_SKEW_MS + 1)])
    request(actions=[Action(1, "save", NOW + schema.MAX_FUTURE_SKEW_MS)])  # skew allowance


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(user_id="42"), "user_id must be an integer"),
        (dict(candidate_ids=[1.5]), "candidate_ids must hold integers"),
        (dict(candidate_ids=[[1, 2]]), "candidate_ids must be 1-D"),
        (dict(candidate_ids=[-1]), "candidate_ids must be non-negative"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(actions=["save"]), "actions must be Action objects"),
    ],
)
def test_other_field_errors(kw, message):
    with pytest.raises(InvalidRequestError, match=message):
        request(**kw)


def test_invalid_request_is_caught_by_every_relevant_base():
    for base in (InvalidRequestError, validation.InvalidRequestError, PinrankError, ValueError):
        with pytest.raises(base):
            request(candidate_ids=[])


# --- RankResponse ----------------------------------------------------------------


def outputs(k=3):
    return {
        "item_ids": np.array([30, 10, 20][:k], dtype=np.int64),
        "scores": np.array([0.9, 0.5, 0.1][:k], dtype=np.float32),
        "head_probs": np.arange(k * schema.NUM_HEADS, dtype=np.float32).reshape(k, schema.NUM_HEADS) / 100,
    }


def test_response_from_arrays():
    resp = RankResponse.from_arrays(outputs(), model_name="pinrank", model_version="3", latency_ms=1.5)
    assert resp.item_ids == [30, 10, 20] and len(resp) == 3
    first = resp.items[0]
    assert isinstance(first, RankedItem) and first.item_id == 30
    assert first.utility == pytest.approx(0.9)
    assert list(first.head_probs) == list(schema.HEADS)
    assert first.head_probs[schema.HEADS[1]] == pytest.approx(0.01)
    assert (resp.model_name, resp.model_version, resp.latency_ms) == ("pinrank", "3", 1.5)
    assert isinstance(first.utility, float) and isinstance(first.item_id, int)


def test_response_to_dict_is_json_ready():
    d = RankResponse.from_arrays(outputs(1), latency_ms=2.0).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["items"][0] == {
        "rank": 1,
        "item_id": 30,
        "utility": 0.9,  # shortest float32 repr, not 0.8999999761581421
        "head_probs": dict(zip(schema.HEADS, [0.0, 0.01, 0.02, 0.03])),
    }
    assert d["heads"] == list(schema.HEADS)


def test_empty_response_is_fine():
    assert len(RankResponse.from_arrays(outputs(0))) == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.pop("scores"), r"missing output\(s\) \['scores'\]"),
        (lambda o: o.update(scores=np.zeros(2, np.float32)), "malformed response"),
        (lambda o: o.update(head_probs=np.zeros((3, 2), np.float32)), "malformed response"),
        (lambda o: o.update(item_ids=np.zeros((3, 1), np.int64)), "malformed response"),
    ],
)
def test_malformed_response_is_a_server_error(mutate, message):
    out = outputs()
    mutate(out)
    with pytest.raises(ServerError, match=message):
        RankResponse.from_arrays(out)


def test_validation_can_be_left_to_the_server():
    too_many = range(schema.MAX_CANDIDATES + 1)
    with pytest.raises(InvalidRequestError, match="too many candidates"):
        RankRequest(1, too_many, request_ts_ms=NOW)
    lax = RankRequest(1, too_many, request_ts_ms=NOW, validate=False)
    arrays = lax.to_arrays()
    assert arrays["candidate_ids"].shape == (schema.MAX_CANDIDATES + 1,)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.int64)}
    assert RankRequest.from_dict({"user_id": 1, "candidate_ids": []}, validate=False).num_candidates == 0
    assert RankRequest.from_arrays(1, [1], action_types=[99], action_item_ids=[1], action_ts_ms=[1],
                                   validate=False).to_arrays()["action_types"].tolist() == [99]
    # Types are always checked: a float id cannot even be encoded as INT64.
    with pytest.raises(InvalidRequestError, match="must hold integers"):
        RankRequest(1, [1.5], validate=False)
    # replace() goes through __init__ with validate=True: it re-validates.
    with pytest.raises(InvalidRequestError, match="too many candidates"):
        dataclasses.replace(lax, top_k=3)


def test_response_says_where_it_came_from():
    resp = RankResponse.from_arrays(outputs(2), url="grpc://a:1", attempts=2)
    assert (resp.url, resp.attempts) == ("grpc://a:1", 2)
    d = resp.to_dict()
    assert (d["url"], d["attempts"]) == ("grpc://a:1", 2)
    assert RankResponse.from_arrays(outputs(1)).attempts == 1


def test_rank_and_rank_request_take_the_same_arguments_the_same_way():
    """Positionally: user, candidates, actions; top_k and request_ts_ms by keyword
    only, so the two can never read one another's positional order."""
    def shape(fn):
        params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "timeout_s",
                                                                                          "validate")]
        return [(p.name, p.kind) for p in params]

    expected = shape(RankRequest.__init__)
    assert [name for name, _ in expected] == ["user_id", "candidate_ids", "actions", "top_k", "request_ts_ms"]
    assert shape(RankingClient.rank) == expected and shape(AsyncRankingClient.rank) == expected
    with pytest.raises(TypeError):
        RankRequest(1, [1], [], 5)  # type: ignore[misc]
