"""Live traffic during a rollout: requests sent round-robin to every replica
the whole time, each answer or failure recorded. Its failure count is the
figure a rollout must keep at zero (`failed_requests_during_switch`).

Each replica is called directly, with no retries and no failover, as a
Service would route a request to one pod: a request that a switching replica
drops counts, rather than being hidden by a retry elsewhere.

    with BackgroundTraffic(["127.0.0.1:8000", "127.0.0.1:8001"], requests) as traffic:
        ...                                   # the rollout
    traffic.summary()["failed_requests"]      # 0

`summary(references)` also says which version answered: `references` maps a
label to one answer per request (`reference(address, requests)` captures
them from a replica serving that version); an answer that matches none of
them is "other" (an answer mixing two versions would be).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pinrank.rollout.fleet import bare_address
from pinrank_client import RankingClient
from pinrank_client.types import RankRequest

#: Scores that agree this closely are the same answer (the server computes in float32).
SAME_ANSWER_ATOL = 1e-4


@dataclass(frozen=True)
class Call:
    t_start: float
    t_end: float
    replica: str
    request: int
    #: "ExceptionType: message" when the call failed.
    error: str | None
    scores: np.ndarray | None


def _scores(response: Any) -> np.ndarray:
    return np.asarray([item.utility for item in response.items], dtype=np.float32)


def _client(address: str, timeout_s: float) -> RankingClient:
    return RankingClient(f"http://{bare_address(address)}", protocol="http", timeout_s=timeout_s, retries=0)


def reference(address: str, requests: Sequence[RankRequest], timeout_s: float = 10.0) -> list[np.ndarray]:
    """One replica's answer (scores, best first) to each request: a version's reference."""
    with _client(address, timeout_s) as client:
        return [_scores(client.rank_request(r)) for r in requests]


class BackgroundTraffic:
    """`workers` threads, each cycling over `requests` and over the replicas
    in turn, until the block ends; `pause_s` between a worker's calls keeps
    the load light enough for a small host."""

    def __init__(self, addresses: Sequence[str], requests: Sequence[RankRequest], *, workers: int = 1,
                 timeout_s: float = 10.0, pause_s: float = 0.01) -> None:
        if not addresses or not requests:
            raise ValueError("background traffic needs at least one replica and one request")
        self.addresses = [bare_address(a) for a in addresses]
        self.requests = list(requests)
        self.workers, self.timeout_s, self.pause_s = workers, timeout_s, pause_s
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, worker: int) -> None:
        clients = [_client(a, self.timeout_s) for a in self.addresses]
        try:
            i = worker
            while not self._stop.is_set():
                # Shifting the replica each pass over the requests sends every request to every replica.
                k, r = i % len(self.requests), (i + i // len(self.requests)) % len(clients)
                t0 = time.monotonic()
                error, scores = None, None
                try:
                    scores = _scores(clients[r].rank_request(self.requests[k]))
                except Exception as exc:  # counted: that is the measurement
                    error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._calls.append(Call(t0, time.monotonic(), self.addresses[r], k, error, scores))
                i += 1
                self._stop.wait(self.pause_s)
        finally:
            for client in clients:
                client.close()

    def __enter__(self) -> BackgroundTraffic:
        for w in range(self.workers):
            thread = threading.Thread(target=self._run, args=(w,), daemon=True, name=f"rollout-traffic-{w}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5.0)

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def label(self, call: Call, references: Mapping[str, Sequence[np.ndarray]]) -> str:
        if call.error is not None or call.scores is None:
            return "failed"
        for name, answers in references.items():
            ref = answers[call.request]
            if ref.shape == call.scores.shape and np.allclose(ref, call.scores, atol=SAME_ANSWER_ATOL):
                return name
        return "other"

    def summary(self, references: Mapping[str, Sequence[np.ndarray]] | None = None) -> dict[str, Any]:
        calls = self.calls()
        failed = [c for c in calls if c.error is not None]
        errors: dict[str, int] = {}
        for c in failed:
            kind = str(c.error).split(":", 1)[0]
            errors[kind] = errors.get(kind, 0) + 1
        out: dict[str, Any] = {
            "requests": len(calls), "failed_requests": len(failed), "errors": errors,
            "error_samples": [c.error for c in failed[:5]],
            "by_replica": {a: {"requests": sum(c.replica == a for c in calls),
                               "failed": sum(c.replica == a for c in failed)} for a in self.addresses},
            "seconds": round(calls[-1].t_end - calls[0].t_start, 3) if calls else 0.0,
        }
        if references is not None:
            versions: dict[str, int] = {}
            for c in calls:
                name = self.label(c, references)
                versions[name] = versions.get(name, 0) + 1
            out["versions"] = versions
        return out
