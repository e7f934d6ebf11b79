"""Bounded retries with exponential backoff and full jitter, over one or
several servers (round robin, failover).

Only ServerUnavailableError is retried: it means the request never reached a
model (refused, restarting, queue full), and ranking is read-only, so sending
it again is safe and may succeed. Timeouts are not retried: the server may
still be working on the request, and retrying a slow server only adds load.

With several servers, a failed attempt moves to the next server at once (no
sleep: another server being down says nothing about this one), and the
client backs off only once every server has failed in this call. A server
that failed is skipped by later calls for `cooldown_s`, so one dead replica
costs one failed attempt, not one per call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Collection, Sequence, TypeVar

from pinrank_client._args import check_int, check_seconds
from pinrank_client._url import Endpoint
from pinrank_client.errors import InvalidArgumentError, ServerUnavailableError

T = TypeVar("T")

logger = logging.getLogger("pinrank_client")
# Silent unless the application configures logging: without this, Python's
# last-resort handler would print every retry to stderr (the CLI promises a
# single error line there).
logger.addHandler(logging.NullHandler())

__all__ = ["RetryPolicy", "RetryEvent", "EndpointPool", "call_with_retries", "acall_with_retries"]


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts after the first; delays grow from `backoff_s`
    by doubling, capped at `max_backoff_s`, each drawn uniformly between half
    that cap and the cap ("equal jitter"): clients retrying at once spread
    out, and the retries of one call always span at least half the caps' sum.

    The defaults span 1.2-2.4 s, longer than a supervised tritonserver
    takes to come back after a crash (about 1 s, docs/reliability.md), so a
    crash costs a caller latency rather than a failed call."""

    retries: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        check_int("retries", self.retries, minimum=0)
        check_seconds("backoff_s", self.backoff_s, allow_zero=True)
        check_seconds("max_backoff_s", self.max_backoff_s, allow_zero=True)

    def delay_s(self, attempt: int, rand: float) -> float:
        """Delay before backoff number `attempt` (0-based); `rand` is in [0, 1)."""
        cap = min(self.max_backoff_s, self.backoff_s * (2.0**attempt))
        return cap * (0.5 + 0.5 * rand)


@dataclass(frozen=True)
class RetryEvent:
    """What an `on_retry` hook is told before each retry of a call."""

    retry: int  # 1 for the first retry of this call, 2 for the second, ...
    url: str  # the server whose attempt just failed
    error: ServerUnavailableError  # why it failed
    delay_s: float  # sleep before the next attempt; 0.0 when failing over to another server


class EndpointPool:
    """Round robin over servers, skipping those that failed recently.

    Thread-safe: one pool is shared by every call (and thread) of a client,
    which is what makes the rotation and the cooldown global, not per call.
    """

    def __init__(
        self, endpoints: Sequence[Endpoint], *, cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not endpoints:
            raise InvalidArgumentError("an EndpointPool needs at least one endpoint")
        check_seconds("cooldown_s", cooldown_s, allow_zero=True)
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self.cooldown_s = float(cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0
        self._down_until: dict[Endpoint, float] = {}

    def __len__(self) -> int:
        return len(self.endpoints)

    def is_down(self, endpoint: Endpoint) -> bool:
        with self._lock:
            return self._down_until.get(endpoint, 0.0) > self._clock()

    def pick(self, avoid: Collection[Endpoint] = ()) -> Endpoint:
        """The next server in turn that is neither in `avoid` nor cooling down.

        When every server is cooling down, the next one not in `avoid` is
        used anyway (a dead fleet must still be retried, or it could never
        be seen coming back); when all are in `avoid`, plain round robin.
        """
        with self._lock:
            now, n = self._clock(), len(self.endpoints)
            order = [(self._next + i) % n for i in range(n)]
            for wanted in (
                lambda e: e not in avoid and self._down_until.get(e, 0.0) <= now,
                lambda e: e not in avoid,
                lambda e: True,
            ):
                for i in order:
                    if wanted(self.endpoints[i]):
                        self._next = (i + 1) % n
                        return self.endpoints[i]
        raise AssertionError("unreachable: the last filter accepts every endpoint")

    def mark_down(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._down_until[endpoint] = self._clock() + self.cooldown_s

    def mark_up(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._down_until.pop(endpoint, None)


class _Attempts:
    """The plan of one call: which server each attempt goes to and how long
    to wait before it. Shared by the sync and async loops below."""

    def __init__(self, policy: RetryPolicy, pool: EndpointPool, rand: Callable[[], float]) -> None:
        self.policy, self.pool, self.rand = policy, pool, rand
        self.retries = 0
        self._backoffs = 0
        self._tried: set[Endpoint] = set()

    def pick(self) -> Endpoint:
        return self.pool.pick(avoid=self._tried)

    def failed(self, endpoint: Endpoint) -> float | None:
        """Record a failure; the delay before the next attempt, or None to give up."""
        self.pool.mark_down(endpoint)
        self._tried.add(endpoint)
        if self.retries >= self.policy.retries:
            return None
        self.retries += 1
        if len(self._tried) < len(self.pool):
            return 0.0
        # Every server failed in this call: back off, then start a new pass.
        self._tried.clear()
        delay = self.policy.delay_s(self._backoffs, self.rand())
        self._backoffs += 1
        return delay


def _notify(on_retry: Callable[[RetryEvent], object] | None, event: RetryEvent) -> None:
    logger.warning("%s (retry %d in %.3f s)", event.error, event.retry, event.delay_s)
    if on_retry is not None:
        try:
            on_retry(event)
        except Exception:
            # A broken metrics hook must not turn a recoverable outage into a failed request.
            logger.exception("pinrank: on_retry hook raised")


def call_with_retries(
    fn: Callable[[Endpoint], T],
    policy: RetryPolicy,
    pool: EndpointPool,
    *,
    sleep: Callable[[float], object] = time.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[RetryEvent], object] | None = None,
) -> T:
    """Call `fn(endpoint)` until it returns, raises something other than
    ServerUnavailableError, or has been retried `policy.retries` times."""
    attempts = _Attempts(policy, pool, rand)
    endpoint = attempts.pick()
    while True:
        try:
            result = fn(endpoint)
        except ServerUnavailableError as exc:
            delay = attempts.failed(endpoint)
            if delay is None:
                raise
            _notify(on_retry, RetryEvent(attempts.retries, endpoint.url, exc, delay))
            if delay > 0:
                sleep(delay)
            endpoint = attempts.pick()
        else:
            pool.mark_up(endpoint)
            return result


async def acall_with_retries(
    fn: Callable[[Endpoint], Awaitable[T]],
    policy: RetryPolicy,
    pool: EndpointPool,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[RetryEvent], object] | None = None,
) -> T:
    """The asyncio twin of call_with_retries."""
    attempts = _Attempts(policy, pool, rand)
    endpoint = attempts.pick()
    while True:
        try:
            result = await fn(endpoint)
        except ServerUnavailableError as exc:
            delay = attempts.failed(endpoint)
            if delay is None:
                raise
            _notify(on_retry, RetryEvent(attempts.retries, endpoint.url, exc, delay))
            if delay > 0:
                await sleep(delay)
            endpoint = attempts.pick()
        else:
            pool.mark_up(endpoint)
            return result
