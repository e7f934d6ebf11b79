"""Mapping transport failures onto the SDK's exception hierarchy (synthetic errors, no server)."""

import asyncio
import json
import socket

import pytest
from geventhttpclient.response import HTTPParseError
from tritonclient.utils import InferenceServerException

from pinrank_client import RankRequest, errors, validation
from pinrank_client.errors import (
    AccessDeniedError,
    InvalidArgumentError,
    InvalidRequestError,
    ModelNotReadyError,
    PinrankError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    map_exception,
)


def ise(status, msg):
    return InferenceServerException(msg=msg, status=status)


@pytest.mark.parametrize(
    "status, msg, cls",
    [
        # What Triton 2.51 sends, as observed through tritonclient.
        (
            "StatusCode.INVALID_ARGUMENT",
            "in ensemble 'pinrank', invalid request: candidate_ids is empty",
            InvalidRequestError,
        ),
        ("400", "in ensemble 'pinrank', invalid request: candidate_ids is empty", InvalidRequestError),
        (
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses; last error: Connection refused",
            ServerUnavailableError,
        ),
        ("503", "Server not ready", ServerUnavailableError),
        ("429", "too many requests", ServerUnavailableError),
        ("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size", ServerUnavailableError),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeoutError),
        ("504", "gateway timeout", RequestTimeoutError),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'pinrank' is not found", ModelNotReadyError),
        ("404", "Request for unknown model: 'pinrank' is not found", ModelNotReadyError),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'pinrank' has no available versions", ModelNotReadyError),
        # Message beats status: some endpoints say 400/UNAVAILABLE for a missing model.
        ("400", "Request for unknown model: 'pinrank' is not found", ModelNotReadyError),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'pinrank' has no available versions",
            ModelNotReadyError,
        ),
        # The proxy in front of Triton (pinrank.serving.proxy).
        ("413", "request body larger than 131072 bytes", InvalidRequestError),
        ("415", "Content-Encoding gzip is not accepted", InvalidRequestError),
        ("StatusCode.PERMISSION_DENIED", "method not allowed through the proxy", AccessDeniedError),
        ("StatusCode.UNIMPLEMENTED", "unknown method", InvalidArgumentError),
        ("StatusCode.INTERNAL", "in ensemble 'pinrank', boom", ServerError),
        ("500", "boom", ServerError),
        ("StatusCode.UNKNOWN", "boom", ServerError),
        # tritonclient's own status-less errors.
        (None, "timed out", RequestTimeoutError),
        (None, "failed to connect", ServerUnavailableError),
        (None, "url should not include the scheme", PinrankError),
    ],
)
def test_inference_server_exception_mapping(status, msg, cls):
    exc = ise(status, msg)
    mapped = map_exception(exc)
    assert type(mapped) is cls
    assert mapped.status == status
    assert mapped.raw_message == msg
    assert mapped.__cause__ is exc


def test_server_side_validation_reads_like_client_side():
    raw = "in ensemble 'pinrank', invalid request: candidate_ids is empty: send at least one candidate"
    mapped = map_exception(ise("StatusCode.INVALID_ARGUMENT", raw))
    with pytest.raises(InvalidRequestError) as client_side:
        RankRequest(1, [], request_ts_ms=1_718_000_000_000)
    assert str(mapped) == str(client_side.value) == "candidate_ids is empty: send at least one candidate"
    assert mapped.raw_message == raw


def test_one_except_catches_client_and_server_validation_failures():
    server_side = map_exception(ise("400", "invalid request: top_k must be >= 1, got 0"))
    for exc in (server_side, map_exception(validation.InvalidRequestError("bad"))):
        assert isinstance(exc, InvalidRequestError)
        assert isinstance(exc, validation.InvalidRequestError)
        assert isinstance(exc, PinrankError)
        assert isinstance(exc, ValueError)


@pytest.mark.parametrize(
    "exc, cls",
    [
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError),
        (ConnectionResetError(104, "Connection reset by peer"), ServerUnavailableError),
        (socket.gaierror(-2, "Name or service not known"), ServerUnavailableError),
        (OSError(113, "No route to host"), ServerUnavailableError),
        (TimeoutError("timed out"), RequestTimeoutError),
        (socket.timeout("timed out"), RequestTimeoutError),
        (asyncio.TimeoutError(), RequestTimeoutError),
    ],
)
def test_socket_level_errors(exc, cls):
    assert type(map_exception(exc)) is cls


def test_aiohttp_errors():
    aiohttp = pytest.importorskip("aiohttp")
    assert type(map_exception(aiohttp.ServerDisconnectedError())) is ServerUnavailableError
    # aiohttp's timeout is both a connection error and a timeout: timeout wins.
    assert type(map_exception(aiohttp.ServerTimeoutError("read timeout"))) is RequestTimeoutError


