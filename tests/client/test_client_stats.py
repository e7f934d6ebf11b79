"""Model statistics: parsing Triton's statistics JSON (HTTP's and gRPC's
spellings) into ModelStats, and the clients' stats() over fake transports
(no server; tests/integration/test_client_sdk.py checks them against the real one)."""

import asyncio
import dataclasses
import json

import pytest
from test_client_retry import async_client, sync_client  # the same fake-transport clients
from tritonclient.utils import InferenceServerException

from pinrank_client import (
    AccessDeniedError,
    AsyncRankingClient,
    InvalidArgumentError,
    ModelStats,
    RankingClient,
    ServerError,
)
from pinrank_client.types import parse_model_stats

MS = 1_000_000  # ns


def timing(count, ns):
    return {"count": count, "ns": ns}


# What Triton's HTTP endpoint answers (GET v2/models/stats), trimmed to two models.
HTTP_STATS = {
    "model_stats": [
        {
            "name": "pinrank",
            "version": "1",
            "last_inference": 1718000000123,
            "inference_count": 4,
            "execution_count": 4,
            "inference_stats": {
                "success": timing(4, 40 * MS),
                "fail": timing(1, 3 * MS),
                "queue": timing(4, 2 * MS),
                "compute_input": timing(4, 1 * MS),
                "compute_infer": timing(4, 30 * MS),
                "compute_output": timing(4, 4 * MS),
                "cache_hit": timing(0, 0),
                "cache_miss": timing(0, 0),
            },
            "batch_stats": [],
        },
        {
            "name": "ranker",
            "version": "1",
            "last_inference": 0,
            "inference_count": 0,
            "execution_count": 0,
            "inference_stats": {key: timing(0, 0) for key in (
                "success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
        },
    ]
}

# The same through gRPC with as_json=True: protobuf's JSON writes 64-bit numbers
# as strings and leaves out every field that is zero (a whole object if all are).
GRPC_STATS = {
    "model_stats": [
        {
            "name": "pinrank",
            "version": "1",
            "last_inference": "1718000000123",
            "inference_count": "4",
            "execution_count": "4",
            "inference_stats": {
                "success": {"count": "4", "ns": str(40 * MS)},
                "fail": {"count": "1", "ns": str(3 * MS)},
                "queue": {"count": "4", "ns": str(2 * MS)},
                "compute_input": {"count": "4", "ns": str(1 * MS)},
                "compute_infer": {"count": "4", "ns": str(30 * MS)},
                "compute_output": {"count": "4", "ns": str(4 * MS)},
                "cache_hit": {},
                "cache_miss": {},
            },
        },
        {"name": "ranker", "version": "1", "inference_stats": {"success": {}, "fail": {}, "queue": {}}},
    ]
}

EXPECTED = [
    ModelStats("pinrank", "1", requests=4, failures=1, executions=4, queue_ms=0.5, compute_input_ms=0.25,
               compute_infer_ms=7.5, compute_output_ms=1.0, total_ms=10.0, url="grpc://a:1"),
    ModelStats("ranker", "1", requests=0, failures=0, executions=0, queue_ms=0.0, compute_input_ms=0.0,
               compute_infer_ms=0.0, compute_output_ms=0.0, total_ms=0.0, url="grpc://a:1"),
]


@pytest.mark.parametrize("data", [HTTP_STATS, GRPC_STATS], ids=["http", "grpc"])
def test_parse_both_spellings_alike(data):
    assert parse_model_stats(data, url="grpc://a:1") == EXPECTED


def test_means_are_per_successful_request_and_zero_without_requests():
    stats = parse_model_stats(HTTP_STATS)[0]
    # Per successful request: the failed one's time is in "fail", not in the means.
    assert stats.total_ms == 40 * MS / 4 / 1e6
    assert stats.queue_ms + stats.compute_input_ms + stats.compute_infer_ms + stats.compute_output_ms == 9.25
    assert stats.url == ""
    idle = parse_model_stats(HTTP_STATS)[1]
    assert (idle.requests, idle.total_ms, idle.compute_infer_ms) == (0, 0.0, 0.0)


def test_parse_what_grpc_leaves_out_entirely():
    # No models at all: protobuf's JSON drops the empty list. A model that never
    # ran may have no inference_stats, and an integer version is read as text.
    assert parse_model_stats({}) == []
    assert parse_model_stats({"model_stats": []}) == []
    (stats,) = parse_model_stats({"model_stats": [{"name": "preprocess", "version": 3}]})
    assert (stats.model, stats.version, stats.requests, stats.executions) == ("preprocess", "3", 0, 0)
    assert stats.total_ms == 0.0


def test_model_stats_is_frozen_and_json_ready():
    stats = dataclasses.replace(EXPECTED[0], queue_ms=1 / 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.requests = 5  # type: ignore[misc]
    out = stats.to_dict()
    assert list(out) == [f.name for f in dataclasses.fields(ModelStats)]
    assert out["queue_ms"] == 0.333333 and out["requests"] == 4 and out["url"] == "grpc://a:1"
    assert json.loads(json.dumps(out)) == out


def with_model(**fields):
    base = {"name": "ranker", "version": "1", "inference_stats": {"success": timing(1, 5)}}
    return {"model_stats": [{**base, **fields}]}


@pytest.mark.parametrize(
    "data, message",
    [
        (None, "the response must be an object, got NoneType"),
        ([], "the response must be an object, got list"),
        ({"model_stats": {"name": "x"}}, "model_stats must be a list, got dict"),
        ({"model_stats": ["ranker"]}, "model_stats[0] must be an object, got str"),
        (with_model(name=""), "model_stats[0].name must be a model name, got ''"),
        (with_model(name=None), "model_stats[0].name must be a model name, got None"),
        (with_model(version=[1]), "model_stats[0].version must be a version string, got [1]"),
        (with_model(inference_stats=[]), "model_stats[0].inference_stats must be an object, got list"),
        (with_model(inference_stats={"queue": 5}), "model_stats[0].inference_stats.queue must be an object"),
        (with_model(inference_stats={"success": timing(-1, 5)}),
         "model_stats[0].inference_stats.success.count must be a non-negative integer, got -1"),
        (with_model(inference_stats={"success": timing("1.5", 5)}),
         "inference_stats.success.count must be a non-negative integer, got '1.5'"),
        (with_model(inference_stats={"success": timing(1, 2.5)}),
         "inference_stats.success.ns must be a non-negative integer, got 2.5"),
        (with_model(inference_stats={"fail": timing(True, 0)}),
         "inference_stats.fail.count must be a non-negative integer, got True"),
        (with_model(inference_stats={"compute_infer": timing(1, "٣")}),
         "inference_stats.compute_infer.ns must be a non-negative integer, got '٣'"),
        (with_model(execution_count="many"), "model_stats[0].execution_count must be a non-negative integer"),
    ],
)
def test_malformed_statistics_are_a_server_error(data, message):
    with pytest.raises(ServerError) as err:
        parse_model_stats(data, url="http://a:1")
    assert str(err.value).startswith("malformed statistics from http://a:1: "), str(err.value)
    assert message in str(err.value)


# --- the clients, over fake transports --------------------------------------------------------


class StatsTriton:
    """Stands in for tritonclient's InferenceServerClient: fails as told, then answers `payload`."""

    def __init__(self, payload, *errors):
        self.payload = payload
        self.errors = list(errors)
        self.calls = []

    def get_inference_statistics(self, model_name="", model_version="", **kw):
        self.calls.append((model_name, model_version, kw))
        if self.errors:
            raise self.errors.pop(0)
        return self.payload

    def close(self):
        pass


class AsyncStatsTriton(StatsTriton):
    async def get_inference_statistics(self, model_name="", model_version="", **kw):  # type: ignore[override]
        return StatsTriton.get_inference_statistics(self, model_name, model_version, **kw)

    async def close(self):  # type: ignore[override]
        pass


def refused():
    return InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


def stats_of(flavour, url, *fakes, **kw):
    """stats() on a sync or async client whose i-th server is fakes[i]."""
    if flavour == "sync":
        with sync_client(url, *fakes, **kw) as client:
            return client.stats(timeout_s=0.5)

    async def main():
        async with async_client(url, *fakes, **kw) as client:
            return await client.stats(timeout_s=0.5)

    return asyncio.run(main())


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stats_asks_for_every_model_and_reads_either_protocol(flavour, protocol):
    fake = (StatsTriton if flavour == "sync" else AsyncStatsTriton)(GRPC_STATS if protocol == "grpc" else HTTP_STATS)
    url = f"{protocol}://a:1"
    stats = stats_of(flavour, url, fake, headers={"x-team": "ranking"})
    assert stats == [dataclasses.replace(s, url=url) for s in EXPECTED]
    ((name, version, kw),) = fake.calls
    assert (name, version) == ("", "")  # "": every model and version
    # gRPC answers protobufs unless asked for JSON, and takes its deadline per call;
    # HTTP's deadline is the SDK's own timer around the call.
    expected = {"as_json": True, "client_timeout": 0.5} if protocol == "grpc" else {}
    assert kw == {**expected, "headers": {"x-team": "ranking"}}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_stats_retry_fail_over_and_name_the_server_that_answered(flavour):
    cls = StatsTriton if flavour == "sync" else AsyncStatsTriton
    dead, alive = cls(HTTP_STATS, refused(), refused()), cls(HTTP_STATS)
    events = []
    stats = stats_of(flavour, "grpc://a:1,grpc://b:1", dead, alive, retries=2, on_retry=events.append)
    assert [s.url for s in stats] == ["grpc://b:1", "grpc://b:1"]
    assert [e.url for e in events] == ["grpc://a:1"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_stats_errors_are_mapped(flavour):
    cls = StatsTriton if flavour == "sync" else AsyncStatsTriton
    # A proxy that refuses the statistics method: a caller's mistake, not retried.
    denied = cls(HTTP_STATS, InferenceServerException(msg="forbidden", status="StatusCode.PERMISSION_DENIED"))
    with pytest.raises(AccessDeniedError):
        stats_of(flavour, "grpc://a:1", denied, retries=3)
    assert len(denied.calls) == 1
    with pytest.raises(ServerError, match=r"^malformed statistics from http://a:1: model_stats must be a list"):
        stats_of(flavour, "http://a:1", cls({"model_stats": "?"}))


def test_stats_checks_its_timeout_before_sending():
    client = RankingClient("grpc://a:1")
    client._make_transport = lambda endpoint: pytest.fail("nothing may be sent")
    with pytest.raises(InvalidArgumentError, match="timeout_s must be a finite number of seconds > 0"):
        client.stats(timeout_s=0)
    aclient = AsyncRankingClient("grpc://a:1")
    aclient._make_transport = client._make_transport
    with pytest.raises(InvalidArgumentError, match="timeout_s must be"):
        asyncio.run(aclient.stats(timeout_s=float("nan")))
