"""Serving under model updates and faults, against the real server
(`make reliability`): every scenario runs closed-loop SDK clients against
the ensemble while something changes underneath them, and counts what the
clients saw.

- swap / rollback: a new version (retrained ranker + new daily snapshot) is
  published with `pinrank export` into the served repository and switched to
  with explicit model control (load with a version-pinned config, admin key);
  then the old version is switched back the same way. Each answer is
  classified against in-process references of both versions, so "answers
  come from the new version afterwards" is checked, not assumed.
- restart: the server is SIGKILLed under load and started again; clients
  (SDK retries on) must see only typed errors, never a hung call.
- stub kill: one Python-backend stub process is SIGKILLed; Triton must
  restart it and serving must come back.
- soak: steady load while the server's and its stubs' RSS is sampled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pinrank.backend.postprocess import top_k
from pinrank.backend.preprocess import Preprocessor
from pinrank.backend.ranker_runtime import load_exported_ranker
from pinrank.serving.model_control import descendants
from pinrank_client import RankingClient
from pinrank_client.types import RankRequest

#: A call slower than the client timeout by this much counts as hung.
HANG_MARGIN_S = 5.0


@dataclass
class Outcome:
    t_start: float
    t_end: float
    label: str  # a version label ("v1", "v2"), "other" (matches none), or an error class name


@dataclass
class LoadGenerator:
    """`users` threads, each with its own SDK client, cycling over `probes`
    until stopped; every call's outcome is recorded."""

    url: str
    probes: list[dict[str, np.ndarray]]
    classify: Callable[[int, Any], str]
    users: int = 2
    retries: int = 0
    timeout_s: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _requests(self) -> list[Any]:
        return [RankRequest.from_arrays(
            int(p["user_id"][0]), p["candidate_ids"], action_item_ids=p["action_item_ids"],
            action_types=p["action_types"], action_ts_ms=p["action_ts_ms"], action_surfaces=p["action_surfaces"],
            request_ts_ms=int(p["request_ts_ms"][0]), top_k=int(p["top_k"][0])) for p in self.probes]

    def _run(self, offset: int, requests: list[Any]) -> None:
        with RankingClient(self.url, protocol="http", timeout_s=self.timeout_s, retries=self.retries,
                           backoff_s=0.2, max_backoff_s=1.0) as client:
            i = offset
            while not self._stop.is_set():
                k = i % len(requests)
                t0 = time.monotonic()
                try:
                    label = self.classify(k, client.rank_request(requests[k]))
                except Exception as exc:  # counted, by type: that is the measurement
                    label = type(exc).__name__
                    time.sleep(0.05)  # a dead server must not turn the loop into a busy spin
                with self._lock:
                    self.outcomes.append(Outcome(t0, time.monotonic(), label))
                i += 1

    def __enter__(self) -> "LoadGenerator":
        requests = self._requests()  # here, so a bad probe fails the scenario instead of a thread
        for u in range(self.users):
            t = threading.Thread(target=self._run, args=(u * 7, requests), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s * (self.retries + 1) + HANG_MARGIN_S)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


def count(outcomes: list[Outcome], t0: float = -np.inf, t1: float = np.inf) -> dict[str, int]:
    """Outcome labels of the calls that started in [t0, t1)."""
    out: dict[str, int] = {}
    for o in outcomes:
        if t0 <= o.t_start < t1:
            out[o.label] = out.get(o.label, 0) + 1
    return out


def any_answer(_k: int, _response: Any) -> str:
    """A classifier for scenarios where any answer is right (only failures count)."""
    return "ok"


def first_success_after(outcomes: list[Outcome], t: float) -> float | None:
    """Seconds from `t` to the end of the first successful call started after it."""
    ends = [o.t_end for o in outcomes if o.label == "ok" and o.t_start > t]
    return min(ends) - t if ends else None


def failures(counts: dict[str, int], versions: tuple[str, ...] = ("v1", "v2")) -> int:
    return sum(n for label, n in counts.items() if label not in versions and label != "other")


# --- references: what each published version must answer --------------------------------


def version_reference(version_dirs: dict[str, Path], runtime: str) -> Callable[[dict[str, np.ndarray]], dict]:
    """In-process answer of one published version: preprocess artifacts from
    `version_dirs["artifacts"]`, ranker files from `version_dirs["ranker"]`."""
    pre = Preprocessor.from_dir(version_dirs["artifacts"] / "artifacts")
    rank = load_exported_ranker(version_dirs["ranker"], runtime)

    def answer(req: dict[str, np.ndarray]) -> dict:
        res = pre(req)
        return top_k(res.passthrough["pp_candidate_ids"], rank(res.ranker_inputs), int(res.passthrough["pp_top_k"][0]))

    return answer


def classifier(expected: dict[str, list[dict]], atol: float = 1e-4) -> Callable[[int, Any], str]:
    """(probe index, RankResponse) -> the version label whose reference it matches, else "other"."""

    def classify(k: int, response: Any) -> str:
        scores = np.asarray([item.utility for item in response.items], dtype=np.float32)
        for label, refs in list(expected.items()):  # another thread may add a version
            ref = refs[k]["scores"]
            if scores.shape == ref.shape and np.allclose(scores, ref, atol=atol):
                return label
        return "other"

    return classify


# --- processes ------------------------------------------------------------------------------


def process_tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and its descendants (the Python-backend stubs), MiB."""
    total_kb = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


@contextlib.contextmanager
def rss_sampler(pid: int, every_s: float = 1.0) -> Iterator[list[tuple[float, float]]]:
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            samples.append((time.monotonic(), process_tree_rss_mb(pid)))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield samples
    finally:
        stop.set()
        t.join()


def rss_growth_pct(samples: list[tuple[float, float]]) -> float:
    """Mean RSS of the last fifth over the first fifth (after the first tenth,
    while caches and arenas settle), in percent."""
    rss = np.asarray([r for _, r in samples])
    if rss.size < 10:
        raise ValueError(f"need at least 10 RSS samples, got {rss.size}: run the soak longer")
    rss = rss[rss.size // 10:]
    fifth = max(1, rss.size // 5)
    first, last = rss[:fifth].mean(), rss[-fifth:].mean()
    return float((last - first) / first * 100)


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(every_s)
    return None


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
