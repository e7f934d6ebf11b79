"""The rollout itself: preflight, canary, the rest of the fleet one replica
at a time, rollback; and the report that says what happened.

Exit codes (EXIT_*): 0 the fleet serves the target version (rolled out, or
it already did); 1 failed: refused at preflight with nothing changed, or a
switch failed and every replica was rolled back; 3 the canary failed and
was rolled back; 4 a rollback did not complete: the fleet needs a person.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pinrank.rollout import canary as canary_check
from pinrank.rollout.fleet import Replica, serving_version
from pinrank.rollout.preflight import fleet_state, latest_version, repository_models, version_problems
from pinrank_client.types import RankRequest

EXIT_OK, EXIT_FAILED, EXIT_ROLLED_BACK, EXIT_ROLLBACK_INCOMPLETE = 0, 1, 3, 4
ROLLED_OUT, ALREADY_SERVING, ROLLED_BACK, FAILED = "rolled_out", "already_serving", "rolled_back", "failed"
#: In the repository: held (flock) while a rollout runs, so two never interleave their config edits.
LOCK_FILE = ".pinrank-rollout.lock"


@dataclass(frozen=True)
class RolloutOptions:
    version: int | None = None
    policy: canary_check.CanaryPolicy = field(default_factory=canary_check.CanaryPolicy)
    warmup: int = 5
    #: Canary requests each replica after the canary must answer within the contract once switched.
    smoke_requests: int = 3
    force_canary_failure: bool = False
    settle_timeout_s: float = 30.0
    latency_retries: int = 2


class Abort(Exception):
    """Ends the rollout with an outcome; the report is complete when it is raised."""


@contextlib.contextmanager
def repository_lock(repo: Path) -> Iterator[None]:
    with open(Path(repo) / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another rollout holds {Path(repo) / LOCK_FILE}: wait for it") from None
        yield  # closing the file releases the lock, also when the process dies


class Rollout:
    def __init__(self, repo: Path, replicas: Sequence[Replica], requests: Sequence[RankRequest],
                 options: RolloutOptions, say: Callable[[str], object] = print) -> None:
        if not replicas:
            raise ValueError("a fleet of no replicas")
        self.repo, self.replicas, self.requests, self.options, self.say = Path(repo), list(replicas), \
            list(requests), options, say
        self.t0 = time.monotonic()
        self.current: int | None = None
        self.report: dict[str, Any] = {
            "outcome": None, "exit_code": None, "rolled_back": False, "reason": None,
            "repository": str(self.repo), "fleet": [r.address for r in self.replicas],
            "canary_replica": self.replicas[0].address, "from_version": None, "to_version": None,
            "versions_before": {}, "versions_after": {}, "canary": None, "steps": [],
            "failed_replica": None, "rolled_back_replicas": [], "rollback_problems": [],
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        }

    # -- bookkeeping ----------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str, replica: Replica | None = None, **detail: Any) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"step": name, "replica": replica.address if replica else None, **detail}
        t0 = time.monotonic()
        try:
            yield record
            record["ok"] = True
        except Exception as exc:
            record["ok"], record["error"] = False, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record["seconds"] = round(time.monotonic() - t0, 3)
            self.report["steps"].append(record)

    def finish(self, outcome: str, exit_code: int, reason: str | None = None) -> dict[str, Any]:
        self.report.update(outcome=outcome, exit_code=exit_code, reason=reason,
                           seconds=round(time.monotonic() - self.t0, 3))
        with contextlib.suppress(Exception):  # the report says what it could read
            self.report["versions_after"] = fleet_state(self.replicas).versions
        self.say(f"rollout: {outcome}" + (f": {reason}" if reason else ""))
        return self.report

    # -- the procedure ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            with repository_lock(self.repo):
                return self._run()
        except (RuntimeError, OSError) as exc:  # the lock: nothing was looked at yet
            return self.finish(FAILED, EXIT_FAILED, str(exc))

    def _run(self) -> dict[str, Any]:
        try:
            target = self.preflight()
        except Abort:
            return self.report
        except Exception as exc:  # a repository that is not one, a fleet that cannot be read: nothing changed
            return self.finish(FAILED, EXIT_FAILED, f"preflight: {exc} (nothing was switched)")
        if target is None:
            return self.finish(ALREADY_SERVING, EXIT_OK, f"every replica already serves version {self.current}")
        try:
            self.canary(target)
            self.rest_of_fleet(target)
        except Abort:
            return self.report
        except Exception as exc:  # unforeseen, after a replica may have switched: put the fleet back first
            with contextlib.suppress(Abort):
                self._fail(None, f"{type(exc).__name__}: {exc}")
            return self.report
        return self.finish(ROLLED_OUT, EXIT_OK)

    def preflight(self) -> int | None:
        """The target version, or None when the fleet serves it already; Abort when unsafe."""
        with self.step("preflight") as record:
            models = repository_models(self.repo)
            target = self.options.version or latest_version(self.repo, models)
            self.report["to_version"] = target
            state = fleet_state(self.replicas)
            self.report["versions_before"] = state.versions
            record["loaded"] = state.loaded
            if state.problems:
                self._refuse(state.problems)
            self.current = state.common_version()
            self.report["from_version"] = self.current
            if self.current == target:
                return None
            problems = [f"target: {p}" for p in version_problems(self.repo, models, target)]
            problems += [f"serving (the rollback target): {p}" for p in version_problems(self.repo, models,
                                                                                          self.current)]
            if problems:
                self._refuse(problems)
        self.say(f"rollout: {len(self.replicas)} replica(s) serve version {self.current}; rolling out {target}")
        return target

    def _refuse(self, problems: list[str]) -> None:
        self.finish(FAILED, EXIT_FAILED, "preflight: " + "; ".join(problems) + " (nothing was switched)")
        raise Abort(problems[0])

    def canary(self, target: int) -> None:
        assert self.current is not None
        canary, rest = self.replicas[0], self.replicas[1:]
        requests, warmup = self.requests, self.options.warmup
        baseline = None
        if not rest:  # one replica: its own answers before the switch are the baseline
            with self.step("canary_baseline", canary, version=self.current):
                baseline = canary_check.measure(canary, self.current, requests, warmup)
        self.switch(canary, target)
        self.settle(canary)
        metadata = [f"model metadata: {m}" for m in self._metadata(canary)]
        rounds: list[dict[str, Any]] = []
        # A latency-only failure is measured again (options.latency_retries times): a real regression
        # repeats, while one scheduling spike on a shared host decides a p99 of a few dozen requests.
        for attempt in range(1 + self.options.latency_retries):
            with self.step("canary_check", canary, version=target, attempt=attempt + 1) as record:
                if rest:
                    baseline, new = canary_check.measure_pair(rest[0], self.current, canary, target, requests,
                                                              warmup)
                else:
                    new = canary_check.measure(canary, target, requests, warmup)
                assert baseline is not None
                new.problems += metadata
                verdict = canary_check.judge(baseline, new, self.options.policy,
                                             force_failure=self.options.force_canary_failure)
                record["passed"] = verdict.passed
            rounds.append({"old_p99_ms": baseline.summary()["p99_ms"], "new_p99_ms": new.summary()["p99_ms"],
                           "passed": verdict.passed, "reasons": verdict.reasons})
            self.say(f"rollout: canary {canary.address}: p99 {new.summary()['p99_ms']} ms vs "
                     f"{baseline.summary()['p99_ms']} ms on version {self.current}: "
                     + ("passed" if verdict.passed else "FAILED: " + "; ".join(verdict.reasons)))
            if verdict.passed or not verdict.latency_only:
                break
        self.report["canary"] = {"passed": verdict.passed, "reasons": verdict.reasons, "forced": verdict.forced,
                                 "latency_bound_ms": verdict.latency_bound_ms, "policy": vars(self.options.policy),
                                 "warmup": warmup, "old": baseline.summary(), "new": new.summary(),
                                 "rounds": rounds}
        if not verdict.passed:
            self.rollback(failed=None)
            code = EXIT_ROLLED_BACK if self.report["rolled_back"] else EXIT_ROLLBACK_INCOMPLETE
            outcome = ROLLED_BACK if self.report["rolled_back"] else FAILED
            self.finish(outcome, code, "canary: " + "; ".join(verdict.reasons))
            raise Abort("canary failed")

    def settle(self, replica: Replica) -> None:
        """Wait (up to options.settle_timeout_s) for the old version to finish unloading: the stubs it stops
        take CPU for seconds after a switch (not what v+1 costs in steady traffic), and Triton's readiness
        is false until they are gone."""
        with self.step("settle", replica) as record:
            deadline = time.monotonic() + self.options.settle_timeout_s
            while not (settled := replica.settled()) and time.monotonic() < deadline:
                time.sleep(0.2)
            record["settled"] = settled

    def _metadata(self, replica: Replica) -> list[str]:
        try:
            return replica.contract_mismatches()
        except Exception as exc:  # no metadata is a broken contract too
            return [f"{type(exc).__name__}: {exc}"]

    def rest_of_fleet(self, target: int) -> None:
        for replica in self.replicas[1:]:
            self.switch(replica, target)
            with self.step("smoke", replica, version=target) as record:
                smoke = canary_check.measure(replica, target, self.requests[:self.options.smoke_requests], 0)
                record["findings"] = smoke.errors + smoke.problems
            if record["findings"]:
                self._fail(replica, f"{replica.address} on version {target}: {record['findings'][0]}")
            # One replica in transition at a time: Triton reports not ready (so may a readiness probe)
            # until the old version has unloaded, and two such pods at once would thin the Service.
            self.settle(replica)
        with self.step("verify", version=target) as record:
            state = fleet_state(self.replicas)
            record["wrong"] = {a: v for a, v in state.versions.items() if v != target}
        if record["wrong"]:
            self._fail(None, f"after the rollout, replicas serve {record['wrong']} instead of {target} "
                             f"({'; '.join(state.problems) or 'a pod restarted?'})")

    def switch(self, replica: Replica, target: int) -> None:
        self.say(f"rollout: switching {replica.address} to version {target}")
        try:
            with self.step("switch", replica, version=target):
                replica.switch(target)
                loaded = replica.serving()
                if serving_version(loaded) != target:
                    raise RuntimeError(f"after the switch it serves {loaded}")
        except Exception as exc:
            self._fail(replica, f"switching {replica.address} to version {target}: {type(exc).__name__}: {exc}")

    def _fail(self, replica: Replica | None, reason: str) -> None:
        self.report["failed_replica"] = replica.address if replica else None
        self.rollback(failed=replica)
        code = EXIT_FAILED if self.report["rolled_back"] else EXIT_ROLLBACK_INCOMPLETE
        self.finish(FAILED, code, reason + ("; rolled back" if self.report["rolled_back"] else
                                            "; ROLLBACK INCOMPLETE: " + "; ".join(self.report["rollback_problems"])))
        raise Abort(reason)

    def rollback(self, failed: Replica | None) -> None:
        """Every replica back to the version the fleet served, newest switched first.

        Replicas that serve it already stay as they are, except `failed`, whose
        interrupted switch may have left two versions pinned on disk."""
        version = self.current
        assert version is not None
        problems, done = self.report["rollback_problems"], self.report["rolled_back_replicas"]
        for replica in reversed(self.replicas):
            try:
                with self.step("rollback", replica, version=version) as record:
                    record["action"] = "none"
                    if replica is not failed and serving_version(replica.serving()) == version:
                        continue
                    self.say(f"rollout: rolling {replica.address} back to version {version}")
                    try:
                        replica.switch(version)
                        record["action"], clean = "switched", replica is not failed
                    except Exception:  # a replica mid-switch holds both versions, which switch_version refuses
                        clean = False
                    if not clean:
                        replica.repin(version)
                        record["action"] = "repinned"
                    loaded = replica.serving()
                    if serving_version(loaded) != version:
                        raise RuntimeError(f"after the rollback it serves {loaded}")
                    done.append(replica.address)
            except Exception as exc:
                problems.append(f"{replica.address}: {type(exc).__name__}: {exc}")
        self.report["rolled_back"] = not problems


def run_rollout(repo: Path, replicas: Sequence[Replica], requests: Sequence[RankRequest],
                options: RolloutOptions, say: Callable[[str], object] = print) -> dict[str, Any]:
    """Roll `options.version` out to `replicas` (the first is the canary); the report (exit_code inside)."""
    return Rollout(repo, replicas, requests, options, say).run()

