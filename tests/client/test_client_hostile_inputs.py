"""Hostile and careless input to the SDK (issue 16, row 9), no server: every
failure is a PinrankError subclass whose message names the field or the URL
problem, raised before anything is sent, and nothing out of range is
silently changed into another value."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner

from pinrank_client import (
    Action,
    ActionHistory,
    AsyncRankingClient,
    InvalidArgumentError,
    InvalidRequestError,
    PinrankError,
    RankingClient,
    RankRequest,
    RankResponse,
    RetryPolicy,
    ServerError,
    admin_headers,
    cli,
    parse_url,
    schema,
)
from pinrank_client._args import MAX_SECONDS
from pinrank_client._retry import EndpointPool

NOW = 1_718_000_000_000
BIG = [2**63, 2**64, 2**70, -(2**63) - 1]


def raises(cls: type[PinrankError], *needles: str) -> Callable[[Callable[[], object]], PinrankError]:
    """Call the thunk; it must raise `cls` (a PinrankError) whose message holds every needle."""

    def check(thunk: Callable[[], object]) -> PinrankError:
        with pytest.raises(cls) as info:
            thunk()
        assert isinstance(info.value, PinrankError)
        for needle in needles:
            assert needle in str(info.value), (needle, str(info.value))
        return info.value

    return check


class NoNetwork:
    """A client whose transports must never be made: the checks come first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(*_: Any) -> Any:
            raise AssertionError("the SDK went to the network with a bad argument")

        monkeypatch.setattr(RankingClient, "_make_transport", refuse)
        monkeypatch.setattr(AsyncRankingClient, "_make_transport", refuse)


# --- integers: int64 range, bools, floats ---------------------------------------------------


@pytest.mark.parametrize("value", BIG)
@pytest.mark.parametrize("field", ["user_id", "top_k", "request_ts_ms"])
@pytest.mark.parametrize("validate", [True, False])
def test_scalar_fields_beyond_int64(field, value, validate):
    args: dict[str, Any] = {"user_id": 1, "candidate_ids": [1], "request_ts_ms": NOW, field: value}
    raises(InvalidRequestError, f"{field}={value} does not fit in int64")(
        lambda: RankRequest(**args, validate=validate)
    )


@pytest.mark.parametrize(
    "values",
    [[2**63], [7, 2**63], [7, 2**64], [2**70], [-(2**63) - 1], np.array([7, 2**63], dtype=np.uint64)],
    ids=["2**63", "mixed-2**63", "mixed-2**64", "2**70", "below-min", "uint64"],
)
@pytest.mark.parametrize("validate", [True, False])
def test_candidate_ids_beyond_int64_are_not_wrapped_or_rounded(values, validate):
    # numpy would make [7, 2**63] float64 (2**63 then rounds) and a uint64
    # 2**63 a negative int64: both must be refused, not sent altered.
    raises(InvalidRequestError, "candidate_ids holds values that do not fit in int64")(
        lambda: RankRequest(1, values, request_ts_ms=NOW, validate=validate)
    )


@pytest.mark.parametrize("column", ["item_ids", "types", "ts_ms", "surfaces"])
def test_history_columns_beyond_int64(column):
    cols: dict[str, Any] = {"item_ids": [7], "types": [1], "ts_ms": [NOW - 1], "surfaces": [0], column: [2**64]}
    name = {"item_ids": "action_item_ids", "types": "action_types", "ts_ms": "action_ts_ms",
            "surfaces": "action_surfaces"}[column]
    raises(InvalidRequestError, name, "int64")(lambda: ActionHistory(**cols))


@pytest.mark.parametrize("field, position", [("item_id", 0), ("ts_ms", 2)])
def test_action_fields_beyond_int64(field, position):
    args: list[Any] = [7, "save", NOW]
    args[position] = 2**64
    raises(InvalidRequestError, f"action {field}=18446744073709551616 does not fit in int64")(lambda: Action(*args))


