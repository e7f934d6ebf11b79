"""AsyncRankingClient, the asyncio client for the `pinrank` ensemble
(tritonclient.grpc.aio / tritonclient.http.aio).

It behaves as RankingClient (client.py) does, with coroutines; what the two
share is in _client_base.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping, Sequence, overload

from numpy.typing import ArrayLike

from pinrank_client import schema
from pinrank_client._args import check_seconds
from pinrank_client._client_base import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    ClientBase,
    Health,
    OnRetry,
    best_health,
    check_request,
    check_requests,
    raise_mapped,
    raise_not_ready,
)
from pinrank_client._retry import RetryPolicy, acall_with_retries
from pinrank_client._triton import (
    build_inputs,
    contract_mismatches,
    grpc_channel_args,
    normalize_index,
    normalize_metadata,
)
from pinrank_client._url import Endpoint
from pinrank_client.errors import PinrankError
from pinrank_client.types import Action, ActionHistory, ModelStats, RankRequest, RankResponse, parse_model_stats

__all__ = ["AsyncRankingClient"]


class AsyncRankingClient(ClientBase):
    """asyncio client (tritonclient.grpc.aio / tritonclient.http.aio); same
    arguments and behaviour as RankingClient. Safe to share between tasks of
    one event loop. Connections are opened on first use, inside the loop."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        protocol: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = RetryPolicy.retries,
        backoff_s: float = RetryPolicy.backoff_s,
        max_backoff_s: float = RetryPolicy.max_backoff_s,
        cooldown_s: float = 1.0,
        model_name: str = schema.ENSEMBLE_MODEL,
        model_version: str = "",
        validate: bool = True,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        headers: Mapping[str, str] | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        super().__init__(
            url, protocol, timeout_s, retries, backoff_s, max_backoff_s, cooldown_s,
            model_name, model_version, validate, max_concurrency, headers, on_retry,
        )  # fmt: skip
        self._sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
        self._clients: dict[Endpoint, Any] = {}
        self._closed = False

    def _make_transport(self, endpoint: Endpoint) -> Any:
        """A new tritonclient aio client for `endpoint` (tests replace this)."""
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpc_aio  # noqa: PLC0415 - only the protocol in use: each stack costs import time

            policy = self.retry_policy
            return grpc_aio.InferenceServerClient(
                endpoint.address,
                ssl=endpoint.ssl,
                channel_args=grpc_channel_args(policy.backoff_s, policy.max_backoff_s),
            )
        import tritonclient.http.aio as http_aio  # noqa: PLC0415 - only the protocol in use (aiohttp loads for HTTP only)

        # No session-wide timeout: every call gets its own (see _invoke).
        return http_aio.InferenceServerClient(endpoint.address, ssl=endpoint.ssl, conn_timeout=None)

    def _transport(self, endpoint: Endpoint) -> Any:
        # aiohttp sessions and grpc.aio channels bind to the running loop, so
        # they are created on first use rather than in __init__.
        if self._closed:
            raise PinrankError("the client is closed")
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self._make_transport(endpoint)
        return client

    async def _invoke(self, endpoint: Endpoint, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
        try:
            fn = getattr(self._transport(endpoint), method)
            if self.headers:
                kwargs["headers"] = self.headers
            if self.protocol == "grpc":
                return await fn(*args, client_timeout=timeout_s, **kwargs)
            start = time.monotonic()
            result = await asyncio.wait_for(fn(*args, **kwargs), timeout_s)
            # wait_for returns an answer that is ready when the loop gets to it,
            # even past the deadline (a busy CPU): late all the same.
            if time.monotonic() - start > timeout_s:
                raise TimeoutError("timed out")
            return result
        except PinrankError:
            raise
        except Exception as exc:  # CancelledError is a BaseException: cancellation passes through
            raise_mapped(exc, endpoint, timeout_s)

    async def _retrying(self, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> tuple[Any, Endpoint, int]:
        attempts = 0

        async def attempt(endpoint: Endpoint) -> tuple[Any, Endpoint]:
            nonlocal attempts
            attempts += 1
            return await self._invoke(endpoint, method, *args, timeout_s=timeout_s, **kwargs), endpoint

        result, endpoint = await acall_with_retries(
            attempt, self.retry_policy, self.pool, sleep=self._sleep, rand=self._rand, on_retry=self.on_retry
        )
        return result, endpoint, attempts

    async def rank(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action] = (),
        *,
        top_k: int | None = None,
        request_ts_ms: int | None = None,
        timeout_s: float | None = None,
    ) -> RankResponse:
        """Rank `candidate_ids` for `user_id` given their recent `actions`."""
        request = self._request(user_id, candidate_ids, actions, top_k, request_ts_ms)
        return await self.rank_request(request, timeout_s=timeout_s)

    async def rank_request(self, request: RankRequest, *, timeout_s: float | None = None) -> RankResponse:
        deadline = self._deadline(timeout_s)
        inputs = build_inputs(self._io, check_request(request).to_arrays())
        start = time.perf_counter()
        result, endpoint, attempts = await self._retrying(
            "infer",
            self.model_name,
            inputs,
            model_version=self.model_version,
            outputs=self._outputs,
            timeout_s=deadline,
        )
        return self._response(result, (time.perf_counter() - start) * 1000.0, endpoint, attempts)

    @overload
    async def rank_many(
        self,
        requests: Iterable[RankRequest],
        *,
        timeout_s: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[RankResponse]: ...

    @overload
    async def rank_many(
        self,
        requests: Iterable[RankRequest],
        *,
        timeout_s: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[RankResponse | PinrankError]: ...

    async def rank_many(
        self,
        requests: Iterable[RankRequest],
        *,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[RankResponse] | list[RankResponse | PinrankError]:
        """Rank many requests concurrently; see RankingClient.rank_many.

        On the first failure (return_exceptions=False) the other requests are
        cancelled, not left running behind the caller's back.
        """
        batch = check_requests(requests)
        self._deadline(timeout_s)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(request: RankRequest) -> RankResponse:
            async with gate:
                return await self.rank_request(request, timeout_s=timeout_s)

        tasks = [asyncio.ensure_future(one(r)) for r in batch]
        try:
            if not return_exceptions:
                return list(await asyncio.gather(*tasks))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            out: list[RankResponse | PinrankError] = []
            for item in results:
                if isinstance(item, PinrankError) or not isinstance(item, BaseException):
                    out.append(item)
                else:
                    raise item
            return out
        finally:
            for task in tasks:
                task.cancel()  # no-op for the finished ones

    async def _flag(self, endpoint: Endpoint, method: str, *args: Any, timeout_s: float) -> bool:
        try:
            return bool(await self._invoke(endpoint, method, *args, timeout_s=timeout_s))
        except PinrankError:
            return False

    async def _probe(self, endpoint: Endpoint, timeout_s: float) -> Health:
        try:
            live = bool(await self._invoke(endpoint, "is_server_live", timeout_s=timeout_s))
        except PinrankError as exc:
            return Health(endpoint.url, False, False, False, error=str(exc))
        server_ready = await self._flag(endpoint, "is_server_ready", timeout_s=timeout_s)
        model_ready = await self._flag(
            endpoint, "is_model_ready", self.model_name, self.model_version, timeout_s=timeout_s
        )
        return Health(endpoint.url, live, server_ready, model_ready)

    async def health_all(self, *, timeout_s: float | None = None) -> list[Health]:
        """Each server's liveness and readiness, in the order given (never raises)."""
        deadline = self._deadline(timeout_s)
        return list(await asyncio.gather(*(self._probe(e, deadline) for e in self.endpoints)))

    async def health(self, *, timeout_s: float | None = None) -> Health:
        """The healthiest server's status: one whose model is ready if any (never raises)."""
        return best_health(await self.health_all(timeout_s=timeout_s))

    async def is_live(self, *, timeout_s: float | None = None) -> bool:
        deadline = self._deadline(timeout_s)
        flags = await asyncio.gather(*(self._flag(e, "is_server_live", timeout_s=deadline) for e in self.endpoints))
        return any(flags)

    async def is_ready(self, *, timeout_s: float | None = None) -> bool:
        deadline = self._deadline(timeout_s)
        flags = await asyncio.gather(
            *(
                self._flag(e, "is_model_ready", self.model_name, self.model_version, timeout_s=deadline)
                for e in self.endpoints
            )
        )
        return any(flags)

    async def wait_until_ready(self, timeout_s: float = 60.0, *, poll_s: float = 0.25) -> Health:
        """Wait until the ranking model is ready on some server; see RankingClient.wait_until_ready."""
        deadline = time.monotonic() + self._checked_timeout(timeout_s)
        check_seconds("poll_s", poll_s)
        while True:
            health = await self.health(timeout_s=min(self.timeout_s, max(deadline - time.monotonic(), 0.05)))
            if health.model_ready:
                return health
            if time.monotonic() >= deadline:
                raise_not_ready(health, self.model_name, timeout_s)
            await self._sleep(poll_s)

    async def model_metadata(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        meta, _, _ = await self._retrying(
            "get_model_metadata",
            self.model_name,
            self.model_version,
            timeout_s=self._deadline(timeout_s),
            **self._meta_kw(),
        )
        return normalize_metadata(meta)

    async def check_contract(self, *, timeout_s: float | None = None) -> list[str]:
        return contract_mismatches(await self.model_metadata(timeout_s=timeout_s))

    async def list_models(self, *, timeout_s: float | None = None) -> list[dict[str, str]]:
        index, _, _ = await self._retrying(
            "get_model_repository_index", timeout_s=self._deadline(timeout_s), **self._meta_kw()
        )
        return normalize_index(index)

    async def stats(self, *, timeout_s: float | None = None) -> list[ModelStats]:
        """Each model's inference statistics; see RankingClient.stats."""
        data, endpoint, _ = await self._retrying(
            "get_inference_statistics", timeout_s=self._deadline(timeout_s), **self._meta_kw()
        )
        return parse_model_stats(data, url=endpoint.url)

    async def close(self) -> None:
        """Close every connection. Calls after close() raise PinrankError."""
        if self._closed:
            return
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> AsyncRankingClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
