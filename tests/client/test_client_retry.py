"""Retries, backoff, failover, per-call deadlines and rank_many: the policy with
injected callables, and the clients over fake tritonclient transports (no
server; tests/integration/test_client_sdk.py runs the same against the real one)."""

import asyncio
import logging
import threading
import time

import gevent
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from pinrank_client import (
    AsyncRankingClient,
    Health,
    InvalidArgumentError,
    InvalidRequestError,
    ModelNotReadyError,
    PinrankError,
    RankingClient,
    RankRequest,
    RequestTimeoutError,
    RetryEvent,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    parse_url,
    schema,
)
from pinrank_client._client_base import best_health
from pinrank_client._retry import EndpointPool, acall_with_retries, call_with_retries
from pinrank_client._triton import grpc_channel_args

NOW = 1_718_000_000_000
A, B, C = (parse_url(f"grpc://h{i}:1") for i in range(3))


class Flaky:
    """Raises `errors` in turn, then returns "ok"; records the endpoints it was called with."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = []

    def __call__(self, endpoint):
        self.calls.append(endpoint)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def unavailable():
    return ServerUnavailableError("down")


def pool(*endpoints, **kw):
    return EndpointPool(endpoints or (A,), **kw)


# --- the policy ----------------------------------------------------------------------


def test_unavailable_twice_then_success():
    fn, sleeps = Flaky(unavailable(), unavailable()), []
    assert call_with_retries(fn, RetryPolicy(retries=2), pool(), sleep=sleeps.append, rand=lambda: 1.0) == "ok"
    assert len(fn.calls) == 3
    assert sleeps == [0.2, 0.4]  # exponential from backoff_s; the cap itself at rand=1


def test_gives_up_after_retries():
    fn, sleeps = Flaky(*(unavailable() for _ in range(5))), []
    with pytest.raises(ServerUnavailableError):
        call_with_retries(fn, RetryPolicy(retries=2), pool(), sleep=sleeps.append)
    assert len(fn.calls) == 3 and len(sleeps) == 2


def test_zero_retries_means_one_attempt():
    fn = Flaky(unavailable())
    with pytest.raises(ServerUnavailableError):
        call_with_retries(fn, RetryPolicy(retries=0), pool(), sleep=lambda s: pytest.fail("slept"))
    assert len(fn.calls) == 1


@pytest.mark.parametrize(
    "error",
    [RequestTimeoutError("slow"), InvalidRequestError("bad"), ModelNotReadyError("loading"), KeyError("bug")],
)
def test_only_unavailable_is_retried(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        call_with_retries(fn, RetryPolicy(retries=5), pool(A, B), sleep=lambda s: pytest.fail("slept"))
    assert len(fn.calls) == 1


def test_backoff_is_capped_and_jittered():
    policy = RetryPolicy(retries=10, backoff_s=0.1, max_backoff_s=0.5)
    assert [policy.delay_s(a, 1.0) for a in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay_s(3, 0.0) == 0.25  # equal jitter: never below half the cap
    assert policy.delay_s(1, 0.5) == pytest.approx(0.15)


def test_default_retries_outlast_a_supervised_restart():
    # pinrank serve brings a crashed tritonserver back in about 1 s
    # (docs/reliability.md); the default retries must wait longer than that
    # even at the shortest jitter draw.
    policy = RetryPolicy()
    shortest = sum(policy.delay_s(a, 0.0) for a in range(policy.retries))
    longest = sum(policy.delay_s(a, 1.0) for a in range(policy.retries))
    assert 1.0 < shortest <= longest < 5.0


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_s=-0.1)
    with pytest.raises(ValueError):
        EndpointPool(())
    with pytest.raises(ValueError):
        EndpointPool((A,), cooldown_s=-1)


def test_async_retries():
    sleeps = []

    async def sleep(s):
        sleeps.append(s)

    fn = Flaky(unavailable(), unavailable())

    async def afn(endpoint):
        return fn(endpoint)

    result = asyncio.run(acall_with_retries(afn, RetryPolicy(retries=2), pool(), sleep=sleep, rand=lambda: 1.0))
    assert result == "ok" and sleeps == [0.2, 0.4]


def test_on_retry_hook_and_log(caplog):
    events = []
    fn = Flaky(unavailable(), unavailable())
    with caplog.at_level(logging.WARNING, logger="pinrank_client"):
        call_with_retries(fn, RetryPolicy(retries=3), pool(), sleep=lambda s: None, rand=lambda: 1.0,
                          on_retry=events.append)
    assert [(e.retry, e.url, e.delay_s) for e in events] == [(1, A.url, 0.2), (2, A.url, 0.4)]
    assert all(isinstance(e, RetryEvent) and isinstance(e.error, ServerUnavailableError) for e in events)
    assert [r.getMessage() for r in caplog.records] == ["down (retry 1 in 0.200 s)", "down (retry 2 in 0.400 s)"]


def test_a_broken_hook_does_not_fail_the_call(caplog):
    def hook(event):
        raise RuntimeError("metrics backend down")

    fn = Flaky(unavailable())
    assert call_with_retries(fn, RetryPolicy(retries=1), pool(), sleep=lambda s: None, on_retry=hook) == "ok"
    assert "on_retry hook raised" in caplog.text


# --- several servers: round robin and failover -------------------------------------------


def test_round_robin():
    p = pool(A, B, C)
    assert [p.pick() for _ in range(6)] == [A, B, C, A, B, C]


def test_down_servers_are_skipped_until_their_cooldown_ends():
    now = [0.0]
    p = pool(A, B, C, cooldown_s=5.0, clock=lambda: now[0])
    p.mark_down(B)
    assert p.is_down(B)
    assert [p.pick() for _ in range(4)] == [A, C, A, C]
    now[0] = 5.1
    assert not p.is_down(B)
    assert [p.pick() for _ in range(3)] == [A, B, C]
    p.mark_down(A)
    p.mark_up(A)  # a success clears the mark at once
    assert not p.is_down(A)


def test_when_every_server_is_down_they_are_still_tried():
    p = pool(A, B)
    p.mark_down(A)
    p.mark_down(B)
    assert {p.pick(), p.pick()} == {A, B}
    assert p.pick(avoid={A}) == B
    assert p.pick(avoid={A, B}) in (A, B)


def test_failover_moves_on_at_once_and_backs_off_only_after_a_full_pass():
    fn, sleeps, events = Flaky(unavailable(), unavailable(), unavailable(), unavailable()), [], []
    p = pool(A, B, C)
    result = call_with_retries(fn, RetryPolicy(retries=5), p, sleep=sleeps.append, rand=lambda: 1.0,
                               on_retry=events.append)
    assert result == "ok"
    assert fn.calls[:3] == [A, B, C]  # one pass over every server before any sleep
    assert [e.delay_s for e in events] == [0.0, 0.0, 0.2, 0.0]
    assert sleeps == [0.2]
    assert fn.calls[4] not in fn.calls[3:4]  # the second pass moves on too


def test_failover_is_bounded_by_retries():
    fn = Flaky(*(unavailable() for _ in range(10)))
    with pytest.raises(ServerUnavailableError):
        call_with_retries(fn, RetryPolicy(retries=4), pool(A, B), sleep=lambda s: None)
    assert len(fn.calls) == 5


def test_a_dead_server_costs_one_attempt_not_one_per_call():
    p = pool(A, B, cooldown_s=60)
    dead = Flaky(unavailable())
    assert call_with_retries(dead, RetryPolicy(retries=1), p, sleep=lambda s: None) == "ok"
    assert dead.calls == [A, B]
    later = [Flaky() for _ in range(3)]
    for fn in later:
        call_with_retries(fn, RetryPolicy(retries=1), p)
    assert [fn.calls for fn in later] == [[B], [B], [B]]


# --- the clients, over fake tritonclient transports -----------------------------------------


class FakeResult:
    def __init__(self, n):
        self.arrays = {
            "item_ids": np.arange(n, dtype=np.int64)[::-1].copy(),
            "scores": np.linspace(1, 0, n, dtype=np.float32),
            "head_probs": np.full((n, schema.NUM_HEADS), 0.5, dtype=np.float32),
        }

    def as_numpy(self, name):
        return self.arrays.get(name)

    def get_response(self):
        return {"model_name": "pinrank", "model_version": "7"}


class FakeTriton:
    """Stands in for tritonclient's InferenceServerClient: fails, then answers."""

    def __init__(self, *errors, delay_s=0.0):
        self.errors = list(errors)
        self.calls = []
        self.delay_s = delay_s
        self.closed = False
        self.ready = True
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    def infer(self, model_name, inputs, model_version="", outputs=None, **kw):
        self.calls.append((model_name, [i.name() for i in inputs], kw))
        if self.errors:
            raise self.errors.pop(0)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                self._sleep(self.delay_s)
        finally:
            with self._lock:
                self.in_flight -= 1
        n = next(i for i in inputs if i.name() == "candidate_ids").shape()[0]
        return FakeResult(min(n, 3))

    def _sleep(self, s):
        time.sleep(s)

    def is_server_live(self, **kw):
        if self.errors:
            raise self.errors.pop(0)
        return True

    def is_server_ready(self, **kw):
        return self.ready

    def is_model_ready(self, name, version="", **kw):
        return self.ready

    def close(self):
        self.closed = True


