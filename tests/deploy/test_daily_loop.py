"""`make daily-loop` end to end at its smallest size: the manifests of
deploy/k8s/daily run here (2 shards, 2 gloo ranks, a fleet of 2 `pinrank
serve` replicas), and the record meets the issue's conditions: a rollout
under live traffic with no failed request, a forced canary failure rolled
back with the fleet still on the old version, the training job resuming
after one of its pods is killed. About 3 minutes on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.timeout(900)
def test_the_daily_loop_rolls_out_and_rolls_back(tmp_path):
    out = tmp_path / "daily_loop.json"
    result = subprocess.run([sys.executable, "-m", "deploy.daily", "--out", str(out), "--work", str(tmp_path / "w"),
                             "-p", "ranker-steps=5"], cwd=ROOT, capture_output=True, text=True, timeout=880,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["ok"] and all(record["checks"].values()), record["checks"]
    assert record["failed_requests_during_switch"] == 0
    assert record["rollback_on_canary_failure"] is True
    d0, d1, d2 = record["days"]

    # Day 0 trained on 2 ranks, lost a pod after the first checkpoint, and resumed from it.
    loss = record["training_pod_loss"]
    assert loss["world_size"] == 2 and loss["checkpoint_step_when_lost"] == 100 and loss["final_step"] == 120
    assert loss["restarts"] == {"master-0": 1, "worker-0": 1} and loss["job_phase"] == "Succeeded"
    assert d0["snapshot"]["incremental"] is False and d0["exported_version"] == 1

    # Day 1: the served model kept, only active users recomputed, v2 on every replica, traffic all answered.
    steps1 = {s["name"]: s for s in d1["steps"]}
    assert steps1["train-pinnerformer"]["phase"] == "Skipped" and steps1["carry-pinnerformer"]["phase"] == "Succeeded"
    assert d1["snapshot"]["incremental"] is True
    assert 0 < d1["snapshot"]["counts"]["recomputed"] < d1["snapshot"]["counts"]["users"]
    assert set(d1["versions_served_before"].values()) == {1} and set(d1["versions_served_after"].values()) == {2}
    traffic = d1["traffic_during_rollout"]
    assert traffic["requests"] > 0 and traffic["failed_requests"] == 0
    assert set(traffic["versions"]) <= {"v1", "v2"}, "every answer came from one version, never a mix"
    embed = steps1["embed"]
    assert embed["detail"]["completions"] == embed["detail"]["parallelism"] == 2
    assert embed["detail"]["pods"] == {f"index-{i}": {"JOB_COMPLETION_INDEX": str(i)} for i in range(2)}
    ranker = steps1["train-ranker"]["detail"]["pods"]
    assert [ranker[p]["PET_NODE_RANK"] for p in ("master-0", "worker-0")] == ["0", "1"]
    assert {env["PET_NNODES"] for env in ranker.values()} == {"2"}

    # Day 2: exit 3 once, nothing promoted, the fleet and /data/current as day 1 left them.
    steps2 = {s["name"]: s for s in d2["steps"]}
    assert steps2["rollout"]["exit_code"] == 3 and steps2["rollout"]["attempts"] == 1
    assert steps2["promote"]["phase"] == "Omitted" and d2["status"] == "Failed"
    assert set(d2["versions_served_after"].values()) == {2} and d2["exported_version"] == 3
    assert d2["outcome"]["status"] == "Failed" and d2["outcome"]["rollout"]["exit_code"] == 3
    assert d2["current_after"] == d1["current_after"] == "runs/pinrank-daily-d1"
    for day in record["days"]:
        for step in day["steps"]:
            assert {"name", "command", "seconds", "exit_code"} <= set(step)
