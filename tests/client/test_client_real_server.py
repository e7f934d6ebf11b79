"""Misused SDK arguments against the real tritonserver (issue 16, row 9): a
URL pointing at the other protocol's port, a URL with Triton's own /v2 path,
a wrong gateway prefix, and out-of-range values. Each must end as a
PinrankError subclass that says what is wrong, never a raw transport error or
a misleading "model not ready", and the server must stay up and ready.

The repository is exported from untrained inputs (tests/export_inputs.py), as
in tests/integration/test_client_sdk.py: the SDK is under test, not ranking.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sdk_call  # tests/client/, on sys.path as the test's own folder
from click.testing import CliRunner

from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.serving.tritonserver import running_server
from pinrank_client import (
    Action,
    AsyncRankingClient,
    InvalidArgumentError,
    InvalidRequestError,
    ModelNotReadyError,
    PinrankError,
    RankingClient,
    RankRequest,
    ServerUnavailableError,
    cli,
)
from testkit.export_inputs import (
    make_export_inputs,  # tests/ is on sys.path via tests/conftest.py
)
from testkit.toy_data import START_MS

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQ_TS = START_MS + 50 * MS_PER_DAY
FLAVOURS = ["sync", "async"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("client_real_server")
    inputs = make_export_inputs(root / "inputs")
    args = ["export", *inputs.cli_args(), "--out", str(root / "repo"), "--target", "cpu",
            "--results", str(root / "export.json")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with running_server(root / "repo" / "cpu", log_path=root / "tritonserver.log") as srv:
        yield srv


def request() -> RankRequest:
    return RankRequest(1000, [7, 14, 21], [Action(7, "save", REQ_TS - 60_000)], request_ts_ms=REQ_TS, top_k=2)


def call(flavour: str, url: str, method: str, *args: Any, **client_kw: Any) -> Any:
    return sdk_call.call(flavour, url, method, *args, **{"timeout_s": 10.0, "retries": 2, "backoff_s": 0.01,
                                                          **client_kw})


def test_the_valid_request_is_served(server):
    # The baseline the failures below are measured against.
    for flavour in FLAVOURS:
        assert len(call(flavour, f"grpc://{server.grpc_url}", "rank_request", request())) == 2
        assert len(call(flavour, f"http://{server.http_url}", "rank_request", request())) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("method", ["rank_request", "model_metadata"])
def test_http_client_pointed_at_the_grpc_port(server, flavour, method):
    url = f"http://{server.grpc_url}"
    attempts: list[object] = []
    with pytest.raises(InvalidArgumentError) as info:
        call(flavour, url, method, *([request()] if method == "rank_request" else []), on_retry=attempts.append)
    message = str(info.value)
    assert message.startswith(f"{url} does not speak HTTP/1.1: is it a gRPC port?"), message
    assert isinstance(info.value.__cause__, Exception)  # the transport's error, chained
    assert attempts == []  # a wrong URL is not an outage: never retried
    assert server.is_ready()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_grpc_client_pointed_at_the_http_port(server, flavour):
    # Triton's HTTP port closes a connection that opens with gRPC's preface,
    # as a restarting server would: retried, then reported with a hint.
    url = f"grpc://{server.http_url}"
    attempts: list[object] = []
    with pytest.raises(ServerUnavailableError) as info:
        call(flavour, url, "rank_request", request(), on_retry=attempts.append)
    message = str(info.value)
    assert message.startswith(f"{url} is unavailable: ") and "is this not a gRPC port?" in message, message
    assert len(attempts) == 2
    assert server.is_ready()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_health_reports_the_wrong_port_instead_of_raising(server, flavour):
    health = call(flavour, f"http://{server.grpc_url}", "health")
    assert not health.live and "is it a gRPC port?" in (health.error or "")


def test_url_with_the_api_path_is_refused_before_sending(server):
    with pytest.raises(InvalidArgumentError, match=r"includes Triton's API path /v2, which the SDK adds itself"):
        RankingClient(f"http://{server.http_url}/v2")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_wrong_gateway_prefix_says_so(server, flavour):
    # Triton answers /gw/v2/... with 404: the prefix is wrong, not the model.
    url = f"http://{server.http_url}/gw"
    with pytest.raises(ModelNotReadyError, match=r"answered 404 .*is the path prefix in the URL right\?"):
        call(flavour, url, "rank_request", request())
    assert server.is_ready()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "kwargs, cls, message",
    [
        ({"top_k": 2**63}, InvalidRequestError, "top_k=9223372036854775808 does not fit in int64"),
        ({"user_id": 2**64}, InvalidRequestError, "user_id=18446744073709551616 does not fit in int64"),
        ({"candidate_ids": [7, 2**63]}, InvalidRequestError, "candidate_ids holds values that do not fit in int64"),
        ({"actions": "save"}, InvalidRequestError, "actions must be an ActionHistory or a list of Action"),
    ],
)
def test_out_of_range_fields_fail_on_the_client(server, flavour, kwargs, cls, message):
    args = {"user_id": 1000, "candidate_ids": [7, 14], "actions": (), "top_k": 2, "request_ts_ms": REQ_TS, **kwargs}
    for validate in (True, False):  # the type checks hold even with validation off
        with pytest.raises(cls, match=message) as info:
            call(flavour, f"grpc://{server.grpc_url}", "rank", args["user_id"], args["candidate_ids"], args["actions"],
                 method_kw={"top_k": args["top_k"], "request_ts_ms": args["request_ts_ms"]}, validate=validate)
        assert info.value.status is None  # never sent
    assert server.is_ready()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("timeout_s", [-1.0, 0, float("nan"), float("inf"), 1e18])
def test_bad_per_call_timeouts(server, flavour, timeout_s):
    async def async_call() -> None:
        async with AsyncRankingClient(f"grpc://{server.grpc_url}") as client:
            await client.rank_request(request(), timeout_s=timeout_s)

    with pytest.raises(InvalidArgumentError, match="timeout_s must be a finite number of seconds > 0"):
        if flavour == "sync":
            with RankingClient(f"grpc://{server.grpc_url}") as client:
                client.rank_request(request(), timeout_s=timeout_s)
        else:
            asyncio.run(async_call())


def test_cli_reports_the_wrong_port_as_invalid_input(server):
    result = CliRunner().invoke(
        cli.main, ["health", "--url", f"http://{server.grpc_url}", "--timeout", "5"]
    )
    assert result.exit_code == 3, result.output  # health: not ready (the error says why)
    assert "is it a gRPC port?" in result.stderr
    result = CliRunner().invoke(
        cli.main, ["rank", "--url", f"http://{server.grpc_url}", "--user-id", "1000", "--candidates", "7,14",
                   "--request-ts-ms", str(REQ_TS)],
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: invalid argument: ") and "is it a gRPC port?" in result.stderr
    assert "Traceback" not in result.output


def test_every_failure_above_is_a_pinrank_error():
    # The classes the tests above expect all derive from PinrankError (and the
    # argument errors from ValueError too, for code that caught those before).
    for cls in (InvalidArgumentError, InvalidRequestError, ModelNotReadyError):
        assert issubclass(cls, PinrankError)
    assert issubclass(InvalidArgumentError, ValueError)


def test_server_is_still_ready_after_all_of_it(server):
    assert server.is_running() and server.is_ready()
    assert len(call("sync", f"grpc://{server.grpc_url}", "rank_request", request())) == 2