def refused():
    return InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


class Dead(FakeTriton):
    """Refuses everything, forever."""

    def __getattribute__(self, name):
        if name in ("infer", "is_server_live", "is_server_ready", "is_model_ready"):
            def refuse(*args, **kw):
                raise refused()

            return refuse
        return object.__getattribute__(self, name)


def sync_client(url, *fakes, **kw):
    """A RankingClient whose transport for the i-th endpoint is fakes[i]."""
    client = RankingClient(url, **kw)
    client._sleep = lambda s: None
    by_endpoint = dict(zip(client.endpoints, fakes))
    client._make_transport = lambda endpoint: by_endpoint[endpoint]
    return client


def request(n=3, **kw):
    return RankRequest(1, list(range(1, n + 1)), request_ts_ms=NOW, **kw)


@pytest.mark.parametrize("url", ["grpc://localhost:1", "http://localhost:1"])
def test_client_retries_unavailable_then_parses(url):
    fake = FakeTriton(refused(), ConnectionRefusedError(111, "Connection refused"))
    events = []
    client = sync_client(url, fake, retries=2, timeout_s=0.5, on_retry=events.append)
    resp = client.rank_request(request())
    assert len(fake.calls) == 3 and len(events) == 2
    assert resp.model_version == "7" and len(resp) == 3 and resp.latency_ms >= 0
    assert resp.url == url and resp.attempts == 3
    name, inputs, kw = fake.calls[0]
    assert name == schema.ENSEMBLE_MODEL
    assert inputs == [s.name for s in schema.REQUEST_INPUTS if not s.optional]
    # gRPC gets a per-call deadline; HTTP's is a gevent.Timeout around the call.
    assert kw == ({"client_timeout": 0.5} if url.startswith("grpc") else {})


