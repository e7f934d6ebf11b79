"""The canary's parts without a server: the answer contract, the verdict
(latency bound, errors, contract problems, the drill) and replayed requests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rollout_fakes import answer

from pinrank.rollout.canary import CanaryPolicy, Measurement, judge
from pinrank.rollout.contract import contract_problems
from pinrank.rollout.replay import replayed_requests
from pinrank_client import schema
from pinrank_client.types import RankResponse
from testkit.toy_data import make_toy_dataset


def timed(p99_ms: float, n: int = 40, address: str = "a:1", **kw) -> Measurement:
    """A measurement whose latencies are flat at p99_ms (so its p99 is exactly that)."""
    return Measurement(address, 1, latencies_ms=[p99_ms] * n, answered=n, **kw)


# --- the verdict ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "passed"), [
    (10.0, 10.0, True),
    (10.0, 17.0, True),  # the bound: 1.5 x 10 + 2 = 17
    (10.0, 17.1, False),
    (1.0, 3.4, True),  # a fast old version: the slack dominates (1.5 + 2 = 3.5)
    (1.0, 3.6, False),
])
def test_the_latency_bound_is_a_ratio_of_the_old_p99_plus_a_slack(old, new, passed):
    verdict = judge(timed(old), timed(new), CanaryPolicy(max_latency_ratio=1.5, latency_slack_ms=2.0))
    assert verdict.passed is passed
    assert verdict.latency_bound_ms == pytest.approx(1.5 * old + 2.0)
    assert passed or "p99" in verdict.reasons[0]


def test_only_a_latency_failure_is_worth_measuring_again():
    slow = timed(50.0)
    assert judge(timed(5.0), slow, CanaryPolicy()).latency_only
    assert not judge(timed(5.0), timed(5.0), CanaryPolicy()).latency_only  # passed
    slow.errors.append("request 1: ServerError: boom")
    assert not judge(timed(5.0), slow, CanaryPolicy()).latency_only
    assert not judge(timed(5.0), timed(50.0), CanaryPolicy(), force_failure=True).latency_only


def test_an_absolute_p99_ceiling_also_fails_a_canary():
    verdict = judge(timed(10.0), timed(12.0), CanaryPolicy(max_p99_ms=11.0))
    assert not verdict.passed and verdict.reasons == ["p99 12.00 ms > --max-p99-ms 11"]


def test_one_failed_request_fails_the_canary_whatever_the_latency():
    new = timed(5.0, errors=["request 3: ServerError: boom"])
    verdict = judge(timed(5.0), new, CanaryPolicy())
    assert not verdict.passed and "1 of 41 requests to the new version failed" in verdict.reasons[0]
    assert "ServerError: boom" in verdict.reasons[0]


def test_a_contract_problem_fails_the_canary():
    new = timed(5.0, problems=["request 0: items not sorted by utility (best first)"])
    verdict = judge(timed(5.0), new, CanaryPolicy())
    assert not verdict.passed and "break the contract" in verdict.reasons[0]


def test_a_failing_old_side_is_no_baseline():
    verdict = judge(timed(5.0, errors=["request 0: ServerUnavailableError: down"]), timed(5.0), CanaryPolicy())
    assert not verdict.passed and "old version failed" in verdict.reasons[0]


def test_no_timed_answers_cannot_pass():
    verdict = judge(Measurement("a:1", 1), Measurement("b:1", 2), CanaryPolicy())
    assert not verdict.passed and verdict.latency_bound_ms is None


def test_the_drill_fails_a_canary_that_measured_fine_and_says_so():
    verdict = judge(timed(5.0), timed(5.0), CanaryPolicy(), force_failure=True)
    assert not verdict.passed and verdict.forced
    assert verdict.reasons == ["--force-canary-failure: a rollback drill (it would have passed)"]


def test_the_summary_reports_percentiles_and_samples():
    m = Measurement("a:1", 2, latencies_ms=list(np.arange(1.0, 101.0)), answered=100, errors=["e"] * 7)
    s = m.summary()
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01)
    assert s["requests"] == 107 and s["errors"] == 7 and len(s["error_samples"]) == 5


# --- the answer contract -------------------------------------------------------------------------


def _response(ids, scores) -> RankResponse:
    ids = np.asarray(ids, dtype=np.int64)
    probs = np.full((ids.size, schema.NUM_HEADS), 0.5, dtype=np.float32)
    return RankResponse.from_arrays({"item_ids": ids, "scores": np.asarray(scores, np.float32), "head_probs": probs})


def test_a_good_answer_keeps_the_contract(toy_requests):
    for request in toy_requests:
        assert contract_problems(request, answer(request, 1.0)) == []


def test_each_broken_rule_is_named(toy_requests):
    request = dataclasses.replace(toy_requests[0], top_k=3)
    c = [int(x) for x in np.unique(request.candidate_ids)[:3]]
    stranger = int(request.candidate_ids.max()) + 1
    assert contract_problems(request, _response(c, [3, 2, 1])) == []
    assert contract_problems(request, _response(c[:2], [3, 2])) == ["2 items for top_k=3 over 50 candidates"]
    assert contract_problems(request, _response([c[0], c[1], stranger], [3, 2, 1])) == [
        f"1 item(s) that are not candidates, e.g. {stranger}"]
    assert contract_problems(request, _response([c[0], c[0], c[1]], [3, 2, 1])) == ["an item ranked twice"]
    assert contract_problems(request, _response(c, [1, 2, 3])) == ["items not sorted by utility (best first)"]


def test_top_k_beyond_the_candidates_returns_them_all(toy_requests):
    request = dataclasses.replace(toy_requests[0], top_k=500)
    assert contract_problems(request, answer(request, 1.0)) == []
    assert len(answer(request, 1.0)) == 50


# --- replayed requests ---------------------------------------------------------------------------


def test_replayed_requests_are_real_moments_of_the_log():
    ds = make_toy_dataset(num_users=30, num_items=150, actions_per_user=15)
    requests = replayed_requests(ds, 25, candidates=60, top_k=7, seed=3)
    assert len(requests) == 25
    log = ds.actions
    for r in requests:
        assert r.request_ts_ms >= ds.train_end_ms  # the eval period
        assert r.top_k == 7 and r.num_candidates == 60 and np.isin(r.candidate_ids, ds.item_ids).all()
        assert np.unique(r.candidate_ids).size == 60
        history = r.to_arrays()
        mine = (log["user_id"] == r.user_id) & (log["ts_ms"] < r.request_ts_ms)
        assert 1 <= len(r.actions) <= min(schema.REALTIME_SEQ_LEN, int(mine.sum()))
        # The newest actions of that user before the request, oldest first.
        newest = np.sort(log["ts_ms"][mine])[-len(r.actions):]
        assert np.array_equal(np.sort(history["action_ts_ms"]), newest)
    assert replayed_requests(ds, 25, candidates=60, top_k=7, seed=3) == requests  # seeded