@pytest.mark.parametrize("value", [True, np.bool_(True), 1.0, float("nan"), float("inf"), "1", None])
def test_scalar_fields_take_only_integers(value):
    raises(InvalidRequestError, "user_id must be an integer")(lambda: RankRequest(value, [1], request_ts_ms=NOW))
    if value is not None:  # None is top_k's "server default"
        raises(InvalidRequestError, "top_k must be an integer")(
            lambda: RankRequest(1, [1], request_ts_ms=NOW, top_k=value)
        )


@pytest.mark.parametrize(
    "values, dtype",
    [([True, False], "bool"), ([1.0, float("nan")], "float64"), ([float("inf")], "float64"), (["1"], "<U1")],
)
def test_vectors_take_only_integers(values, dtype):
    raises(InvalidRequestError, "candidate_ids must hold integers", dtype)(
        lambda: RankRequest(1, values, request_ts_ms=NOW)
    )


def test_in_range_extremes_still_pass_without_validation():
    # The type checks reject only what cannot be sent; the contract's limits are the validator's.
    top = np.iinfo(np.int64).max
    req = RankRequest(top, [top, 0], request_ts_ms=NOW, top_k=top, validate=False)
    assert req.to_arrays()["candidate_ids"].tolist() == [top, 0] and req.top_k == top


def test_too_many_candidates_is_refused_not_truncated():
    raises(InvalidRequestError, "too many candidates", str(schema.MAX_CANDIDATES))(
        lambda: RankRequest(1, np.arange(1, 10**6 + 1), request_ts_ms=NOW)
    )


# --- digits outside ASCII ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["²", "٣", "３", "߃", "1_0", "+3", "3.0", "0x3"])
def test_action_and_surface_ids_as_text_are_ascii_digits_only(text):
    # str.isdigit and int() accept "²" (then fail) and "٣" (read as 3).
    raises(InvalidRequestError, f"unknown action {text!r}", "ASCII digits")(lambda: Action(7, text, NOW))
    raises(InvalidRequestError, f"unknown surface {text!r}")(lambda: Action(7, "save", NOW, text))
    raises(InvalidRequestError, f"unknown action {text!r}")(lambda: ActionHistory([7], [text], [NOW]))
    raises(InvalidRequestError, f"unknown action {text!r}")(
        lambda: RankRequest.from_dict(
            {"user_id": 1, "candidate_ids": [1], "request_ts_ms": NOW,
             "actions": [{"item_id": 7, "action": text, "ts_ms": NOW - 1}]}
        )
    )


def test_ascii_digit_ids_still_work():
    assert Action(7, "3", NOW, " 2 ") == Action(7, schema.ACTION_IDS["save"], NOW, schema.SURFACE_IDS["search"])
    raises(InvalidRequestError, "action=99999999999999999999 does not fit in int64")(
        lambda: Action(7, "99999999999999999999", NOW)
    )


# --- shapes of the history --------------------------------------------------------------------


@pytest.mark.parametrize("actions", [5, "save", b"save", {"item_id": 7}, object()])
def test_actions_must_be_a_list_of_actions(actions):
    raises(InvalidRequestError, "actions must be an ActionHistory or a list of Action objects")(
        lambda: RankRequest(1, [1], actions, request_ts_ms=NOW)
    )


@pytest.mark.parametrize("actions", [5, "save", {"item_id": 7}])
def test_request_file_actions_must_be_a_list(actions):
    raises(InvalidRequestError, "request field 'actions' must be a list")(
        lambda: RankRequest.from_dict({"user_id": 1, "candidate_ids": [1], "actions": actions})
    )


def test_ragged_history_columns():
    raises(InvalidRequestError, "action_types must be a 1-D list of integers")(
        lambda: ActionHistory([7, 8], [[1], [1, 2]], [NOW, NOW])
    )


