"""The rollout's procedure against fake replicas: the order of switches, the
rollbacks, the exit codes and the report, with every failure forced."""

from __future__ import annotations

import fcntl
import json

import pytest
from rollout_fakes import FakeReplica, answer, fake_repository

from pinrank.rollout.canary import CanaryPolicy
from pinrank.rollout.procedure import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_INCOMPLETE,
    EXIT_ROLLED_BACK,
    LOCK_FILE,
    RolloutOptions,
    run_rollout,
)


def rollout(tmp_path, replicas, requests, **options):
    repo = tmp_path / "repo"
    if not repo.exists():
        fake_repository(repo)
    report = run_rollout(repo, replicas, requests, RolloutOptions(**options), say=lambda _: None)
    json.dumps(report)  # what --report writes
    return report


def fleet(n, **kw):
    return [FakeReplica(f"10.0.0.{i}:8000", **kw) for i in range(1, n + 1)]


def test_the_canary_then_each_other_replica_moves_to_the_latest_version(tmp_path, toy_requests):
    replicas = fleet(3)
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["outcome"] == "rolled_out" and report["exit_code"] == EXIT_OK and not report["rolled_back"]
    assert (report["from_version"], report["to_version"]) == (1, 2)
    assert [r.switches for r in replicas] == [[2], [2], [2]]
    assert report["versions_before"] == {r.address: 1 for r in replicas}
    assert report["versions_after"] == {r.address: 2 for r in replicas}
    assert report["canary_replica"] == replicas[0].address
    canary = report["canary"]
    assert canary["passed"] and canary["old"]["address"] == replicas[1].address
    assert canary["new"]["version"] == 2 and canary["old"]["version"] == 1
    assert canary["new"]["timed"] == len(toy_requests) - 5 and canary["new"]["requests"] == len(toy_requests)
    steps = [(s["step"], s["replica"]) for s in report["steps"]]
    assert len(report["canary"]["rounds"]) == 1
    assert steps == [("preflight", None), ("switch", replicas[0].address), ("settle", replicas[0].address),
                     ("canary_check", replicas[0].address),
                     ("switch", replicas[1].address), ("smoke", replicas[1].address), ("settle", replicas[1].address),
                     ("switch", replicas[2].address), ("smoke", replicas[2].address), ("settle", replicas[2].address),
                     ("verify", None)]
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["steps"])


def test_a_slow_canary_is_rolled_back_and_the_others_never_switch(tmp_path, toy_requests):
    replicas = fleet(3, latency_ms={1: 5.0, 2: 50.0})
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["outcome"] == "rolled_back" and report["exit_code"] == EXIT_ROLLED_BACK and report["rolled_back"]
    assert "p99 50.00 ms > 1.5 x old p99 5.00 ms + 2 ms" in report["reason"]
    assert [r.switches for r in replicas] == [[2, 1], [], []]
    assert report["versions_after"] == {r.address: 1 for r in replicas}
    assert report["rolled_back_replicas"] == [replicas[0].address]


def test_one_latency_spike_is_measured_again_and_forgiven(tmp_path, toy_requests):
    replicas = fleet(2)
    spikes = iter([80.0])  # the canary's last timed answer of the first round only

    def latency(request):
        replicas[0].ranked += 1
        slow = replicas[0].ranked == len(toy_requests) and next(spikes, None)
        return answer(request, slow or 5.0)

    replicas[0].rank = latency
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_OK, report["reason"]
    assert [r["passed"] for r in report["canary"]["rounds"]] == [False, True]
    assert report["canary"]["rounds"][0]["new_p99_ms"] > 40


def test_a_persistent_latency_regression_fails_after_the_retries(tmp_path, toy_requests):
    replicas = fleet(2, latency_ms={1: 5.0, 2: 50.0})
    report = rollout(tmp_path, replicas, toy_requests, latency_retries=2)
    assert report["exit_code"] == EXIT_ROLLED_BACK
    assert [r["passed"] for r in report["canary"]["rounds"]] == [False, False, False]


def test_the_drill_rolls_back_a_good_canary(tmp_path, toy_requests):
    replicas = fleet(2)
    report = rollout(tmp_path, replicas, toy_requests, force_canary_failure=True)
    assert report["exit_code"] == EXIT_ROLLED_BACK and report["rolled_back"] and report["canary"]["forced"]
    assert report["versions_after"] == {r.address: 1 for r in replicas}


def test_a_failed_switch_mid_fleet_rolls_every_switched_replica_back(tmp_path, toy_requests):
    replicas = fleet(2) + [FakeReplica("10.0.0.3:8000", fail_switch_to=(2,))]
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["outcome"] == "failed" and report["exit_code"] == EXIT_FAILED and report["rolled_back"]
    assert report["failed_replica"] == "10.0.0.3:8000"
    assert "failed to load version 2" in report["reason"] and report["reason"].endswith("rolled back")
    assert report["versions_after"] == {r.address: 1 for r in replicas}
    # Newest first; the failed one holds both versions, which only a repin clears (disk included).
    assert report["rolled_back_replicas"] == ["10.0.0.3:8000", "10.0.0.2:8000", "10.0.0.1:8000"]
    assert replicas[2].repins == [1] and replicas[0].repins == replicas[1].repins == []
    rollbacks = [(s["replica"], s["action"]) for s in report["steps"] if s["step"] == "rollback"]
    assert rollbacks == [("10.0.0.3:8000", "repinned"), ("10.0.0.2:8000", "switched"), ("10.0.0.1:8000", "switched")]
    assert [s["step"] for s in report["steps"]][-4:] == ["switch", "rollback", "rollback", "rollback"]


