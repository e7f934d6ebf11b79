"""The SDK's exception hierarchy and the mapping from transport errors to it.

Callers should never have to know whether a request went over gRPC or HTTP,
or whether it was refused by the SDK or by the server, to handle it:

    PinrankError
    ├── InvalidRequestError    (also validation.InvalidRequestError / ValueError)
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

from pinrank_client import validation
from pinrank_client._base import PinrankError

__all__ = [
    "PinrankError",
    "InvalidRequestError",
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

_GRPC_STATUS: dict[str, type[PinrankError]] = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "OUT_OF_RANGE": InvalidRequestError,
    "UNAVAILABLE": ServerUnavailableError,
    "RESOURCE_EXHAUSTED": ServerUnavailableError,
    "DEADLINE_EXCEEDED": RequestTimeoutError,
    "NOT_FOUND": ModelNotReadyError,
}
_HTTP_STATUS: dict[str, type[PinrankError]] = {
    "400": InvalidRequestError,
    "403": AccessDeniedError,
    "404": ModelNotReadyError,
    "408": RequestTimeoutError,
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
    if _RESTRICTED.search(message):
        return AccessDeniedError(tidy, status=status, raw_message=message)
    if _NOT_READY.search(message):
        return ModelNotReadyError(tidy, status=status, raw_message=message)
    code = (status or "").removeprefix("StatusCode.")
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
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        return ServerUnavailableError(str(exc) or type(exc).__name__)
    if isinstance(exc, OSError):  # refused, reset, DNS, unreachable
        return ServerUnavailableError(exc.strerror or str(exc) or type(exc).__name__)
    gevent_http = sys.modules.get("geventhttpclient.response")
    if gevent_http is not None and isinstance(exc, gevent_http.HTTPConnectionClosed):
        return ServerUnavailableError(f"connection closed: {exc}")
    return None


def map_exception(exc: BaseException, *, url: str | None = None, timeout_s: float | None = None) -> BaseException:
    """Translate a transport exception into the SDK's hierarchy.

    Returns a PinrankError for everything the SDK understands (tritonclient's
    InferenceServerException, socket and aiohttp connection errors, timeouts)
    and `exc` itself otherwise, so programming errors are not disguised.
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
    mapped.__cause__ = exc
    return mapped
