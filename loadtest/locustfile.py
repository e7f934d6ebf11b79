"""Locust load test for the `pinrank` ensemble over HTTP.

HTTP, not gRPC: tritonclient.http rides geventhttpclient and cooperates with
locust's gevent loop, while tritonclient.grpc blocks it (see docs).

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 30s --host http://127.0.0.1:8000

Environment: PINRANK_CANDIDATES (default 500), PINRANK_ACTIONS (default 100),
PINRANK_ITEM_ID_MAX / PINRANK_USER_ID_MAX (id ranges to draw from).
"""

from __future__ import annotations

import os
import time

import numpy as np
import tritonclient.http as httpclient
from locust import User, between, events, task

from pinrank_client import schema
from pinrank_client._triton import build_inputs
from pinrank_client.types import RankRequest

CANDIDATES = int(os.environ.get("PINRANK_CANDIDATES", "500"))
ACTIONS = int(os.environ.get("PINRANK_ACTIONS", str(schema.REALTIME_SEQ_LEN)))
ITEM_ID_MAX = int(os.environ.get("PINRANK_ITEM_ID_MAX", "5000"))
USER_ID_MAX = int(os.environ.get("PINRANK_USER_ID_MAX", "2000"))


def random_request(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A contract-valid request: ids in range, history in the last 3 days."""
    now = int(time.time() * 1000)
    req = RankRequest.from_arrays(
        user_id=int(rng.integers(0, USER_ID_MAX)),
        candidate_ids=rng.choice(ITEM_ID_MAX, size=CANDIDATES, replace=False),
        action_item_ids=rng.integers(0, ITEM_ID_MAX, size=ACTIONS),
        action_types=rng.integers(1, schema.NUM_ACTION_IDS, size=ACTIONS),
        action_surfaces=rng.integers(0, schema.NUM_SURFACE_IDS, size=ACTIONS),
        action_ts_ms=now - rng.integers(0, 3 * 86_400_000, size=ACTIONS),
        request_ts_ms=now,
        top_k=10,
    )
    return req.to_arrays()


class TritonRankUser(User):
    wait_time = between(0, 0)

    def on_start(self) -> None:
        host = self.host.replace("http://", "").replace("https://", "")
        self.client = httpclient.InferenceServerClient(host, connection_timeout=10, network_timeout=30)
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))

    @task
    def rank(self) -> None:
        inputs = build_inputs(httpclient, random_request(self.rng))
        start = time.perf_counter()
        exc = None
        try:
            result = self.client.infer(schema.ENSEMBLE_MODEL, inputs)
            if result.as_numpy("item_ids").size == 0:
                exc = RuntimeError("empty response")
        except Exception as e:  # every failure is reported to locust, none crash the user
            exc = e
        events.request.fire(
            request_type="triton-http", name=f"{schema.ENSEMBLE_MODEL} N={CANDIDATES}",
            response_time=(time.perf_counter() - start) * 1000, response_length=0, exception=exc, context={},
        )