def test_per_call_timeout_overrides_the_clients():
    fake = FakeTriton()
    client = sync_client("grpc://localhost:1", fake, timeout_s=5)
    client.rank(1, [1], request_ts_ms=NOW, timeout_s=0.25)
    client.rank_request(request(), timeout_s=2)
    assert [c[2]["client_timeout"] for c in fake.calls] == [0.25, 2.0]
    with pytest.raises(InvalidArgumentError, match="timeout_s must be a finite number of seconds > 0"):
        client.rank(1, [1], request_ts_ms=NOW, timeout_s=0)


def test_http_per_call_deadline_is_enforced_by_the_sdk():
    class Slow(FakeTriton):
        def _sleep(self, s):
            gevent.sleep(s)  # cooperative, as geventhttpclient's socket waits are

    fake = Slow(delay_s=5.0)
    client = sync_client("http://localhost:1", fake, retries=3)
    start = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"no answer from http://localhost:1 within 0.05 s"):
        client.rank_request(request(), timeout_s=0.05)
    assert time.monotonic() - start < 2.0
    assert len(fake.calls) == 1  # timeouts are not retried


def test_client_does_not_retry_timeouts():
    client = sync_client(
        "grpc://localhost:1",
        FakeTriton(InferenceServerException(msg="Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")),
        retries=3,
    )
    client._sleep = lambda s: pytest.fail("slept")
    with pytest.raises(RequestTimeoutError, match="no answer from grpc://localhost:1 within 5 s"):
        client.rank(1, [1], request_ts_ms=NOW)


