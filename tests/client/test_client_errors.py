"""Mapping transport failures onto the SDK's exception hierarchy (synthetic errors, no server)."""

import asyncio
import socket

import pytest
from tritonclient.utils import InferenceServerException

from pinrank_client import RankRequest, errors, validation
from pinrank_client.errors import (
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
