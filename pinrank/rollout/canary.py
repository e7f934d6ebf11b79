"""The canary check: the same real requests to the new version and to the
old one, and the decision whether the new one may take the fleet.

The new version fails when any request errs, any answer breaks the contract
(pinrank.rollout.contract), the served model's metadata differs from the
schema, or its p99 latency exceeds `max_latency_ratio` x the old version's
p99 + `latency_slack_ms` (or `max_p99_ms`). The slack keeps a few ms of
scheduling noise on a busy host from failing a version whose p99 is itself
a few ms. Requests go to the two alternately (old first, then new first) so
that noise in between hits both. The first `warmup` requests of each side
are checked but not timed: a freshly loaded version pays one-off costs
(first calls through new stubs) that steady traffic never sees. A verdict
that failed on latency alone says so (`latency_only`): the rollout then
measures once more before failing the canary, since the p99 of a few dozen
requests is one scheduling spike away from any bound on a shared host.

An old side that fails is no baseline: the canary then fails too, since
nothing says the new version is as good as the old."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pinrank.rollout.contract import contract_problems
from pinrank.rollout.fleet import Replica
from pinrank_client.types import RankRequest

#: How many examples of each kind of finding the report keeps.
SAMPLES = 5


@dataclass(frozen=True)
class CanaryPolicy:
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 2.0
    max_p99_ms: float | None = None


@dataclass
class Measurement:
    """One side's answers to the canary requests."""

    address: str
    version: int | None
    latencies_ms: list[float] = field(default_factory=list)
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.answered + len(self.errors)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def send(self, replica: Replica, index: int, request: RankRequest, timed: bool) -> None:
        try:
            response = replica.rank(request)
        except Exception as exc:  # any failure of a canary request is a finding, not a crash of the rollout
            self.errors.append(f"request {index}: {type(exc).__name__}: {exc}")
            return
        self.answered += 1
        self.problems += [f"request {index}: {p}" for p in contract_problems(request, response)]
        if timed:
            self.latencies_ms.append(response.latency_ms)

    def summary(self) -> dict[str, Any]:
        p50, p99 = self.percentile(50), self.percentile(99)
        return {"address": self.address, "version": self.version, "requests": self.sent,
                "timed": len(self.latencies_ms),
                "p50_ms": None if p50 is None else round(p50, 3), "p99_ms": None if p99 is None else round(p99, 3),
                "errors": len(self.errors), "error_samples": self.errors[:SAMPLES],
                "contract_problems": len(self.problems), "contract_problem_samples": self.problems[:SAMPLES]}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    latency_bound_ms: float | None
    forced: bool = False
    #: Failed on latency alone (no error, no contract problem, no drill): worth measuring again.
    latency_only: bool = False


def measure(replica: Replica, version: int | None, requests: Sequence[RankRequest], warmup: int) -> Measurement:
    out = Measurement(replica.address, version)
    for i, request in enumerate(requests):
        out.send(replica, i, request, timed=i >= warmup)
    return out


def measure_pair(old: Replica, old_version: int, new: Replica, new_version: int, requests: Sequence[RankRequest],
                 warmup: int) -> tuple[Measurement, Measurement]:
    """Each request to both replicas, alternating which goes first."""
    sides = [(old, Measurement(old.address, old_version)), (new, Measurement(new.address, new_version))]
    for i, request in enumerate(requests):
        for replica, measurement in (sides if i % 2 == 0 else sides[::-1]):
            measurement.send(replica, i, request, timed=i >= warmup)
    return sides[0][1], sides[1][1]


def _first(findings: list[str]) -> str:
    return f" (first: {findings[0]})" if findings else ""


def judge(old: Measurement, new: Measurement, policy: CanaryPolicy, *, force_failure: bool = False) -> Verdict:
    """Whether `new` may replace `old`; the reasons when not."""
    reasons: list[str] = []
    for side, m in (("new", new), ("old", old)):
        if m.errors:
            reasons.append(f"{len(m.errors)} of {m.sent} requests to the {side} version failed{_first(m.errors)}")
        if m.problems:
            reasons.append(f"{len(m.problems)} answer(s) of the {side} version break the contract"
                           f"{_first(m.problems)}")
    other_reasons = len(reasons)
    bound = None
    old_p99, new_p99 = old.percentile(99), new.percentile(99)
    if old_p99 is None or new_p99 is None:
        reasons.append("no timed answers to compare (more --canary-requests than --canary-warmup?)")
    else:
        bound = policy.max_latency_ratio * old_p99 + policy.latency_slack_ms
        if new_p99 > bound:
            reasons.append(f"p99 {new_p99:.2f} ms > {policy.max_latency_ratio:g} x old p99 {old_p99:.2f} ms "
                           f"+ {policy.latency_slack_ms:g} ms = {bound:.2f} ms")
        if policy.max_p99_ms is not None and new_p99 > policy.max_p99_ms:
            reasons.append(f"p99 {new_p99:.2f} ms > --max-p99-ms {policy.max_p99_ms:g}")
    latency_only = bound is not None and not other_reasons and len(reasons) > 0 and not force_failure
    if force_failure:
        measured = "it would have passed" if not reasons else "it failed anyway"
        reasons.append(f"--force-canary-failure: a rollback drill ({measured})")
    return Verdict(not reasons, reasons, None if bound is None else round(bound, 3), force_failure, latency_only)