# --- the client's own arguments ---------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [-1, 0, -0.0, float("nan"), float("inf"), -math.inf, MAX_SECONDS * 2, 1e18])
def test_bad_timeouts_at_construction_and_per_call(monkeypatch, timeout_s):
    NoNetwork(monkeypatch)
    check = raises(InvalidArgumentError, "timeout_s must be a finite number of seconds > 0", repr(timeout_s))
    check(lambda: RankingClient("h:1", timeout_s=timeout_s))
    client = RankingClient("h:1")
    check(lambda: client.rank(1, [1], request_ts_ms=NOW, timeout_s=timeout_s))
    check(lambda: client.health(timeout_s=timeout_s))
    check(lambda: client.wait_until_ready(timeout_s))
    check(lambda: client.rank_many([RankRequest(1, [1], request_ts_ms=NOW)], timeout_s=timeout_s))

    async def main() -> None:
        async with AsyncRankingClient("h:1") as aclient:
            await aclient.rank(1, [1], request_ts_ms=NOW, timeout_s=timeout_s)

    check(lambda: asyncio.run(main()))


@pytest.mark.parametrize("timeout_s", [True, "1", None, [1]])
def test_timeouts_must_be_numbers(timeout_s):
    raises(InvalidArgumentError, "timeout_s must be a number of seconds > 0")(
        lambda: RankingClient("h:1", timeout_s=timeout_s)
    )


def test_poll_interval_is_checked(monkeypatch):
    NoNetwork(monkeypatch)
    raises(InvalidArgumentError, "poll_s")(lambda: RankingClient("h:1").wait_until_ready(1, poll_s=-1))


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"retries": -1}, ("retries must be >= 0",)),
        ({"retries": 1.5}, ("retries must be an integer",)),
        ({"retries": True}, ("retries must be an integer",)),
        ({"backoff_s": float("nan")}, ("backoff_s", "finite")),
        ({"max_backoff_s": 1e300}, ("max_backoff_s", "at most")),
        ({"cooldown_s": -1}, ("cooldown_s", ">= 0")),
        ({"cooldown_s": float("inf")}, ("cooldown_s", "finite")),
        ({"max_concurrency": 0}, ("max_concurrency must be >= 1",)),
        ({"max_concurrency": 2.5}, ("max_concurrency must be an integer",)),
        ({"model_name": ""}, ("model_name",)),
        ({"model_name": "../ranker"}, ("model_name", "no spaces or slashes")),
        ({"model_name": "pin rank"}, ("model_name",)),
        ({"model_name": 7}, ("model_name",)),
        ({"model_version": "v1"}, ("model_version", "'v1'")),
        ({"model_version": "٣"}, ("model_version",)),
        ({"model_version": 1.0}, ("model_version",)),
        ({"headers": {"x-key": 1}}, ("headers['x-key'] must be a string",)),
        ({"headers": {"x-key": "v\r\nInjected: 1"}}, ("headers['x-key']", "no line breaks")),
        ({"headers": {"bad key": "v"}}, ("'bad key' is not a valid header name",)),
        ({"headers": {"": "v"}}, ("is not a valid header name",)),
        ({"headers": {1: "v"}}, ("1 is not a valid header name",)),
        ({"headers": [("x-key", "v")]}, ("headers must be a mapping",)),
        ({"on_retry": "log"}, ("on_retry must be a function",)),
        ({"protocol": "websocket"}, ("unknown protocol 'websocket'",)),
        ({"protocol": 1}, ("protocol must be a string",)),
    ],
)
def test_bad_client_arguments(kwargs, needles):
    for cls in (RankingClient, AsyncRankingClient):
        raises(InvalidArgumentError, *needles)(lambda: cls("h:1", **kwargs))


def test_accepted_spellings_of_client_arguments():
    client = RankingClient("h:1", model_version=2, headers={"X-Key": "v"}, retries=np.int64(1), timeout_s=np.float32(2))
    assert client.model_version == "2"
    assert client.headers == {"x-key": "v"}  # gRPC metadata keys must be lower case
    assert client.retry_policy.retries == 1 and client.timeout_s == 2.0


