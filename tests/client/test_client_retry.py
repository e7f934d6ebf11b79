"""Retry/backoff logic with injected callables, and the clients' use of it
with a fake tritonclient (no server)."""

import asyncio

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from pinrank_client import (
    AsyncRankingClient,
    InvalidRequestError,
    PinrankError,
    RankingClient,
    RankRequest,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    schema,
)
from pinrank_client._retry import acall_with_retries, call_with_retries

NOW = 1_718_000_000_000


class Flaky:
    """Raises `errors` in turn, then returns "ok"."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def unavailable():
    return ServerUnavailableError("down")


def test_unavailable_twice_then_success():
    fn, sleeps = Flaky(unavailable(), unavailable()), []
    assert call_with_retries(fn, RetryPolicy(retries=2), sleep=sleeps.append, rand=lambda: 1.0) == "ok"
    assert fn.calls == 3
    assert sleeps == [0.05, 0.1]  # exponential from backoff_s, full jitter at rand=1


def test_gives_up_after_retries():
    fn, sleeps = Flaky(*(unavailable() for _ in range(5))), []
    with pytest.raises(ServerUnavailableError):
        call_with_retries(fn, RetryPolicy(retries=2), sleep=sleeps.append)
    assert fn.calls == 3 and len(sleeps) == 2


def test_zero_retries_means_one_attempt():
    fn = Flaky(unavailable())
    with pytest.raises(ServerUnavailableError):
        call_with_retries(fn, RetryPolicy(retries=0), sleep=lambda s: pytest.fail("slept"))
    assert fn.calls == 1


@pytest.mark.parametrize("error", [RequestTimeoutError("slow"), InvalidRequestError("bad"), KeyError("bug")])
def test_only_unavailable_is_retried(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        call_with_retries(fn, RetryPolicy(retries=5), sleep=lambda s: pytest.fail("slept"))
    assert fn.calls == 1


def test_backoff_is_capped_and_jittered():
    policy = RetryPolicy(retries=10, backoff_s=0.1, max_backoff_s=0.5)
    assert [policy.delay_s(a, 1.0) for a in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay_s(3, 0.0) == 0.0
    assert policy.delay_s(1, 0.5) == pytest.approx(0.1)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_s=-0.1)


def test_async_retries():
    sleeps = []

    async def sleep(s):
        sleeps.append(s)

    errors = [unavailable(), unavailable()]

    async def fn():
        if errors:
            raise errors.pop(0)
        return "ok"

    assert asyncio.run(acall_with_retries(fn, RetryPolicy(retries=2), sleep=sleep, rand=lambda: 1.0)) == "ok"
    assert sleeps == [0.05, 0.1]


# --- the clients, over a fake tritonclient ---------------------------------------


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

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = []

    def infer(self, model_name, inputs, model_version="", outputs=None, **kw):
        self.calls.append((model_name, [i.name() for i in inputs], kw))
        if self.errors:
            raise self.errors.pop(0)
        return FakeResult(3)

    def close(self):
        pass


def refused():
    return InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


@pytest.mark.parametrize("url", ["grpc://localhost:1", "http://localhost:1"])
def test_client_retries_unavailable_then_parses(url):
    client = RankingClient(url, retries=2, timeout_s=0.5)
    sleeps = []
    client._sleep = sleeps.append
    fake = client._client = FakeTriton(refused(), ConnectionRefusedError(111, "Connection refused"))
    resp = client.rank_request(RankRequest(1, [5, 6, 7], request_ts_ms=NOW))
    assert len(fake.calls) == 3 and len(sleeps) == 2
    assert resp.model_version == "7" and len(resp) == 3 and resp.latency_ms >= 0
    name, inputs, kw = fake.calls[0]
    assert name == schema.ENSEMBLE_MODEL
    assert inputs == [s.name for s in schema.REQUEST_INPUTS if not s.optional]
    # gRPC gets a per-call deadline; HTTP's timeout lives on the connection.
    assert kw == ({"client_timeout": 0.5} if url.startswith("grpc") else {})


def test_client_does_not_retry_timeouts():
    client = RankingClient("grpc://localhost:1", retries=3)
    client._sleep = lambda s: pytest.fail("slept")
    client._client = FakeTriton(
        InferenceServerException(msg="Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    )
    with pytest.raises(RequestTimeoutError, match="no answer from grpc://localhost:1 within 5 s"):
        client.rank(1, [1], request_ts_ms=NOW)


def test_client_surfaces_server_validation_as_invalid_request():
    client = RankingClient("http://localhost:1")
    client._client = FakeTriton(
        InferenceServerException(msg="in ensemble 'pinrank', invalid request: top_k must be >= 1", status="400")
    )
    with pytest.raises(InvalidRequestError, match="^top_k must be >= 1$"):
        client.rank(1, [1], request_ts_ms=NOW)


def test_client_gives_up_with_the_last_error():
    client = RankingClient("grpc://localhost:1", retries=1)
    client._sleep = lambda s: None
    client._client = FakeTriton(refused(), refused(), refused())
    with pytest.raises(ServerUnavailableError, match="grpc://localhost:1 is unavailable"):
        client.rank(1, [1], request_ts_ms=NOW)
    assert len(client._client.calls) == 2


def test_invalid_requests_never_reach_the_server():
    client = RankingClient("grpc://localhost:1")
    client._client = FakeTriton()
    with pytest.raises(InvalidRequestError, match="candidate_ids is empty"):
        client.rank(1, [])
    assert client._client.calls == []


class AsyncFakeTriton(FakeTriton):
    async def infer(self, *args, **kw):  # type: ignore[override]
        return FakeTriton.infer(self, *args, **kw)

    async def close(self):
        pass


@pytest.mark.parametrize("url", ["grpc://localhost:1", "http://localhost:1"])
def test_async_client_retries_unavailable_then_parses(url):
    async def main():
        sleeps = []

        async def sleep(s):
            sleeps.append(s)

        async with AsyncRankingClient(url, retries=2) as client:
            client._sleep = sleep
            client._client = AsyncFakeTriton(refused(), refused())
            resp = await client.rank(1, [5, 6, 7], request_ts_ms=NOW)
            assert len(client._client.calls) == 3 and len(sleeps) == 2
            return resp

    assert asyncio.run(main()).model_version == "7"


def test_async_client_maps_errors_and_refuses_after_close():
    async def main():
        client = AsyncRankingClient("grpc://localhost:1", retries=0)
        client._client = AsyncFakeTriton(InferenceServerException(msg="boom", status="StatusCode.INTERNAL"))
        with pytest.raises(ServerError, match="^boom$"):
            await client.rank(1, [1], request_ts_ms=NOW)
        await client.close()
        with pytest.raises(PinrankError, match="closed"):
            await client.rank(1, [1], request_ts_ms=NOW)

    asyncio.run(main())