def test_messages_name_the_server_and_deadline():
    mapped = map_exception(ise("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), url="grpc://h:1", timeout_s=0.25)
    assert str(mapped) == "no answer from grpc://h:1 within 0.25 s (Deadline Exceeded)"
    mapped = map_exception(ConnectionRefusedError(111, "Connection refused"), url="http://h:2")
    assert str(mapped) == "http://h:2 is unavailable: Connection refused"


def test_unknown_exceptions_pass_through():
    bug = TypeError("a bug")
    assert map_exception(bug) is bug
    already = ServerError("x")
    assert map_exception(already) is already


def test_hierarchy():
    for cls in (InvalidRequestError, ServerUnavailableError, RequestTimeoutError, ModelNotReadyError, ServerError):
        assert issubclass(cls, PinrankError)
    assert errors.PinrankError is PinrankError
    e = InvalidRequestError("m", status="400", raw_message="raw")
    assert (str(e), e.status, e.raw_message) == ("m", "400", "raw")


# --- raw transport errors (issue 16, row 9): none escapes as itself ------------------------------


def test_an_answer_that_is_not_http_means_the_wrong_port():
    raw = HTTPParseError("Expected HTTP/, RTSP/ or ICE/", 8)
    mapped = map_exception(raw, url="http://h:8001")
    assert type(mapped) is InvalidArgumentError and mapped.__cause__ is raw
    assert str(mapped).startswith("http://h:8001 does not speak HTTP/1.1: is it a gRPC port?")
    assert "Expected HTTP/" in str(mapped)


def test_aiohttp_errors_beyond_connection_errors():
    aiohttp = pytest.importorskip("aiohttp")
    from multidict import CIMultiDict, CIMultiDictProxy  # noqa: PLC0415 - aiohttp's dependency: after its importorskip
    from yarl import URL  # noqa: PLC0415 - aiohttp's dependency: after its importorskip

    info = aiohttp.RequestInfo(URL("http://h:8001/v2/health/live"), "GET", CIMultiDictProxy(CIMultiDict()))
    bad_status = aiohttp.ClientResponseError(info, (), status=400, message="Bad status line:\n  b'\\x00\\x00'")
    mapped = map_exception(bad_status, url="http://h:8001")
    assert type(mapped) is InvalidArgumentError and "is it a gRPC port?" in str(mapped)
    assert "\n" not in str(mapped)  # the quoted binary stays in raw_message
    assert type(map_exception(aiohttp.ClientPayloadError("truncated"))) is ServerError
    assert type(map_exception(aiohttp.InvalidURL("h:x"))) is InvalidArgumentError


@pytest.mark.parametrize(
    "msg",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8000: "
        "Trying to connect an http1.x server",
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8000: Failed parsing HTTP/2 "
        "(Expected SETTINGS frame as the first frame, got frame type 79)",
    ],
)
def test_grpc_reaching_an_http_server_means_the_wrong_port(msg):
    mapped = map_exception(ise("StatusCode.UNAVAILABLE", msg), url="grpc://h:8000")
    # Not ServerUnavailableError: retrying or failing over would hide a wrong URL.
    assert type(mapped) is InvalidArgumentError
    assert str(mapped).startswith("grpc://h:8000 does not speak gRPC (HTTP/2): is it an HTTP port?")


def test_a_closed_socket_stays_retryable_with_a_hint():
    msg = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8000: Socket closed"
    mapped = map_exception(ise("StatusCode.UNAVAILABLE", msg), url="grpc://h:8000")
    assert type(mapped) is ServerUnavailableError
    assert "is it restarting, or is this not a gRPC port?" in str(mapped)


def test_raw_grpc_errors_are_mapped_by_code():
    grpc = pytest.importorskip("grpc")
    from grpc.aio import AioRpcError, Metadata  # noqa: PLC0415 - only once importorskip("grpc") has passed

    raw = AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), details="connection reset")
    mapped = map_exception(raw, url="grpc://h:1")
    assert type(mapped) is ServerUnavailableError and "connection reset" in str(mapped)
    raw = AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, Metadata(), Metadata(), details="invalid request: bad")
    assert type(map_exception(raw)) is InvalidRequestError


def test_other_transport_library_errors_are_server_errors():
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads("<html>502</html>")
    mapped = map_exception(info.value, url="http://h:1")
    assert type(mapped) is ServerError and "JSONDecodeError" in str(mapped)
    assert mapped.__cause__ is info.value


def test_hierarchy_includes_argument_errors():
    assert issubclass(InvalidArgumentError, PinrankError) and issubclass(InvalidArgumentError, ValueError)
    assert not issubclass(InvalidArgumentError, InvalidRequestError)  # the request was fine; the SDK's setup is not
