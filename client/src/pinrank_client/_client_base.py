"""What the blocking and the asyncio client share: their defaults, Health,
the checks on what callers pass, the mapping of transport errors to
PinrankError, and ClientBase (configuration, request building, response
reading). The transports themselves live with each client (client.py, aio.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, NoReturn, Sequence

from numpy.typing import ArrayLike

from pinrank_client._args import check_headers, check_int, check_model, check_seconds
from pinrank_client._retry import EndpointPool, RetryEvent, RetryPolicy
from pinrank_client._triton import model_identity, read_outputs, requested_outputs
from pinrank_client._url import Endpoint, parse_urls
from pinrank_client.errors import (
    InvalidArgumentError,
    ModelNotReadyError,
    ServerError,
    ServerUnavailableError,
    map_exception,
)
from pinrank_client.types import Action, ActionHistory, RankRequest, RankResponse

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_MAX_CONCURRENCY",
    "OnRetry",
    "Health",
    "best_health",
    "raise_mapped",
    "raise_not_ready",
    "check_request",
    "check_requests",
    "ClientBase",
]


DEFAULT_URL = "localhost:8001"
#: Generous for a first request (model warm-up); set it to your latency budget.
DEFAULT_TIMEOUT_S = 5.0
#: Requests rank_many keeps in flight. The ranker is compute-bound, so more
#: than a few per server instance only queues on the server.
DEFAULT_MAX_CONCURRENCY = 8

OnRetry = Callable[[RetryEvent], object]


@dataclass(frozen=True)
class Health:
    """What one server says about itself. `error` says why, when it is unreachable."""

    url: str
    live: bool
    server_ready: bool  # every model in the repository loaded (strict readiness)
    model_ready: bool  # the ranking model this client calls is loaded
    error: str | None = None


def best_health(healths: Sequence[Health]) -> Health:
    # A ready model beats a live server beats an unreachable one; max() keeps
    # the first of equals, so ties go to the first URL given (the primary).
    return max(healths, key=lambda h: (h.model_ready, h.live))


def raise_mapped(exc: Exception, endpoint: Endpoint, timeout_s: float) -> NoReturn:
    """Re-raise `exc` as a PinrankError (chained) if the SDK knows what it means."""
    mapped = map_exception(exc, url=endpoint.url, timeout_s=timeout_s)
    if mapped is exc:
        raise exc
    if isinstance(mapped, ModelNotReadyError) and mapped.status == "404" and "/" in endpoint.address:
        # A 404 that is not Triton's "unknown model": most likely the
        # gateway prefix in the URL is wrong, not the model.
        mapped.message = (
            f"{endpoint.url} answered 404 ({mapped.message}): is the path prefix in the URL right? "
            "Give the server's root URL, or the gateway's prefix for Triton"
        )
    raise mapped from exc


def check_request(request: object) -> RankRequest:
    if not isinstance(request, RankRequest):
        raise InvalidArgumentError(
            f"rank_request takes a RankRequest, got {type(request).__name__} (use rank(...) or RankRequest.from_dict)"
        )
    return request


def check_requests(requests: Iterable[RankRequest]) -> list[RankRequest]:
    try:
        out = list(requests)
    except TypeError:
        raise InvalidArgumentError(
            f"rank_many takes an iterable of RankRequest objects, got {type(requests).__name__}"
        ) from None
    for i, request in enumerate(out):
        if not isinstance(request, RankRequest):
            raise InvalidArgumentError(f"rank_many takes RankRequest objects; item {i} is a {type(request).__name__}")
    return out


def raise_not_ready(health: Health, model_name: str, timeout_s: float) -> NoReturn:
    if not health.live:
        raise ServerUnavailableError(f"no server answered within {timeout_s:g} s: {health.error}")
    raise ModelNotReadyError(f"model {model_name!r} not ready at {health.url} after {timeout_s:g} s")


class ClientBase:
    """Configuration shared by the sync and async clients."""

    def __init__(
        self,
        url: str | Sequence[str],
        protocol: str | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        cooldown_s: float,
        model_name: str,
        model_version: str,
        validate: bool,
        max_concurrency: int,
        headers: Mapping[str, str] | None,
        on_retry: OnRetry | None,
    ) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(parse_urls(url, protocol))
        self.timeout_s = self._checked_timeout(timeout_s)
        self.retry_policy = RetryPolicy(retries, backoff_s, max_backoff_s)
        self.pool = EndpointPool(self.endpoints, cooldown_s=cooldown_s)
        self.model_name, self.model_version = check_model(model_name, model_version)
        self.validate = bool(validate)
        self.max_concurrency = check_int("max_concurrency", max_concurrency, minimum=1)
        self.headers: dict[str, str] | None = check_headers(headers)
        if on_retry is not None and not callable(on_retry):
            raise InvalidArgumentError(f"on_retry must be a function taking a RetryEvent, got {on_retry!r}")
        self.on_retry = on_retry
        # Tests make jitter deterministic through this.
        self._rand: Callable[[], float] = random.random
        if self.protocol == "grpc":
            import tritonclient.grpc as io  # noqa: PLC0415 - only the protocol in use: each stack costs import time
        else:
            import tritonclient.http as io  # noqa: PLC0415 - only the protocol in use: each stack costs import time
        self._io = io  # InferInput & co. (the aio clients take the same objects)
        self._outputs = requested_outputs(io)

    @staticmethod
    def _checked_timeout(timeout_s: float) -> float:
        return check_seconds("timeout_s", timeout_s)

    def _deadline(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else self._checked_timeout(timeout_s)

    @property
    def endpoint(self) -> Endpoint:
        """The first (primary) server."""
        return self.endpoints[0]

    @property
    def url(self) -> str:
        """The server URLs, comma-separated (the form the CLI's --url takes)."""
        return ",".join(e.url for e in self.endpoints)

    @property
    def protocol(self) -> str:
        return self.endpoints[0].protocol

    def _request(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action],
        top_k: int | None,
        request_ts_ms: int | None,
    ) -> RankRequest:
        return RankRequest(
            user_id, candidate_ids, actions, request_ts_ms=request_ts_ms, top_k=top_k, validate=self.validate
        )

    def _response(self, result: Any, latency_ms: float, endpoint: Endpoint, attempts: int) -> RankResponse:
        try:
            name, version = model_identity(result, self.model_name)
            outputs = read_outputs(result)
        except Exception as exc:
            # The bytes came from the network (a proxy's page, a truncated
            # body): whatever tritonclient or numpy make of them is the
            # server's fault, not a bug here.
            mapped = map_exception(exc, url=endpoint.url)
            if mapped is exc:
                mapped = ServerError(f"malformed response from {endpoint.url}: {type(exc).__name__}: {exc}")
            raise mapped from exc
        return RankResponse.from_arrays(
            outputs,
            model_name=name,
            model_version=version,
            latency_ms=latency_ms,
            url=endpoint.url,
            attempts=attempts,
        )

    def _meta_kw(self) -> dict[str, Any]:
        # gRPC returns protobufs unless asked for JSON; HTTP always returns JSON.
        return {"as_json": True} if self.protocol == "grpc" else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model_name={self.model_name!r}, timeout_s={self.timeout_s})"