def test_client_surfaces_server_validation_as_invalid_request():
    client = sync_client(
        "http://localhost:1",
        FakeTriton(InferenceServerException(msg="in ensemble 'pinrank', invalid request: top_k must be >= 1",
                                            status="400")),
    )
    with pytest.raises(InvalidRequestError, match="^top_k must be >= 1$") as err:
        client.rank(1, [1], request_ts_ms=NOW)
    assert err.value.status == "400"


def test_client_gives_up_with_the_last_error():
    fake = FakeTriton(refused(), refused(), refused())
    client = sync_client("grpc://localhost:1", fake, retries=1)
    with pytest.raises(ServerUnavailableError, match="grpc://localhost:1 is unavailable"):
        client.rank(1, [1], request_ts_ms=NOW)
    assert len(fake.calls) == 2


def test_invalid_requests_never_reach_the_server_unless_validation_is_off():
    fake = FakeTriton()
    client = sync_client("grpc://localhost:1", fake)
    with pytest.raises(InvalidRequestError, match="candidate_ids is empty"):
        client.rank(1, [])
    with pytest.raises(InvalidRequestError, match="too many candidates"):
        client.rank(1, range(schema.MAX_CANDIDATES + 1), request_ts_ms=NOW)
    assert fake.calls == []
    lax = sync_client("grpc://localhost:1", fake, validate=False)
    lax.rank(1, range(schema.MAX_CANDIDATES + 1), request_ts_ms=NOW)
    assert len(fake.calls) == 1
    with pytest.raises(InvalidRequestError, match="must hold integers"):
        lax.rank(1, ["a"])  # types are still checked: they could not be sent at all


def test_failover_between_servers_and_round_robin():
    dead, alive = FakeTriton(refused()), FakeTriton()
    events = []
    client = sync_client("grpc://a:1,grpc://b:1", dead, alive, on_retry=events.append, retries=1)
    first = client.rank_request(request())
    assert (first.url, first.attempts) == ("grpc://b:1", 2)
    assert [(e.url, e.delay_s) for e in events] == [("grpc://a:1", 0.0)]
    # a is cooling down: the next calls go straight to b.
    assert client.rank_request(request()).url == "grpc://b:1"
    # Both up: strict alternation.
    both = sync_client("grpc://a:1,grpc://b:1", FakeTriton(), FakeTriton())
    assert [both.rank_request(request()).url for _ in range(4)] == ["grpc://a:1", "grpc://b:1"] * 2


def test_urls_must_share_a_protocol():
    with pytest.raises(ValueError, match="one protocol"):
        RankingClient(["grpc://a:1", "http://b:2"])


def test_grpc_transport_is_created_once_and_reused():
    made = []

    def make(endpoint):
        made.append(endpoint)
        return FakeTriton()

    client = RankingClient("grpc://a:1")
    client._make_transport = make
    for _ in range(3):
        client.rank_request(request())
    client.rank_many([request() for _ in range(8)])
    assert made == [client.endpoint]


def test_rank_many_keeps_order_and_runs_concurrently():
    fake = FakeTriton(delay_s=0.05)
    client = sync_client("grpc://a:1", fake, max_concurrency=4)
    batch = [request(n) for n in (1, 2, 3, 1, 2, 3, 1, 2)]
    out = client.rank_many(batch)
    assert [len(r) for r in out] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert 1 < fake.max_in_flight <= 4
    assert client.rank_many([]) == []


