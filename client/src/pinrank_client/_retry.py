"""Bounded retries with exponential backoff and full jitter.

Only ServerUnavailableError is retried: it means the request never reached a
model (refused, restarting, queue full), so sending it again is safe and may
succeed. Timeouts are not retried: the server may still be working on the
request, and retrying a slow server only adds load to it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from pinrank_client.errors import ServerUnavailableError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts after the first; delays grow from `backoff_s`
    by doubling, capped at `max_backoff_s`, each drawn uniformly below that
    cap ("full jitter") so that many clients retrying at once spread out."""

    retries: int = 2
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")

    def delay_s(self, attempt: int, rand: float) -> float:
        """Delay before retry number `attempt` (0-based); `rand` is in [0, 1)."""
        return rand * min(self.max_backoff_s, self.backoff_s * (2.0**attempt))


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], object] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call `fn` until it returns, raises something other than
    ServerUnavailableError, or has been retried `policy.retries` times."""
    attempt = 0
    while True:
        try:
            return fn()
        except ServerUnavailableError:
            if attempt >= policy.retries:
                raise
            sleep(policy.delay_s(attempt, rand()))
            attempt += 1


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """The asyncio twin of call_with_retries."""
    attempt = 0
    while True:
        try:
            return await fn()
        except ServerUnavailableError:
            if attempt >= policy.retries:
                raise
            await sleep(policy.delay_s(attempt, rand()))
            attempt += 1
