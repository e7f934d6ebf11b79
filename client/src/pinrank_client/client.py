"""RankingClient, the blocking client for the `pinrank` ensemble.

A thin layer over tritonclient: build tensors from the schema, call `infer`
with a deadline, retry (and fail over between servers) only when a server was
unreachable, and turn every failure into a PinrankError. tritonclient is
imported when a client is created, not when pinrank_client is imported, so the
request types stay usable (and fast to import) where tritonclient is absent.
What it shares with AsyncRankingClient (aio.py) is in _client_base.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, overload

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
from pinrank_client._retry import RetryPolicy, call_with_retries
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

# The defaults stay importable from here: they are RankingClient's, and the CLI
# and callers import them with it.
__all__ = ["RankingClient", "DEFAULT_URL", "DEFAULT_TIMEOUT_S", "DEFAULT_MAX_CONCURRENCY"]


class RankingClient(ClientBase):
    """Blocking client; thread-safe for gRPC and HTTP alike.

    `url` is one server or several (a list, or one comma-separated string):
    calls rotate between them and fail over when one is unreachable. The
    scheme picks the protocol (http:// -> HTTP, grpc:// or bare host:port ->
    gRPC) unless `protocol` is given. `timeout_s` bounds each attempt and can
    be overridden per call; an unreachable server is retried up to `retries`
    times with jittered exponential backoff from `backoff_s`, and `on_retry`
    is called before each retry.
    """

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
        # Tests swap this out to retry without waiting.
        self._sleep: Callable[[float], object] = time.sleep
        self._lock = threading.Lock()
        self._closed = False
        # gRPC clients are thread-safe: one channel per server, shared.
        self._grpc: dict[Endpoint, Any] = {}
        # geventhttpclient's connection pool belongs to the thread (gevent hub)
        # that made it, so HTTP gets one client per thread and server; the
        # list lets close() reach them and lets dead threads' clients be reaped.
        self._local = threading.local()
        self._http: list[tuple[weakref.ref[threading.Thread], Any]] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # -- plumbing ---------------------------------------------------------

    def _make_transport(self, endpoint: Endpoint) -> Any:
        """A new tritonclient client for `endpoint` (tests replace this)."""
        if self.protocol == "grpc":
            policy = self.retry_policy
            return self._io.InferenceServerClient(
                endpoint.address,
                ssl=endpoint.ssl,
                channel_args=grpc_channel_args(policy.backoff_s, policy.max_backoff_s),
            )
        # Every call runs under its own gevent.Timeout (see _invoke); the
        # socket timeouts are only a backstop. They are needed because
        # geventhttpclient tries each address a host name resolves to and
        # treats the deadline firing during one connect as that address
        # failing, then goes on to the next with no deadline left. The read
        # backstop is generous so that a per-call timeout longer than the
        # client's default still works (up to 60 s).
        return self._io.InferenceServerClient(
            endpoint.address,
            ssl=endpoint.ssl,
            concurrency=1,
            connection_timeout=self.timeout_s,
            network_timeout=max(self.timeout_s, 60.0),
        )

    def _transport(self, endpoint: Endpoint) -> Any:
        if self._closed:
            raise PinrankError("the client is closed")
        if self.protocol == "grpc":
            with self._lock:
                client = self._grpc.get(endpoint)
                if client is None:
                    client = self._grpc[endpoint] = self._make_transport(endpoint)
            return client
        clients: dict[Endpoint, Any] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(endpoint)
        if client is None:
            client = clients[endpoint] = self._make_transport(endpoint)
            with self._lock:
                self._reap_dead_threads()
                self._http.append((weakref.ref(threading.current_thread()), client))
        return client

    def _reap_dead_threads(self) -> None:
        # Without this, a service that spawns a thread per task would keep
        # one open connection per thread it ever had. Called under _lock.
        alive = []
        for ref, client in self._http:
            thread = ref()
            if thread is not None and thread.is_alive():
                alive.append((ref, client))
            else:
                with contextlib.suppress(Exception):
                    client.close()
        self._http = alive

    def _invoke(self, endpoint: Endpoint, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
        """One attempt of `method` against one server, errors mapped."""
        try:
            fn = getattr(self._transport(endpoint), method)
            if self.headers:
                kwargs["headers"] = self.headers
            if self.protocol == "grpc":
                return fn(*args, client_timeout=timeout_s, **kwargs)
            import gevent  # noqa: PLC0415 - HTTP calls only; importing gevent at SDK import would tie every user to it

            # geventhttpclient fixes socket timeouts per connection, so a
            # gevent.Timeout gives each call its own deadline. It raises an
            # OSError subclass on purpose: geventhttpclient gives the pooled
            # socket back on socket errors, and would leak it on a bare
            # gevent.Timeout (a BaseException), hanging the next call.
            start = time.monotonic()
            with gevent.Timeout(timeout_s, TimeoutError("timed out")):
                result = fn(*args, **kwargs)
            # gevent fires the timer only while the call waits: an answer read in
            # one go after the deadline (a busy CPU) is late all the same.
            if time.monotonic() - start > timeout_s:
                raise TimeoutError("timed out")
            return result
        except PinrankError:
            raise
        except Exception as exc:
            raise_mapped(exc, endpoint, timeout_s)

    def _retrying(self, method: str, *args: Any, timeout_s: float, **kwargs: Any) -> tuple[Any, Endpoint, int]:
        """`method` with retries and failover: (result, server that answered, attempts)."""
        attempts = 0

        def attempt(endpoint: Endpoint) -> tuple[Any, Endpoint]:
            nonlocal attempts
            attempts += 1
            return self._invoke(endpoint, method, *args, timeout_s=timeout_s, **kwargs), endpoint

        result, endpoint = call_with_retries(
            attempt, self.retry_policy, self.pool, sleep=self._sleep, rand=self._rand, on_retry=self.on_retry
        )
        return result, endpoint, attempts

    # -- ranking ----------------------------------------------------------

    def rank(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action] = (),
        *,
        top_k: int | None = None,
        request_ts_ms: int | None = None,
        timeout_s: float | None = None,
    ) -> RankResponse:
        """Rank `candidate_ids` for `user_id` given their recent `actions`.

        `timeout_s` overrides the client's per-attempt timeout for this call.
        """
        request = self._request(user_id, candidate_ids, actions, top_k, request_ts_ms)
        return self.rank_request(request, timeout_s=timeout_s)

    def rank_request(self, request: RankRequest, *, timeout_s: float | None = None) -> RankResponse:
        """Send a prepared RankRequest (validated when it was built)."""
        deadline = self._deadline(timeout_s)
        inputs = build_inputs(self._io, check_request(request).to_arrays())
        start = time.perf_counter()
        result, endpoint, attempts = self._retrying(
            "infer",
            self.model_name,
            inputs,
            model_version=self.model_version,
            outputs=self._outputs,
            timeout_s=deadline,
        )
        return self._response(result, (time.perf_counter() - start) * 1000.0, endpoint, attempts)

    @overload
    def rank_many(
        self,
        requests: Iterable[RankRequest],
        *,
        timeout_s: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[RankResponse]: ...

    @overload
    def rank_many(
        self,
        requests: Iterable[RankRequest],
        *,
        timeout_s: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[RankResponse | PinrankError]: ...

    def rank_many(
        self,
        requests: Iterable[RankRequest],
        *,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[RankResponse] | list[RankResponse | PinrankError]:
        """Rank many requests concurrently (up to `max_concurrency` in flight).

        Results come back in the order of `requests`. Each request is retried
        on its own. By default the first failure is raised and the requests
        not yet started are dropped; with `return_exceptions=True` a failed
        request's PinrankError takes its place in the list instead (anything
        else, i.e. a bug, is still raised).
        """
        batch = check_requests(requests)
        self._deadline(timeout_s)  # a bad timeout fails here, not n times in the pool
        if not batch:
            return []
        executor = self._get_executor()
        futures = [executor.submit(self.rank_request, r, timeout_s=timeout_s) for r in batch]
        try:
            if not return_exceptions:
                concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
                for future in futures:
                    if future.done():
                        failure = future.exception()
                        if failure is not None:
                            raise failure
                return [f.result() for f in futures]
            out: list[RankResponse | PinrankError] = []
            for future in futures:
                exc = future.exception()
                if exc is None:
                    out.append(future.result())
                elif isinstance(exc, PinrankError):
                    out.append(exc)
                else:
                    raise exc
            return out
        finally:
            for future in futures:
                future.cancel()  # no-op for the finished and the running

    def _get_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise PinrankError("the client is closed")
            if self._executor is None:
                # Threads, not one gevent loop: they serve gRPC and HTTP alike,
                # and each keeps its connections open for the next batch.
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix="pinrank-client"
                )
            return self._executor

    # -- health & metadata ------------------------------------------------

    def _flag(self, endpoint: Endpoint, method: str, *args: Any, timeout_s: float) -> bool:
        try:
            return bool(self._invoke(endpoint, method, *args, timeout_s=timeout_s))
        except PinrankError:
            return False

    def _probe(self, endpoint: Endpoint, timeout_s: float) -> Health:
        try:
            live = bool(self._invoke(endpoint, "is_server_live", timeout_s=timeout_s))
        except PinrankError as exc:
            return Health(endpoint.url, False, False, False, error=str(exc))
        server_ready = self._flag(endpoint, "is_server_ready", timeout_s=timeout_s)
        model_ready = self._flag(endpoint, "is_model_ready", self.model_name, self.model_version, timeout_s=timeout_s)
        return Health(endpoint.url, live, server_ready, model_ready)

    def health_all(self, *, timeout_s: float | None = None) -> list[Health]:
        """Each server's liveness and readiness, in the order given (never raises)."""
        deadline = self._deadline(timeout_s)
        return [self._probe(endpoint, deadline) for endpoint in self.endpoints]

    def health(self, *, timeout_s: float | None = None) -> Health:
        """The healthiest server's status: one whose model is ready if any (never raises)."""
        return best_health(self.health_all(timeout_s=timeout_s))

    def is_live(self, *, timeout_s: float | None = None) -> bool:
        """True if any server answers (never raises)."""
        deadline = self._deadline(timeout_s)
        return any(self._flag(e, "is_server_live", timeout_s=deadline) for e in self.endpoints)

    def is_ready(self, *, timeout_s: float | None = None) -> bool:
        """True if the ranking model is loaded on any server (never raises)."""
        deadline = self._deadline(timeout_s)
        return any(
            self._flag(e, "is_model_ready", self.model_name, self.model_version, timeout_s=deadline)
            for e in self.endpoints
        )

    def wait_until_ready(self, timeout_s: float = 60.0, *, poll_s: float = 0.25) -> Health:
        """Block until the ranking model is ready on some server, e.g. at service start.

        Raises ServerUnavailableError if no server answered within `timeout_s`,
        ModelNotReadyError if one answered but the model never became ready.
        """
        deadline = time.monotonic() + self._checked_timeout(timeout_s)
        check_seconds("poll_s", poll_s)
        while True:
            health = self.health(timeout_s=min(self.timeout_s, max(deadline - time.monotonic(), 0.05)))
            if health.model_ready:
                return health
            if time.monotonic() >= deadline:
                raise_not_ready(health, self.model_name, timeout_s)
            self._sleep(poll_s)

    def model_metadata(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The ranking model's name, versions, platform, inputs and outputs."""
        meta, _, _ = self._retrying(
            "get_model_metadata",
            self.model_name,
            self.model_version,
            timeout_s=self._deadline(timeout_s),
            **self._meta_kw(),
        )
        return normalize_metadata(meta)

    def check_contract(self, *, timeout_s: float | None = None) -> list[str]:
        """How the served model's inputs/outputs differ from the schema (empty = they match)."""
        return contract_mismatches(self.model_metadata(timeout_s=timeout_s))

    def list_models(self, *, timeout_s: float | None = None) -> list[dict[str, str]]:
        """The server's model repository: name, version, state, reason per model."""
        index, _, _ = self._retrying(
            "get_model_repository_index", timeout_s=self._deadline(timeout_s), **self._meta_kw()
        )
        return normalize_index(index)

    def stats(self, *, timeout_s: float | None = None) -> list[ModelStats]:
        """Each model's inference statistics since the server started: the
        ensemble and each of its steps, one ModelStats per model version.

        Served without the admin key. With several servers, the one whose turn
        it is answers (ModelStats.url says which): give one URL to read a
        particular server's.
        """
        data, endpoint, _ = self._retrying(
            "get_inference_statistics", timeout_s=self._deadline(timeout_s), **self._meta_kw()
        )
        return parse_model_stats(data, url=endpoint.url)

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Close every connection. Calls after close() raise PinrankError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            clients = list(self._grpc.values()) + [client for _, client in self._http]
            self._grpc, self._http = {}, []
        for client in clients:
            with contextlib.suppress(Exception):  # closing must reach every client
                client.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
