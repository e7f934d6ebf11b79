"""RankingClient (blocking) and AsyncRankingClient (asyncio) for the `pinrank` ensemble.

Both are thin layers over tritonclient: build tensors from the schema, call
`infer` with a deadline, retry only when the server was unreachable, and turn
every failure into a PinrankError. tritonclient is imported when a client is
created, not when pinrank_client is imported, so the request types stay usable
(and fast to import) where tritonclient is absent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Awaitable, Callable, Iterable, NoReturn, TypeVar

from numpy.typing import ArrayLike

from pinrank_client import schema
from pinrank_client._retry import RetryPolicy, acall_with_retries, call_with_retries
from pinrank_client._triton import (
    build_inputs,
    contract_mismatches,
    model_identity,
    normalize_index,
    normalize_metadata,
    read_outputs,
    requested_outputs,
)
from pinrank_client._url import Endpoint, parse_url
from pinrank_client.errors import PinrankError, map_exception
from pinrank_client.types import Action, ActionHistory, RankRequest, RankResponse

__all__ = ["RankingClient", "AsyncRankingClient", "Health", "DEFAULT_URL", "DEFAULT_TIMEOUT_S"]

T = TypeVar("T")

DEFAULT_URL = "localhost:8001"
#: Generous for a first request (model warm-up); set it to your latency budget.
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Health:
    """What the server says about itself. `error` says why, when it is unreachable."""

    url: str
    live: bool
    server_ready: bool  # every model in the repository loaded (strict readiness)
    model_ready: bool  # the ranking model this client calls is loaded
    error: str | None = None


def _reraise(exc: Exception, client: _Base) -> NoReturn:
    """Re-raise `exc` as a PinrankError (chained) if the SDK knows what it means."""
    mapped = map_exception(exc, url=client.url, timeout_s=client.timeout_s)
    if mapped is exc:
        raise exc
    raise mapped from exc


class _Base:
    """Configuration shared by the sync and async clients."""

    def __init__(
        self,
        url: str,
        protocol: str | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        model_name: str,
        model_version: str,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.endpoint: Endpoint = parse_url(url, protocol)
        self.timeout_s = float(timeout_s)
        self.retry_policy = RetryPolicy(retries, backoff_s, max_backoff_s)
        self.model_name = model_name
        self.model_version = model_version
        self._io: ModuleType  # tritonclient.grpc or .http: InferInput & co.
        if self.endpoint.protocol == "grpc":
            import tritonclient.grpc as io

            # gRPC takes a deadline per call; HTTP's is set on the connection.
            self._timeout_kw: dict[str, float] = {"client_timeout": self.timeout_s}
        else:
            import tritonclient.http as io

            self._timeout_kw = {}
        self._io = io
        self._outputs = requested_outputs(io)

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def protocol(self) -> str:
        return self.endpoint.protocol

    def _request(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action],
        top_k: int | None,
        request_ts_ms: int | None,
    ) -> RankRequest:
        return RankRequest(user_id, candidate_ids, actions, request_ts_ms=request_ts_ms, top_k=top_k)

    def _response(self, result: Any, latency_ms: float) -> RankResponse:
        name, version = model_identity(result, self.model_name)
        return RankResponse.from_arrays(
            read_outputs(result), model_name=name, model_version=version, latency_ms=latency_ms
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model_name!r}, timeout_s={self.timeout_s})"


class RankingClient(_Base):
    """Blocking client. Thread-safe for gRPC; for HTTP use one client per thread.

    `timeout_s` bounds each attempt; an unreachable server is retried up to
    `retries` times with jittered exponential backoff from `backoff_s`.
    The URL's scheme picks the protocol (http:// -> HTTP, grpc:// or bare
    host:port -> gRPC) unless `protocol` is given.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        protocol: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        model_name: str = schema.ENSEMBLE_MODEL,
        model_version: str = "",
    ) -> None:
        super().__init__(url, protocol, timeout_s, retries, backoff_s, max_backoff_s, model_name, model_version)
        # Tests swap this out to retry without waiting.
        self._sleep: Callable[[float], object] = time.sleep
        address, ssl = self.endpoint.address, self.endpoint.ssl
        try:
            if self.endpoint.protocol == "grpc":
                self._client: Any = self._io.InferenceServerClient(address, ssl=ssl)
            else:
                self._client = self._io.InferenceServerClient(
                    address, ssl=ssl, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
        except Exception as exc:
            _reraise(exc, self)
        self._closed = False

    # -- plumbing ---------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            _reraise(exc, self)

    def _retrying(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call_with_retries(lambda: self._call(fn, *args, **kwargs), self.retry_policy, sleep=self._sleep)

    # -- ranking ----------------------------------------------------------

    def rank(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action] = (),
        top_k: int | None = None,
        request_ts_ms: int | None = None,
    ) -> RankResponse:
        """Rank `candidate_ids` for `user_id` given their recent `actions`."""
        return self.rank_request(self._request(user_id, candidate_ids, actions, top_k, request_ts_ms))

    def rank_request(self, request: RankRequest) -> RankResponse:
        inputs = build_inputs(self._io, request.to_arrays())
        start = time.perf_counter()
        result = self._retrying(
            self._client.infer,
            self.model_name,
            inputs,
            model_version=self.model_version,
            outputs=self._outputs,
            **self._timeout_kw,
        )
        return self._response(result, (time.perf_counter() - start) * 1000.0)

    # -- health & metadata ------------------------------------------------

    def is_live(self) -> bool:
        """True if the server process answers; False if it does not (never raises)."""
        try:
            return bool(self._call(self._client.is_server_live, **self._timeout_kw))
        except PinrankError:
            return False

    def is_ready(self) -> bool:
        """True if the ranking model is loaded and can serve (never raises)."""
        try:
            return bool(
                self._call(self._client.is_model_ready, self.model_name, self.model_version, **self._timeout_kw)
            )
        except PinrankError:
            return False

    def health(self) -> Health:
        """Liveness and readiness in one call (never raises)."""
        try:
            live = bool(self._call(self._client.is_server_live, **self._timeout_kw))
            server_ready = bool(self._call(self._client.is_server_ready, **self._timeout_kw))
            model_ready = bool(
                self._call(self._client.is_model_ready, self.model_name, self.model_version, **self._timeout_kw)
            )
        except PinrankError as exc:
            return Health(self.url, False, False, False, error=str(exc))
        return Health(self.url, live, server_ready, model_ready)

    def model_metadata(self) -> dict[str, Any]:
        """The ranking model's name, versions, platform, inputs and outputs."""
        kw: dict[str, Any] = {"as_json": True, **self._timeout_kw} if self.protocol == "grpc" else {}
        return normalize_metadata(
            self._retrying(self._client.get_model_metadata, self.model_name, self.model_version, **kw)
        )

    def check_contract(self) -> list[str]:
        """How the served model's inputs/outputs differ from the schema (empty = they match)."""
        return contract_mismatches(self.model_metadata())

    def list_models(self) -> list[dict[str, str]]:
        """The server's model repository: name, version, state, reason per model."""
        kw: dict[str, Any] = {"as_json": True, **self._timeout_kw} if self.protocol == "grpc" else {}
        return normalize_index(self._retrying(self._client.get_model_repository_index, **kw))

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRankingClient(_Base):
    """asyncio client (tritonclient.grpc.aio / tritonclient.http.aio); same
    arguments and behaviour as RankingClient. Safe to share between tasks of
    one event loop. The connection is opened on first use, inside the loop."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        protocol: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        model_name: str = schema.ENSEMBLE_MODEL,
        model_version: str = "",
    ) -> None:
        super().__init__(url, protocol, timeout_s, retries, backoff_s, max_backoff_s, model_name, model_version)
        self._sleep: Callable[[float], Awaitable[object]] | None = None  # None = asyncio.sleep
        self._client: Any = None
        self._closed = False

    def _get_client(self) -> Any:
        # aiohttp sessions and grpc.aio channels bind to the running loop, so
        # they are created on first use rather than in __init__.
        if self._closed:
            raise PinrankError("the client is closed")
        if self._client is None:
            address, ssl = self.endpoint.address, self.endpoint.ssl
            try:
                if self.protocol == "grpc":
                    import tritonclient.grpc.aio as aio

                    self._client = aio.InferenceServerClient(address, ssl=ssl)
                else:
                    import tritonclient.http.aio as aio

                    self._client = aio.InferenceServerClient(address, ssl=ssl, conn_timeout=self.timeout_s)
            except Exception as exc:
                _reraise(exc, self)
        return self._client

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self._get_client(), method)(*args, **kwargs)
        except Exception as exc:
            _reraise(exc, self)

    async def _retrying(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def attempt() -> Awaitable[Any]:
            return self._call(method, *args, **kwargs)

        if self._sleep is None:
            return await acall_with_retries(attempt, self.retry_policy)
        return await acall_with_retries(attempt, self.retry_policy, sleep=self._sleep)

    async def rank(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action] = (),
        top_k: int | None = None,
        request_ts_ms: int | None = None,
    ) -> RankResponse:
        """Rank `candidate_ids` for `user_id` given their recent `actions`."""
        return await self.rank_request(self._request(user_id, candidate_ids, actions, top_k, request_ts_ms))

    async def rank_request(self, request: RankRequest) -> RankResponse:
        inputs = build_inputs(self._io, request.to_arrays())
        start = time.perf_counter()
        result = await self._retrying(
            "infer",
            self.model_name,
            inputs,
            model_version=self.model_version,
            outputs=self._outputs,
            **self._timeout_kw,
        )
        return self._response(result, (time.perf_counter() - start) * 1000.0)

    async def is_live(self) -> bool:
        try:
            return bool(await self._call("is_server_live", **self._timeout_kw))
        except PinrankError:
            return False

    async def is_ready(self) -> bool:
        try:
            return bool(await self._call("is_model_ready", self.model_name, self.model_version, **self._timeout_kw))
        except PinrankError:
            return False

    async def health(self) -> Health:
        try:
            live = bool(await self._call("is_server_live", **self._timeout_kw))
            server_ready = bool(await self._call("is_server_ready", **self._timeout_kw))
            model_ready = bool(
                await self._call("is_model_ready", self.model_name, self.model_version, **self._timeout_kw)
            )
        except PinrankError as exc:
            return Health(self.url, False, False, False, error=str(exc))
        return Health(self.url, live, server_ready, model_ready)

    async def model_metadata(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"as_json": True, **self._timeout_kw} if self.protocol == "grpc" else {}
        return normalize_metadata(await self._retrying("get_model_metadata", self.model_name, self.model_version, **kw))

    async def check_contract(self) -> list[str]:
        return contract_mismatches(await self.model_metadata())

    async def list_models(self) -> list[dict[str, str]]:
        kw: dict[str, Any] = {"as_json": True, **self._timeout_kw} if self.protocol == "grpc" else {}
        return normalize_index(await self._retrying("get_model_repository_index", **kw))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._client is not None:
                await self._client.close()

    async def __aenter__(self) -> AsyncRankingClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
