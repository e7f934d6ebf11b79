"""The SDK's exception hierarchy and the mapping from transport errors to it.

Callers should never have to know whether a request went over gRPC or HTTP,
or whether it was refused by the SDK or by the server, to handle it:

    PinrankError
    ├── InvalidRequestError    (also validation.InvalidRequestError / ValueError)
    ├── InvalidArgumentError   (also ValueError: a bad URL, timeout, header...)
    ├── ServerUnavailableError (retried with backoff)
    ├── RequestTimeoutError
    ├── ModelNotReadyError
    ├── AccessDeniedError      (a restricted API called without the admin key)
    └── ServerError            (the server failed; a bug or a broken model)
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

from pinrank_client import validation
from pinrank_client._base import PinrankError

__all__ = [
    "PinrankError",
    "InvalidRequestError",
    "InvalidArgumentError",
    "ServerUnavailableError",
    "RequestTimeoutError",
    "ModelNotReadyError",
    "AccessDeniedError",
    "ServerError",
    "map_exception",
]


class InvalidRequestError(validation.InvalidRequestError, PinrankError):
    """The request breaks the serving contract (found by the SDK or the server).

    Subclasses the validator's error, which the server's preprocessing raises
    too, so `except validation.InvalidRequestError` and `except PinrankError`
    both catch it.
    """

    def __init__(self, message: str, *, status: str | None = None, raw_message: str | None = None) -> None:
        # ValueError.__init__ would reject the keyword arguments.
        PinrankError.__init__(self, message, status=status, raw_message=raw_message)


class InvalidArgumentError(PinrankError, ValueError):
    """An argument of the SDK itself is wrong: a server URL, a timeout, a
    retry setting, a header, or a URL that points at the wrong protocol's
    port. Raised before anything is sent where the SDK can tell, and never
    retried: sending again cannot help."""

    def __init__(self, message: str, *, status: str | None = None, raw_message: str | None = None) -> None:
        PinrankError.__init__(self, message, status=status, raw_message=raw_message)


class ServerUnavailableError(PinrankError):
    """Nothing answered (connection refused, DNS, server shutting down, queue full)."""


class RequestTimeoutError(PinrankError):
    """The server did not answer within the call's timeout."""


class ModelNotReadyError(PinrankError):
    """The server answers, but the model is unknown, still loading, or failed to load."""


class AccessDeniedError(PinrankError):
    """The server restricts this API (model control, repository index) to
    callers with its admin key: pass `headers=pinrank_client.admin_headers(key)`."""


class ServerError(PinrankError):
    """The server failed while handling a valid request, or answered nonsense."""


# Ensembles prefix a composing model's error with this; the rest is what the
# preprocess model said, which is what the caller should see.
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")
# The preprocess model marks its validation failures with this prefix.
_INVALID_PREFIX = "invalid request: "
# Triton says these (gRPC NOT_FOUND / HTTP 404, or 400 from some endpoints)
# for a model that is missing or not (yet) loaded.
# Triton's answer to a restricted API without its header: HTTP 403, but gRPC
# says UNAVAILABLE, which must not be retried or mark the server down.
_RESTRICTED = re.compile(r"(API|protocol) is restricted, expecting header", re.IGNORECASE)
_NOT_READY = re.compile(r"unknown model|has no available versions|is not ready|not loaded", re.IGNORECASE)

# A gRPC channel that reached an HTTP/1.1 server (Triton's HTTP port, a web
# proxy) fails with one of these, as UNAVAILABLE: a wrong URL, not an outage,
# so it must be neither retried nor reported as one.
_NOT_GRPC = re.compile(r"http1\.x server|Failed parsing HTTP/2|Expected SETTINGS frame", re.IGNORECASE)
# Triton's HTTP port (and many proxies) just close a connection that opens
# with gRPC's HTTP/2 preface; so does a server going down, so this stays a
# (retried) ServerUnavailableError, with a hint.
_SOCKET_CLOSED = re.compile(r"Socket closed", re.IGNORECASE)
_SOCKET_CLOSED_HINT = "the server closed the connection: is it restarting, or is this not a gRPC port?"
# map_exception puts the server's URL in front of these.
_WRONG_PORT = {
    "grpc": "does not speak gRPC (HTTP/2): is it an HTTP port? "
    "Use http://HOST:PORT for Triton's HTTP endpoint, or the gRPC port (Triton's default is 8001)",
    "http": "does not speak HTTP/1.1: is it a gRPC port? "
    "Use grpc://HOST:PORT for Triton's gRPC endpoint, or the HTTP port (Triton's default is 8000)",
}
# Exceptions of these packages' own types can only come from the transport
# (or from parsing what the server sent); the SDK reports them as the server's
# failure instead of letting them escape. Builtin types (TypeError...) are
# bugs and pass through.
_TRANSPORT_PACKAGES = frozenset(
    {"tritonclient", "grpc", "aiohttp", "yarl", "multidict", "geventhttpclient", "_parser", "gevent",
     "http", "ssl", "json", "rapidjson", "google"}
)  # fmt: skip