def test_retry_policy_and_pool_are_checked_on_their_own():
    raises(InvalidArgumentError, "retries must be >= 0")(lambda: RetryPolicy(retries=-1))
    raises(InvalidArgumentError, "backoff_s")(lambda: RetryPolicy(backoff_s=float("nan")))
    raises(InvalidArgumentError, "at least one endpoint")(lambda: EndpointPool(()))
    raises(InvalidArgumentError, "cooldown_s")(lambda: EndpointPool((parse_url("h:1"),), cooldown_s=float("nan")))


def test_rank_request_and_rank_many_take_requests(monkeypatch):
    NoNetwork(monkeypatch)
    client = RankingClient("h:1")
    raises(InvalidArgumentError, "rank_request takes a RankRequest, got dict")(
        lambda: client.rank_request({"user_id": 1})  # type: ignore[arg-type]
    )
    raises(InvalidArgumentError, "rank_many takes an iterable of RankRequest objects, got int")(
        lambda: client.rank_many(5)  # type: ignore[arg-type]
    )
    raises(InvalidArgumentError, "item 0 is a str")(lambda: client.rank_many(["x"]))  # type: ignore[list-item]


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, needles",
    [
        ("http://host:8000/v2", ("includes Triton's API path /v2", "the SDK adds itself")),
        ("http://host:8000/v2/models/pinrank", ("includes Triton's API path /v2",)),
        ("http://gw/triton/v2", ("includes Triton's API path /v2",)),
        ("grpc://host:8001/v2", ("gRPC server URLs take no path",)),
        ("host:8001/anything", ("gRPC server URLs take no path",)),
        ("http://host:8000/a%20b", ("not a plain prefix",)),
        ("http://host:8000/a/../b", ("not a plain prefix",)),
        ("http://host:8000/;x", ("not a plain prefix",)),
        ("http://host:8000?x=1", ("take no query or fragment",)),
        ("http://host:8000/?", ("take no query or fragment",)),
        ("http://host:8000#frag", ("take no query or fragment",)),
        ("http://user:secret@host:8000", ("holds credentials", "headers=")),
        ("host:0", ("port 0",)),
        ("host:65536", ("bad port",)),
        ("host:-1", ("bad port",)),
        ("ho st:8001", ("whitespace or control characters",)),
        ("host:8001\x00", ("whitespace or control characters",)),
        ("http://:8000", ("no host",)),
        ("ftp://host", ("unsupported URL scheme 'ftp'",)),
    ],
)
def test_bad_urls_say_what_is_wrong(monkeypatch, url, needles):
    NoNetwork(monkeypatch)
    for cls in (RankingClient, AsyncRankingClient):
        raises(InvalidArgumentError, *needles)(lambda: cls(url))


@pytest.mark.parametrize("urls", [5, None, b"host:8001", 1.5, {"host:8001"}])
def test_urls_must_be_strings(urls):
    raises(InvalidArgumentError, "server URLs must be a string or a list of strings")(lambda: RankingClient(urls))


def test_url_errors_are_still_value_errors():
    # Code written against the old behaviour (`except ValueError`) keeps working.
    with pytest.raises(ValueError):
        parse_url("http://host:8000/v2")


def test_gateway_prefixes_are_kept():
    assert parse_url("http://gw:80/triton").address == "gw:80/triton"
    assert parse_url("https://gw/ml/ranker-1/").address == "gw:443/ml/ranker-1"


# --- what the server sends back -----------------------------------------------------------------


def outputs(scores: list[float], probs: list[list[float]]) -> dict[str, np.ndarray]:
    return {
        "item_ids": np.arange(1, len(scores) + 1, dtype=np.int64),
        "scores": np.asarray(scores, np.float32),
        "head_probs": np.asarray(probs, np.float32).reshape(-1, schema.NUM_HEADS),
    }


