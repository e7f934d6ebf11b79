"""deploy/daily: the Argo subset the local runner models and the local
controllers it runs pods with, checked on their own (fast, no training).

The runner is only evidence for the manifests if it means what Argo and
Kubernetes mean: `depends`, `when`, retries, the resource conditions, the
DAG's fail-fast and exit handler, and the restart semantics of an Indexed
Job and a PyTorchJob. Each is exercised here, including how it can fail.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from deploy.daily import argo
from deploy.daily.argo import ArgoSubsetError, Attempt, Runner
from deploy.daily.pods import LocalCluster, expand

#: The manifests under test (read-only here: the runner never edits them).
TEMPLATE, CRON = argo.load(argo.WORKFLOW_TEMPLATE), argo.load(argo.CRON_WORKFLOW)

# -- expressions ---------------------------------------------------------------

PHASES = {"a": "Succeeded", "b": "Skipped", "c": "Failed", "d": "Omitted"}


@pytest.mark.parametrize("expr,expected", [
    ("a", True), ("b", True), ("c", False), ("d", False),
    ("a.Succeeded", True), ("b.Succeeded", False), ("b.Skipped", True), ("c.Failed", True),
    ("a.Succeeded && b.Skipped", True), ("a.Succeeded && c.Succeeded", False),
    ("c.Succeeded || b.Skipped", True), ("!(c.Succeeded || d.Succeeded)", True),
    ("(a.Succeeded || c.Succeeded) && !d.Omitted", False), ("b.Succeeded || b.Skipped", True),
])
def test_depends_follows_argos_enhanced_depends(expr, expected):
    assert argo.evaluate_depends(expr, PHASES) is expected


@pytest.mark.parametrize("expr", ["a.Succeeded &&", "(a.Succeeded", "a.Done", "zz.Succeeded", "a.Succeeded b",
                                  "a.Succeeded & b.Skipped"])
def test_depends_refuses_what_it_cannot_read(expr):
    with pytest.raises(ArgoSubsetError):
        argo.evaluate_depends(expr, PHASES)


def test_when_and_substitution():
    variables = {"workflow.parameters.retrain": "true", "workflow.name": "w"}
    assert argo.evaluate_when(argo.substitute("{{workflow.parameters.retrain}} == true", variables))
    assert not argo.evaluate_when(argo.substitute("{{ workflow.parameters.retrain }} != true", variables))
    with pytest.raises(ArgoSubsetError, match="unresolved"):
        argo.substitute("{{workflow.parameters.nope}}", variables)
    with pytest.raises(ArgoSubsetError, match="expression"):
        argo.substitute("{{=workflow.parameters.retrain}}", variables)
    with pytest.raises(ArgoSubsetError):
        argo.evaluate_when("true")


def test_parameters_layer_like_argo():
    values = argo.parameters(TEMPLATE, CRON, {"shards": "2"})
    assert values["shards"] == "2" and values["retrain-pinnerformer"] == "false"
    with pytest.raises(ArgoSubsetError, match="does not declare"):
        argo.parameters(TEMPLATE, CRON, {"shard": "2"})
    with pytest.raises(ArgoSubsetError, match="not one of"):
        argo.parameters(TEMPLATE, CRON, {"retrain-pinnerformer": "yes"})
    other = json.loads(json.dumps(CRON))
    other["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] = "something-else"
    with pytest.raises(ArgoSubsetError, match="runs 'something-else'"):
        argo.parameters(TEMPLATE, other)


@pytest.mark.parametrize("strategy,exit_code,attempts,expected", [
    ({"limit": 2}, 1, 1, True), ({"limit": 2}, 1, 2, True), ({"limit": 2}, 1, 3, False),
    ({"limit": "1", "retryPolicy": "Always"}, 7, 1, True),
    ({"limit": 1, "retryPolicy": "OnError"}, 1, 1, False),
    ({"limit": 1, "expression": "asInt(lastRetry.exitCode) == 1"}, 1, 1, True),
    ({"limit": 1, "expression": "asInt(lastRetry.exitCode) == 1"}, 3, 1, False),
    ({"limit": 5, "expression": "asInt(lastRetry.exitCode) != 3"}, 2, 1, True),
])
def test_retry_wanted(strategy, exit_code, attempts, expected):
    assert argo.retry_wanted(strategy, exit_code, attempts) is expected


def test_retry_expression_outside_the_subset_is_refused():
    with pytest.raises(ArgoSubsetError):
        argo.retry_wanted({"limit": 1, "expression": "lastRetry.status != 'Error'"}, 1, 1)


def test_backoff_and_durations():
    assert argo.parse_duration("5m") == 300 and argo.parse_duration("1h30m") == 5400
    assert argo.parse_duration("45") == 45
    strategy = {"backoff": {"duration": "2m", "factor": 2, "maxDuration": "5m"}}
    assert [argo.backoff_seconds(strategy, n) for n in (1, 2, 3)] == [120, 240, 300]
    with pytest.raises(ArgoSubsetError):
        argo.parse_duration("5 minutes")


# -- resource conditions against the controllers' status --------------------------

def _conditions(*types: str) -> list[dict[str, str]]:
    return [{"type": t, "status": "True"} for t in types]


PYTORCHJOB_STATUS = {
    "running": ({"conditions": _conditions("Created", "Running"),
                 "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1}}}, "Running"),
    "succeeded": ({"conditions": _conditions("Created", "Running", "Succeeded"),
                   "replicaStatuses": {"Master": {"succeeded": 1}, "Worker": {"succeeded": 1}}}, "Succeeded"),
    # A job that exceeds runPolicy.backoffLimit: pods deleted, no replica counted failed, a Failed condition.
    "failed after backoff limit": ({"conditions": _conditions("Created", "Running", "Failed"),
                                    "replicaStatuses": {"Master": {}, "Worker": {}}}, "Failed"),
    "failed after restarts": ({"conditions": _conditions("Created", "Restarting", "Failed")}, "Failed"),
    "failed at once": ({"conditions": _conditions("Created", "Failed")}, "Failed"),
    "suspended then failed": ({"conditions": _conditions("Created", "Suspended", "Running", "Restarting",
                                                         "Failed")}, "Failed"),
}
JOB_STATUS = {
    "running": ({"active": 2}, "Running"),
    "complete": ({"succeeded": 2, "completionTime": "t", "conditions": _conditions("Complete")}, "Succeeded"),
    "complete (1.31+)": ({"succeeded": 2, "completionTime": "t",
                         "conditions": _conditions("SuccessCriteriaMet", "Complete")}, "Succeeded"),
    "failed": ({"failed": 3, "conditions": _conditions("Failed")}, "Failed"),
    "failed (1.31+)": ({"failed": 3, "conditions": _conditions("FailureTarget", "Failed")}, "Failed"),
    "a retried pod, still going": ({"failed": 1, "active": 2}, "Running"),
}


def _resource(name: str) -> dict[str, Any]:
    (t,) = [t for t in TEMPLATE["spec"]["templates"] if t["name"] == name]
    return t["resource"]


@pytest.mark.parametrize("case", sorted(PYTORCHJOB_STATUS))
def test_pytorchjob_conditions_read_the_operators_status(case):
    status, phase = PYTORCHJOB_STATUS[case]
    assert argo.resource_phase(_resource("pytorchjob"), {"status": status}) == phase


@pytest.mark.parametrize("case", sorted(JOB_STATUS))
def test_indexed_job_conditions_read_the_job_controllers_status(case):
    status, phase = JOB_STATUS[case]
    assert argo.resource_phase(_resource("embed-shards"), {"status": status}) == phase


def test_condition_requirements_follow_label_selector_semantics():
    doc = {"status": {"n": 2, "s": "x", "items": [{"type": "A"}]}}
    assert argo.requirement_matches("status.n", doc) and argo.requirement_matches("!status.m", doc)
    assert argo.requirement_matches("status.n > 1", doc) and not argo.requirement_matches("status.n < 2", doc)
    assert argo.requirement_matches("status.items.0.type == A", doc)
    assert argo.requirement_matches("status.items.1.type != A", doc)  # missing: != holds, as in Kubernetes
    assert not argo.requirement_matches("status.items.1.type == A", doc)
    with pytest.raises(ArgoSubsetError):
        argo.requirement_matches("status.conditions.#(type==Failed).status == True", doc)


# -- the DAG with a scripted cluster ------------------------------------------------

class ScriptedCluster:
    """Every step succeeds unless `exit_codes[step]` lists what its attempts return."""

    def __init__(self, exit_codes: dict[str, list[int]] | None = None) -> None:
        self.exit_codes = exit_codes or {}
        self.calls: list[str] = []
        self.exit_status: str | None = None

    def _code(self, step: str) -> int:
        self.calls.append(step)
        codes = self.exit_codes.get(step, [0])
        return codes.pop(0) if len(codes) > 1 else codes[0]

    def run_container(self, workflow, step, container, metadata, volumes) -> Attempt:
        if step.endswith("(onExit)"):
            self.exit_status = {e["name"]: e.get("value") for e in container["env"]}["STATUS"]
        return Attempt(self._code(step), 0.0, [container.get("command", [])])

    def run_resource(self, workflow, step, manifest) -> tuple[Attempt, dict[str, Any]]:
        code = self._code(step)
        if manifest["kind"] == "Job":
            status = {"completionTime": "t"} if code == 0 else {"conditions": _conditions("Failed")}
        else:
            status = {"replicaStatuses": {"Master": {"succeeded": 1}}} if code == 0 else \
                {"conditions": _conditions("Created", "Failed")}
        return Attempt(code, 0.0, []), status


def _run(cluster, **overrides) -> argo.Run:
    return Runner(TEMPLATE, cluster, log=lambda _: None).run("wf", argo.parameters(TEMPLATE, CRON, overrides))


def _phases(run: argo.Run) -> dict[str, str]:
    return {s.name: s.phase for s in run.steps}


def test_daily_run_keeps_the_model_and_rolls_out():
    run = _run(ScriptedCluster())
    assert run.status == "Succeeded"
    assert _phases(run) == {"train-pinnerformer": "Skipped", "carry-pinnerformer": "Succeeded",
                            "train-ranker": "Succeeded", "embed": "Succeeded", "merge": "Succeeded",
                            "export": "Succeeded", "rollout": "Succeeded", "promote": "Succeeded",
                            "record-outcome (onExit)": "Succeeded"}


def test_bootstrap_run_trains_and_publishes_without_a_fleet():
    run = _run(ScriptedCluster(), **{"retrain-pinnerformer": "true", "rollout": "false"})
    phases = _phases(run)
    assert phases["train-pinnerformer"] == "Succeeded" and phases["carry-pinnerformer"] == "Skipped"
    assert phases["rollout"] == "Skipped" and phases["promote"] == "Succeeded" and run.status == "Succeeded"


def test_canary_rollback_is_final_and_recorded():
    """Exit 3 is not retried, nothing is promoted, the workflow fails and the exit handler sees it."""
    cluster = ScriptedCluster({"rollout": [3]})
    run = _run(cluster)
    assert run.status == "Failed" and cluster.calls.count("rollout") == 1
    assert _phases(run)["promote"] == "Omitted" and run.step("rollout").exit_code == 3
    assert cluster.exit_status == "Failed"


@pytest.mark.parametrize("code", [2, 4])
def test_other_final_rollout_failures_are_not_retried(code):
    cluster = ScriptedCluster({"rollout": [code]})
    assert _run(cluster).status == "Failed" and cluster.calls.count("rollout") == 1


def test_a_failed_switch_is_retried_once():
    cluster = ScriptedCluster({"rollout": [1, 0]})
    run = _run(cluster)
    assert run.status == "Succeeded" and cluster.calls.count("rollout") == 2
    cluster = ScriptedCluster({"rollout": [1, 1]})
    assert _run(cluster).status == "Failed" and cluster.calls.count("rollout") == 2


def test_a_failing_step_is_retried_then_stops_the_dag():
    cluster = ScriptedCluster({"embed": [1, 1, 1]})
    run = _run(cluster)
    assert cluster.calls.count("embed") == 3  # limit 2: three attempts
    phases = _phases(run)
    assert phases["embed"] == "Failed" and phases["merge"] == "Omitted" and phases["export"] == "Omitted"
    assert phases["rollout"] == "Omitted" and run.status == "Failed" and cluster.exit_status == "Failed"


def test_training_resumes_through_retries():
    cluster = ScriptedCluster({"train-pinnerformer": [1, 0]})
    run = _run(cluster, **{"retrain-pinnerformer": "true"})
    assert run.status == "Succeeded" and cluster.calls.count("train-pinnerformer") == 2


def test_dag_order_refuses_cycles_and_unknown_tasks():
    with pytest.raises(ArgoSubsetError, match="cycle"):
        argo.dag_order([{"name": "a", "template": "t", "depends": "b"}, {"name": "b", "template": "t", "depends": "a"}])
    with pytest.raises(ArgoSubsetError, match="unknown"):
        argo.dag_order([{"name": "a", "template": "t", "depends": "z"}])


# -- the local controllers ------------------------------------------------------------

def test_kubernetes_expansion_leaves_shell_syntax_alone():
    env = {"N": "2", "JOB_COMPLETION_INDEX": "1"}
    assert expand("--shard-index=$(JOB_COMPLETION_INDEX)", env) == "--shard-index=1"
    assert expand("$(UNDEFINED) $$(N) $(N)", env) == "$(UNDEFINED) $(N) 2"
    assert expand('x=$(readlink "$D"); y=$((N + 1))', env) == 'x=$(readlink "$D"); y=$((N + 1))'


def _cluster(tmp_path: Path) -> LocalCluster:
    return LocalCluster(tmp_path / "volumes", tmp_path / "logs", {}, log=lambda _: None, poll_s=0.05)


def _indexed_job(script: str, completions: int = 3, backoff_limit: int = 1) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "spec": {
        "completionMode": "Indexed", "completions": completions, "parallelism": 2, "backoffLimit": backoff_limit,
        "template": {"spec": {"restartPolicy": "Never", "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "vol"}}],
            "containers": [{"name": "c", "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            "env": [{"name": "OUT", "value": "/data/out"}]}]}}}}


def test_indexed_job_sets_the_completion_index_and_maps_the_volume(tmp_path):
    attempt, status = _cluster(tmp_path).run_indexed_job(
        "wf", "step", _indexed_job('mkdir -p "$OUT" && echo "$JOB_COMPLETION_INDEX" > "$OUT/$JOB_COMPLETION_INDEX"'))
    assert attempt.exit_code == 0 and status["completedIndexes"] == "0-2" and "completionTime" in status
    out = tmp_path / "volumes" / "vol" / "out"
    assert sorted(p.read_text().strip() for p in out.iterdir()) == ["0", "1", "2"]


def test_indexed_job_replaces_a_failed_pod_then_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr("deploy.daily.pods.RESTART_BACKOFF_S", 0.0)
    flaky = textwrap.dedent("""\
        f="$OUT-tries-$JOB_COMPLETION_INDEX"; echo x >> "$f"
        [ "$JOB_COMPLETION_INDEX" != 1 ] || [ "$(wc -l < "$f")" -ge 2 ]""")
    attempt, status = _cluster(tmp_path).run_indexed_job("wf", "step", _indexed_job(flaky))
    assert attempt.exit_code == 0 and status["failed"] == 1 and status["succeeded"] == 3
    attempt, status = _cluster(tmp_path).run_indexed_job("wf", "step2", _indexed_job("exit 1", backoff_limit=1))
    assert attempt.exit_code == 1 and status["conditions"][-1]["type"] == "Failed" and status["failed"] == 2


def _pytorchjob(script: str, workers: int = 1, backoff_limit: int = 2) -> dict[str, Any]:
    pod = {"spec": {"containers": [{"name": "pytorch", "command": ["sh", "-c", script]}]}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "spec": {
        "nprocPerNode": "1", "runPolicy": {"backoffLimit": backoff_limit},
        "pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod},
                                "Worker": {"replicas": workers, "restartPolicy": "OnFailure", "template": pod}}}}


def test_pytorchjob_pods_get_the_operators_environment(tmp_path):
    script = f'env | grep -E "^(RANK|WORLD_SIZE|MASTER_ADDR|MASTER_PORT|PET_[A-Z_]+)=" | sort > {tmp_path}/env-$RANK'
    attempt, status = _cluster(tmp_path).run_pytorchjob("wf", "train", _pytorchjob(script, workers=2))
    assert attempt.exit_code == 0 and status["replicaStatuses"]["Master"]["succeeded"] == 1
    envs = [dict(line.split("=", 1) for line in (tmp_path / f"env-{r}").read_text().split()) for r in range(3)]
    assert [e["PET_NODE_RANK"] for e in envs] == ["0", "1", "2"] and {e["PET_NNODES"] for e in envs} == {"3"}
    assert {e["WORLD_SIZE"] for e in envs} == {"3"} and {e["PET_NPROC_PER_NODE"] for e in envs} == {"1"}
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"], e["PET_MASTER_PORT"]) for e in envs}) == 1


def test_pytorchjob_restarts_a_failed_pod_in_place_up_to_the_backoff_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("deploy.daily.pods.RESTART_BACKOFF_S", 0.0)
    # The worker fails on its first start only (a lost peer, say) and succeeds once restarted.
    once = f'[ "$RANK" = 0 ] || [ -e {tmp_path}/started ] || {{ touch {tmp_path}/started; exit 1; }}'
    attempt, status = _cluster(tmp_path).run_pytorchjob("wf", "train", _pytorchjob(once))
    assert attempt.exit_code == 0 and attempt.detail["restarts"] == {"master-0": 0, "worker-0": 1}
    attempt, status = _cluster(tmp_path).run_pytorchjob("wf", "train2", _pytorchjob('[ "$RANK" = 0 ]'))
    assert attempt.exit_code == 1 and status["conditions"][-1]["type"] == "Failed"
    assert attempt.detail["restarts"]["worker-0"] == 2  # backoffLimit 2, then the job fails