_GRPC_STATUS: dict[str, type[PinrankError]] = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "OUT_OF_RANGE": InvalidRequestError,
    "UNAVAILABLE": ServerUnavailableError,
    "RESOURCE_EXHAUSTED": ServerUnavailableError,
    "DEADLINE_EXCEEDED": RequestTimeoutError,
    "NOT_FOUND": ModelNotReadyError,
    # What the limit-enforcing proxy in front of Triton answers (deploy/k8s,
    # docs/security.md): a refused method is a caller's mistake, not an outage.
    "PERMISSION_DENIED": AccessDeniedError,
    "UNAUTHENTICATED": AccessDeniedError,
    "UNIMPLEMENTED": InvalidArgumentError,
}
_HTTP_STATUS: dict[str, type[PinrankError]] = {
    "400": InvalidRequestError,
    "403": AccessDeniedError,
    "401": AccessDeniedError,
    "404": ModelNotReadyError,
    "408": RequestTimeoutError,
    "413": InvalidRequestError,  # the proxy's body cap
    "415": InvalidRequestError,  # the proxy refuses compressed request bodies
    "429": ServerUnavailableError,
    "502": ServerUnavailableError,
    "503": ServerUnavailableError,
    "504": RequestTimeoutError,
}


def _tidy(message: str) -> str:
    message = _ENSEMBLE_PREFIX.sub("", message.strip())
    if message.startswith(_INVALID_PREFIX):
        message = message[len(_INVALID_PREFIX) :]
    return message


def _from_status(status: str | None, message: str) -> PinrankError:
    tidy = _tidy(message)
    if _NOT_GRPC.search(message):
        return InvalidArgumentError(_WRONG_PORT["grpc"], status=status, raw_message=message)
    if _RESTRICTED.search(message):
        return AccessDeniedError(tidy, status=status, raw_message=message)
    if _NOT_READY.search(message):
        return ModelNotReadyError(tidy, status=status, raw_message=message)
    code = (status or "").removeprefix("StatusCode.")
    if code == "UNAVAILABLE" and _SOCKET_CLOSED.search(message):
        tidy += f" ({_SOCKET_CLOSED_HINT})"
    cls = _GRPC_STATUS.get(code) or _HTTP_STATUS.get(code)
    if cls is None and not code:
        # tritonclient raises status-less errors for client-side failures.
        lowered = message.lower()
        if "deadline" in lowered or "timed out" in lowered:
            cls = RequestTimeoutError
        elif "connect" in lowered or "unavailable" in lowered:
            cls = ServerUnavailableError
        else:
            cls = PinrankError
    return (cls or ServerError)(tidy, status=status, raw_message=message)


def _classify(exc: BaseException) -> PinrankError | None:
    if isinstance(exc, validation.InvalidRequestError):
        return InvalidRequestError(str(exc))
    # Looked up, not imported: tritonclient.utils costs ~130 ms to import, and
    # if nobody imported it no exception of its type can exist.
    triton_utils = sys.modules.get("tritonclient.utils")
    if triton_utils is not None and isinstance(exc, triton_utils.InferenceServerException):
        message = exc.message() or str(exc) or type(exc).__name__
        return _from_status(exc.status(), message)
    # Timeouts first: TimeoutError is an OSError, and aiohttp's timeout is a
    # connection error too.
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return RequestTimeoutError(str(exc) or type(exc).__name__)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return _from_aiohttp(aiohttp, exc)
    if isinstance(exc, OSError):  # refused, reset, DNS, unreachable
        return ServerUnavailableError(exc.strerror or str(exc) or type(exc).__name__)
    gevent_http = sys.modules.get("geventhttpclient.response")
    if gevent_http is not None and isinstance(exc, gevent_http.HTTPConnectionClosed):
        return ServerUnavailableError(f"connection closed: {exc}")
    http_client = sys.modules.get("http.client")
    if http_client is not None and isinstance(exc, http_client.HTTPException):
        # geventhttpclient's HTTPParseError: the bytes that came back are not HTTP/1.1.
        return InvalidArgumentError(_WRONG_PORT["http"], raw_message=_describe(exc))
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        # tritonclient wraps these, but not on every path; same mapping either way.
        return _from_status(str(exc.code()), str(exc.details() if callable(getattr(exc, "details", None)) else exc))
    if type(exc).__module__.split(".")[0] in _TRANSPORT_PACKAGES:
        return ServerError(f"unexpected transport error: {_describe(exc)}")
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _first_line(text: str, limit: int = 160) -> str:
    # aiohttp quotes the binary bytes it could not parse, over several lines.
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _from_aiohttp(aiohttp: Any, exc: BaseException) -> PinrankError:
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ServerUnavailableError(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientResponseError):
        # tritonclient reads every status itself, so this is aiohttp failing
        # to parse the answer ("Bad status line"): not an HTTP/1.1 server.
        return InvalidArgumentError(_WRONG_PORT["http"], raw_message=_describe(exc))
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidArgumentError(f"has an invalid URL ({exc})", raw_message=_describe(exc))
    return ServerError(f"unexpected transport error: {_describe(exc)}")


def map_exception(exc: BaseException, *, url: str | None = None, timeout_s: float | None = None) -> BaseException:
    """Translate a transport exception into the SDK's hierarchy.

    Returns a PinrankError for everything that comes from the transport
    (tritonclient's InferenceServerException, gRPC, socket, aiohttp and
    geventhttpclient errors, timeouts, an answer in the wrong protocol) and
    `exc` itself otherwise (a builtin TypeError and the like), so programming
    errors are not disguised.
    `url` and `timeout_s`, when given, make the messages say which server and
    which deadline (the transports' own messages rarely do).
    """
    if isinstance(exc, PinrankError):
        return exc
    mapped = _classify(exc)
    if mapped is None:
        return exc
    where = url or "the server"
    if isinstance(mapped, RequestTimeoutError):
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        mapped.message = f"no answer from {where}{within} ({mapped.message})"
    elif isinstance(mapped, ServerUnavailableError):
        mapped.message = f"{where} is unavailable: {mapped.message}"
    elif isinstance(mapped, InvalidArgumentError):
        mapped.message = f"{where} {mapped.message} ({_first_line(mapped.raw_message)})"
    mapped.__cause__ = exc
    return mapped