@pytest.mark.parametrize(
    "scores, probs, needle",
    [
        ([float("nan"), 0.1], [[0.5] * 4] * 2, "scores holds NaN or infinite values"),
        ([0.2, float("-inf")], [[0.5] * 4] * 2, "scores holds NaN or infinite values"),
        ([0.2], [[0.5, float("nan"), 0.5, 0.5]], "head_probs holds NaN or infinite values"),
        ([0.2], [[0.5, 1.5, 0.5, 0.5]], "head_probs holds values outside [0, 1]"),
        ([0.2], [[-0.1, 0.5, 0.5, 0.5]], "head_probs holds values outside [0, 1]"),
    ],
)
def test_responses_with_nonsense_numbers_are_server_errors(scores, probs, needle):
    raises(ServerError, "malformed response", needle)(lambda: RankResponse.from_arrays(outputs(scores, probs)))


def test_response_item_ids_must_be_integers():
    out = outputs([0.2], [[0.5] * 4])
    out["item_ids"] = np.asarray([1.5])
    raises(ServerError, "item_ids has dtype float64")(lambda: RankResponse.from_arrays(out))


def test_undecodable_response_is_a_server_error(monkeypatch):
    class Garbled:
        def get_response(self) -> dict[str, str]:
            return {"model_name": "pinrank", "model_version": "1"}

        def as_numpy(self, name: str) -> np.ndarray:
            raise ValueError("buffer size must be a multiple of element size")  # what np.frombuffer says

    class Transport:
        def infer(self, *args: Any, **kwargs: Any) -> Garbled:
            return Garbled()

    monkeypatch.setattr(RankingClient, "_make_transport", lambda self, endpoint: Transport())
    with RankingClient("grpc://h:1") as client:
        err = raises(ServerError, "malformed response from grpc://h:1", "multiple of element size")(
            lambda: client.rank(1, [1], request_ts_ms=NOW)
        )
    assert isinstance(err.__cause__, ValueError)


# --- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["rank", "--user-id", "٣", "--candidates", "1"], "Invalid value for '--user-id': '٣' is not an integer"),
        (["rank", "--user-id", "1", "--candidates", "1,٣"], "--candidates: '٣' is not an integer"),
        (["rank", "--user-id", "1", "--candidates", "1_000"], "--candidates: '1_000' is not an integer"),
        (["rank", "--user-id", "1", "--candidates", "1", "--top-k", "²"], "Invalid value for '--top-k'"),
        (["rank", "--user-id", "1", "--candidates", "1", "--top-k", str(2**63)], "top_k=9223372036854775808"),
        (["rank", "--user-id", "1", "--candidates", "1", "--action", f"٧:save:{NOW}"], "ASCII digits"),
        (["rank", "--user-id", "1", "--candidates", "1", "--action", f"7:٣:{NOW}"], "unknown action '٣'"),
        (["health", "--timeout", "nan"], "Invalid value for '--timeout'"),
        (["health", "--timeout", "inf"], "Invalid value for '--timeout'"),
        (["health", "--timeout", "٣"], "Invalid value for '--timeout'"),
        (["health", "--timeout", "1e9"], "Invalid value for '--timeout': 1e9 is not in (0, 86400] seconds"),
        (["health", "--retries", "٣"], "Invalid value for '--retries'"),
        (["health", "--url", "http://h:8000/v2"], "includes Triton's API path /v2"),
    ],
)
def test_cli_refuses_lookalike_numbers_and_bad_urls(args, needle):
    command, rest = args[0], args[1:]
    url = [] if "--url" in rest else ["--url", "127.0.0.1:1"]
    result = CliRunner().invoke(cli.main, [command, *url, *rest])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_header_values_are_not_echoed_in_errors():
    secret = "s3cr3t\r\nX-Injected: 1"
    err = raises(InvalidArgumentError, "headers['pinrank-admin-key']", "line break")(
        lambda: RankingClient("h:1", headers={"pinrank-admin-key": secret})
    )
    assert "s3cr3t" not in str(err)


def test_empty_admin_key():
    raises(InvalidArgumentError, "empty admin key")(lambda: admin_headers(""))
