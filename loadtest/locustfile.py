"""Locust load test for the `pinrank` ensemble, through the pinrank-client SDK over HTTP.

HTTP, not gRPC: the SDK's HTTP transport (tritonclient.http on
geventhttpclient) cooperates with locust's gevent loop, while tritonclient.grpc
under gevent hung in a probe (ENVIRONMENT.md).

    PINRANK_REQUEST_POOL=results/loadtest/requests.npz \
        locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 30s --host http://127.0.0.1:8000

`loadtest/run_loadtest.py` (`make loadtest`) builds the pool and runs this
headless. Environment: PINRANK_REQUEST_POOL (an .npz from request_pool.py) or
PINRANK_DATA (a dataset to build 2,000 requests from; default
artifacts/data/quick), PINRANK_TIMEOUT_S (per-request deadline, default 10),
PINRANK_MAX_P99_MS / PINRANK_MAX_FAILURE_RATIO (the SLO gate, slo.py).

Every exception a call raises is a failed request in locust's statistics
(none escapes as a task error), and on quitting the gate sets locust's exit
code: 1 when nothing was sent, nothing succeeded, or a gate was missed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from locust import User, constant, events, task
from request_pool import (  # locust puts this file's folder on sys.path
    RequestPool,
    pool_from_dataset,
)
from slo import gates_from_env, violations

from pinrank_client import RankingClient
from pinrank_client.types import RankRequest

TIMEOUT_S = float(os.environ.get("PINRANK_TIMEOUT_S", "10"))
#: Per-size rows in locust's stats, next to the aggregate (cost grows with N).
N_BUCKETS = ((100, 299), (300, 599), (600, 1000))


def _load_requests() -> list[RankRequest]:
    pool_path = os.environ.get("PINRANK_REQUEST_POOL")
    if pool_path:
        pool = RequestPool.load(Path(pool_path))
    else:
        pool = pool_from_dataset(Path(os.environ.get("PINRANK_DATA", "artifacts/data/quick")), 2000)
    return pool.requests()


def bucket_name(n: int) -> str:
    lo, hi = next(((lo, hi) for lo, hi in N_BUCKETS if n <= hi), N_BUCKETS[-1])
    return f"rank N={lo}-{hi}"


REQUESTS: list[RankRequest] = []


GATES = gates_from_env()
log = logging.getLogger("pinrank.loadtest")


@events.init.add_listener
def _on_init(**_: object) -> None:
    # Once per process, before any user starts: validation and array building
    # stay out of the timed loop.
    REQUESTS.extend(_load_requests())


@events.quitting.add_listener
def _slo_gate(environment: Any, **_: object) -> None:
    """The same verdict as run_loadtest.py, as locust's exit code."""
    total = environment.stats.total
    p99 = total.get_response_time_percentile(0.99) if total.num_requests else float("nan")
    problems = violations(total.num_requests, total.num_failures, float(p99), **GATES)
    if problems:
        log.error("SLO gate failed: %s", "; ".join(problems))
        environment.process_exit_code = 1


class TritonRankUser(User):
    """One closed-loop caller: sends the next request as soon as one returns."""

    wait_time = constant(0)

    def on_start(self) -> None:
        # retries=0: a failed request is a failure in the report, not a hidden retry.
        self.client = RankingClient(self.host, protocol="http", timeout_s=TIMEOUT_S, retries=0)
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))

    def on_stop(self) -> None:
        self.client.close()

    @task
    def rank(self) -> None:
        req = REQUESTS[int(self.rng.integers(len(REQUESTS)))]
        start = time.perf_counter()
        exc: Exception | None = None
        try:
            resp = self.client.rank_request(req)
            if not resp.items:
                exc = RuntimeError("empty response")
        except Exception as e:  # every exception is a failed call, never a silent task error
            exc = e
        events.request.fire(
            request_type="triton-http", name=bucket_name(req.candidate_ids.size),
            response_time=(time.perf_counter() - start) * 1000, response_length=0, exception=exc, context={},
        )