def test_rank_many_errors():
    bad = InferenceServerException(msg="invalid request: nope", status="StatusCode.INVALID_ARGUMENT")
    fake = FakeTriton(bad)
    client = sync_client("grpc://a:1", fake, max_concurrency=1)
    with pytest.raises(InvalidRequestError, match="nope"):
        client.rank_many([request(), request()])
    fake.errors = [bad]
    out = client.rank_many([request(), request(2)], return_exceptions=True)
    assert isinstance(out[0], InvalidRequestError) and len(out[1]) == 2
    with pytest.raises(InvalidArgumentError, match="item 1 is a dict"):
        client.rank_many([request(), {"user_id": 1}])


def test_http_gets_one_transport_per_thread_and_close_reaches_them_all():
    made = []

    def make(endpoint):
        made.append(FakeTriton(delay_s=0.02))
        return made[-1]

    client = RankingClient("http://a:1", max_concurrency=3)
    client._make_transport = make
    client.rank_request(request())
    client.rank_many([request() for _ in range(9)])
    assert 2 <= len(made) <= 4  # the caller's thread + up to 3 workers
    client.close()
    assert all(f.closed for f in made)
    with pytest.raises(PinrankError, match="closed"):
        client.rank_request(request())


def test_health_picks_the_best_server_and_never_raises():
    down = Dead()
    loading = FakeTriton()
    loading.ready = False
    ready = FakeTriton()
    client = sync_client("grpc://a:1,grpc://b:1,grpc://c:1", down, loading, ready)
    statuses = client.health_all()
    assert [(h.live, h.model_ready) for h in statuses] == [(False, False), (True, False), (True, True)]
    assert "unavailable" in statuses[0].error
    assert client.health().url == "grpc://c:1"
    assert client.is_live() and client.is_ready()
    assert _best_of(Health("x", False, False, False, "e"), Health("y", True, False, False)).url == "y"


def _best_of(*healths):
    return best_health(healths)


def test_wait_until_ready():
    fake = FakeTriton()
    fake.ready = False
    client = sync_client("grpc://a:1", fake)
    polls = []

    def sleep(s):
        polls.append(s)
        if len(polls) == 3:
            fake.ready = True

    client._sleep = sleep
    assert client.wait_until_ready(timeout_s=30).model_ready and len(polls) == 3
    fake.ready = False
    client._sleep = lambda s: time.sleep(0.01)
    with pytest.raises(ModelNotReadyError, match="not ready at grpc://a:1 after 0.05 s"):
        client.wait_until_ready(timeout_s=0.05)
    gone = sync_client("grpc://a:1", FakeTriton(*(refused() for _ in range(100))))
    gone._sleep = lambda s: time.sleep(0.01)
    with pytest.raises(ServerUnavailableError, match="no server answered within 0.05 s"):
        gone.wait_until_ready(timeout_s=0.05)


def test_grpc_channel_reconnects_on_the_sdks_schedule():
    args = dict(grpc_channel_args(0.05, 1.0))
    assert args["grpc.initial_reconnect_backoff_ms"] == 50
    assert args["grpc.max_reconnect_backoff_ms"] == 1000
    # tritonclient's defaults are kept (passing channel_args replaces them).
    assert args["grpc.max_receive_message_length"] == 2**31 - 1
    assert "grpc.keepalive_time_ms" in args


# --- async ---------------------------------------------------------------------------------