def test_a_canary_that_fails_to_switch_is_put_back(tmp_path, toy_requests):
    replicas = [FakeReplica("10.0.0.1:8000", fail_switch_to=(2,)), FakeReplica("10.0.0.2:8000")]
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_FAILED and report["rolled_back"] and report["canary"] is None
    assert report["failed_replica"] == "10.0.0.1:8000" and replicas[1].switches == []
    assert report["versions_after"] == {r.address: 1 for r in replicas}


def test_a_rollback_that_cannot_finish_says_so(tmp_path, toy_requests):
    replicas = [FakeReplica("10.0.0.1:8000"), FakeReplica("10.0.0.2:8000", fail_switch_to=(2,), fail_repin=True)]
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_ROLLBACK_INCOMPLETE and not report["rolled_back"]
    assert "ROLLBACK INCOMPLETE" in report["reason"] and report["rollback_problems"][0].startswith("10.0.0.2:8000")
    assert report["rolled_back_replicas"] == ["10.0.0.1:8000"]


def test_a_broken_answer_after_a_later_switch_rolls_everything_back(tmp_path, toy_requests):
    replicas = fleet(3)

    def broken(request):
        raise RuntimeError("Stub process is not healthy")

    replicas[2].rank = broken  # answers nothing once switched (and before: it is never asked)
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_FAILED and report["failed_replica"] == replicas[2].address
    assert "Stub process is not healthy" in report["reason"]
    smoke = [s for s in report["steps"] if s["step"] == "smoke"]
    assert smoke[-1]["findings"] and [s["step"] for s in report["steps"]][-3:] == ["rollback"] * 3
    assert report["versions_after"] == {r.address: 1 for r in replicas}


def test_preflight_refuses_a_fleet_that_disagrees_and_switches_nothing(tmp_path, toy_requests):
    replicas = [FakeReplica("10.0.0.1:8000", 1), FakeReplica("10.0.0.2:8000", 2)]
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_FAILED and report["outcome"] == "failed"
    assert "serve different versions" in report["reason"] and "nothing was switched" in report["reason"]
    assert [r.switches for r in replicas] == [[], []] and [r.ranked for r in replicas] == [0, 0]


@pytest.mark.parametrize(("version", "why"), [(3, "target: preprocess/3 is missing"),
                                              (2, "target: ranker/2 has no manifest.json")])
def test_preflight_refuses_a_version_that_is_not_complete(tmp_path, toy_requests, version, why):
    repo = fake_repository(tmp_path / "repo")
    (repo / "ranker" / "2" / "manifest.json").unlink()
    replicas = fleet(2)
    report = rollout(tmp_path, replicas, toy_requests, version=version)
    assert report["exit_code"] == EXIT_FAILED and why in report["reason"]
    assert [r.switches for r in replicas] == [[], []]


def test_preflight_refuses_a_fleet_serving_a_version_the_repository_lacks(tmp_path, toy_requests):
    replicas = fleet(2, version=7)  # e.g. the replicas mount another directory
    report = rollout(tmp_path, replicas, toy_requests, version=2)
    assert report["exit_code"] == EXIT_FAILED and "serving (the rollback target): preprocess/7" in report["reason"]


def test_a_fleet_already_on_the_version_is_left_alone(tmp_path, toy_requests):
    replicas = fleet(2, version=2)
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["outcome"] == "already_serving" and report["exit_code"] == EXIT_OK
    assert [r.switches for r in replicas] == [[], []]


def test_one_replica_is_its_own_baseline(tmp_path, toy_requests):
    (replica,) = fleet(1, latency_ms={1: 5.0, 2: 5.0})
    report = rollout(tmp_path, [replica], toy_requests)
    assert report["exit_code"] == EXIT_OK and replica.switches == [2]
    assert report["canary"]["old"]["address"] == report["canary"]["new"]["address"] == replica.address
    assert [s["step"] for s in report["steps"]] == ["preflight", "canary_baseline", "switch", "settle",
                                                    "canary_check", "verify"]


def test_a_second_rollout_on_the_same_repository_waits_its_turn(tmp_path, toy_requests):
    repo = fake_repository(tmp_path / "repo")
    replicas = fleet(2)
    with open(repo / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_FAILED and "another rollout" in report["reason"]
    assert [r.switches for r in replicas] == [[], []]


def test_an_unexpected_error_after_the_canary_switched_still_rolls_back(tmp_path, toy_requests):
    replicas = fleet(2)

    def no_metadata():
        raise KeyError("inputs")  # a bug-shaped failure

    replicas[0].contract_mismatches = no_metadata  # counted as a broken contract, not a crash
    report = rollout(tmp_path, replicas, toy_requests, policy=CanaryPolicy())
    assert report["exit_code"] == EXIT_ROLLED_BACK and "model metadata: KeyError" in report["reason"]
    assert report["versions_after"] == {r.address: 1 for r in replicas}


def test_a_failure_between_steps_rolls_the_fleet_back(tmp_path, toy_requests):
    """What SIGTERM does (pinrank.rollout.cli raises it as an exception wherever the rollout is)."""
    replicas = fleet(3)

    def stopped():
        raise RuntimeError("stopped by SIGTERM")

    replicas[1].settled = stopped  # after replica 2 switched, before replica 3
    report = rollout(tmp_path, replicas, toy_requests)
    assert report["exit_code"] == EXIT_FAILED and report["rolled_back"] and "SIGTERM" in report["reason"]
    assert [r.switches for r in replicas] == [[2, 1], [2, 1], []]
    assert report["versions_after"] == {r.address: 1 for r in replicas}