class AsyncFakeTriton(FakeTriton):
    async def infer(self, model_name, inputs, model_version="", outputs=None, **kw):  # type: ignore[override]
        self.calls.append((model_name, [i.name() for i in inputs], kw))
        if self.errors:
            raise self.errors.pop(0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        n = next(i for i in inputs if i.name() == "candidate_ids").shape()[0]
        return FakeResult(min(n, 3))

    async def is_server_live(self, **kw):  # type: ignore[override]
        return FakeTriton.is_server_live(self, **kw)

    async def is_server_ready(self, **kw):  # type: ignore[override]
        return self.ready

    async def is_model_ready(self, *args, **kw):  # type: ignore[override]
        return self.ready

    async def close(self):  # type: ignore[override]
        self.closed = True


class AsyncDead(AsyncFakeTriton):
    def __getattribute__(self, name):
        if name in ("infer", "is_server_live", "is_server_ready", "is_model_ready"):
            async def refuse(*args, **kw):
                raise refused()

            return refuse
        return object.__getattribute__(self, name)


def async_client(url, *fakes, **kw):
    client = AsyncRankingClient(url, **kw)

    async def sleep(s):
        pass

    client._sleep = sleep
    by_endpoint = dict(zip(client.endpoints, fakes))
    client._make_transport = lambda endpoint: by_endpoint[endpoint]
    return client


@pytest.mark.parametrize("url", ["grpc://localhost:1", "http://localhost:1"])
def test_async_client_retries_unavailable_then_parses(url):
    async def main():
        events = []
        fake = AsyncFakeTriton(refused(), refused())
        async with async_client(url, fake, retries=2, on_retry=events.append) as client:
            resp = await client.rank(1, [5, 6, 7], request_ts_ms=NOW)
            assert len(fake.calls) == 3 and len(events) == 2
        assert fake.closed
        return resp

    resp = asyncio.run(main())
    assert resp.model_version == "7" and resp.attempts == 3 and resp.url == url


def test_async_http_per_call_deadline():
    async def main():
        fake = AsyncFakeTriton(delay_s=5.0)
        client = async_client("http://localhost:1", fake, retries=2)
        with pytest.raises(RequestTimeoutError, match="within 0.05 s"):
            await client.rank_request(request(), timeout_s=0.05)
        assert len(fake.calls) == 1
        grpc_fake = AsyncFakeTriton()
        grpc_client = async_client("grpc://localhost:1", grpc_fake)
        await grpc_client.rank_request(request(), timeout_s=0.3)
        assert grpc_fake.calls[0][2] == {"client_timeout": 0.3}

    asyncio.run(main())


def test_async_client_maps_errors_and_refuses_after_close():
    async def main():
        client = async_client(
            "grpc://localhost:1", AsyncFakeTriton(InferenceServerException(msg="boom", status="StatusCode.INTERNAL")),
            retries=0,
        )
        with pytest.raises(ServerError, match="^boom$"):
            await client.rank(1, [1], request_ts_ms=NOW)
        await client.close()
        with pytest.raises(PinrankError, match="closed"):
            await client.rank(1, [1], request_ts_ms=NOW)

    asyncio.run(main())


def test_async_rank_many():
    async def main():
        fake = AsyncFakeTriton(delay_s=0.02)
        client = async_client("grpc://a:1", fake, max_concurrency=3)
        out = await client.rank_many([request(n) for n in (3, 1, 2, 3, 1, 2)])
        assert [len(r) for r in out] == [3, 1, 2, 3, 1, 2]
        assert 1 < fake.max_in_flight <= 3
        bad = InferenceServerException(msg="Request for unknown model: 'pinrank' is not found",
                                       status="StatusCode.NOT_FOUND")
        fake.errors = [bad]
        mixed = await client.rank_many([request(), request(2)], return_exceptions=True)
        assert isinstance(mixed[0], ModelNotReadyError) and len(mixed[1]) == 2
        fake.errors = [bad]
        with pytest.raises(ModelNotReadyError):
            await client.rank_many([request() for _ in range(6)])
        assert await client.rank_many([]) == []

    asyncio.run(main())


def test_async_health_and_failover():
    async def main():
        dead, alive = AsyncDead(), AsyncFakeTriton()
        client = async_client("http://a:1,http://b:1", dead, alive, retries=1)
        assert (await client.rank_request(request())).url == "http://b:1"
        statuses = await client.health_all()
        assert [h.live for h in statuses] == [False, True]
        assert (await client.health()).url == "http://b:1"
        assert await client.is_ready()
        assert (await client.wait_until_ready(timeout_s=1)).model_ready

    asyncio.run(main())
