"""Three days of the daily loop on one machine, from the manifests of
deploy/k8s/daily, and the record of what happened (results/daily_loop.json).

- upstream: `pinrank data synth` writes the action log where the upstream
  job would (/data/dataset on the volume).
- day 0, the bootstrap run (retrain-pinnerformer=true, rollout=false): both
  trainers as PyTorchJobs on 2 gloo ranks (Master + 1 Worker; the Worker
  pod is killed after PinnerFormer's first checkpoint and both restart and
  resume), a full snapshot from 2 shards, the first export; then the fleet
  starts on it (2 replicas, explicit model control, one repository, one key).
- day 1, the daily run: the served PinnerFormer carried, an incremental
  snapshot (only users with new actions), the ranker retrained, export v+1,
  rollout under live traffic: `failed_requests_during_switch` must be 0.
- day 2, the daily run with `force-canary-failure=true`: the rollout must
  roll the canary back (exit 3, not retried), the workflow end Failed, the
  fleet keep serving day 1's version and /data/current keep pointing at
  day 1's run: `rollback_on_canary_failure`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from deploy.daily import argo
from deploy.daily.fleet import LocalFleet, traffic
from deploy.daily.pods import LocalCluster, PodLoss
from pinrank.rollout.traffic import reference

#: The sizes that make three days fit in a few minutes on 2 cores. Everything
#: else is the WorkflowTemplate's own default (its production values).
LOCAL_PARAMETERS = {
    "shards": "2", "train-workers": "1", "nproc-per-node": "1", "gpus-per-node": "0", "dist-backend": "gloo",
    "train-cpu": "1", "train-memory": "4Gi", "embed-cpu": "1", "embed-memory": "2Gi", "embed-threads": "1",
    # PinnerFormer checkpoints every 100 steps: 120 gives the pod loss a checkpoint to resume from.
    "pinnerformer-steps": "120", "pinnerformer-batch-size": "32", "ranker-steps": "20", "ranker-batch-size": "128",
    "export-target": "cpu", "fleet-dns": "", "canary-requests": "20",
    # The fleet shares 2 cores with the loop itself: scheduling noise moves p99 a lot (one run here measured a
    # healthy canary's first round at 2x the old version's), and day 2's forced failure does not depend on it.
    "max-latency-ratio": "3.0",
}
#: The upstream job's stand-in: 14 days of logs (the last 3 the evaluation period) for 400 users.
SYNTH = ["--users", "400", "--items", "600", "--topics", "20", "--days", "14", "--eval-days", "3", "--seed", "0"]
VOLUME = "pinrank-data"
SECRET = ("pinrank-admin-key", "admin-key")


@dataclass(frozen=True)
class Day:
    number: int
    what: str
    overrides: dict[str, str]


DAYS = (
    Day(0, "bootstrap: train PinnerFormer and the ranker, full snapshot, first export (no fleet yet)",
        {"retrain-pinnerformer": "true", "rollout": "false"}),
    Day(1, "daily: served PinnerFormer kept, incremental snapshot, ranker retrained, export v+1, rollout "
           "under live traffic", {}),
    Day(2, "daily with a forced canary failure: the canary must be rolled back and the run end Failed",
        {"force-canary-failure": "true"}),
)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _current(data: Path) -> str | None:
    link = data / "current"
    return os.readlink(link) if link.is_symlink() else None


def _outcome(path: Path) -> dict[str, Any] | None:
    line = _read_json(path)
    if line and line.get("rollout"):
        line["rollout"] = {k: line["rollout"].get(k) for k in ("outcome", "exit_code", "reason")}
    return line


def upstream(dataset: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """What the upstream job does before the CronWorkflow fires: the day's action log on the volume."""
    argv = [str(Path(sys.executable).parent / "pinrank"), "data", "synth", "--out", str(dataset), *SYNTH, "--quiet"]
    t0 = time.monotonic()
    log(f"upstream: {shlex.join(argv[1:])}")
    subprocess.run(argv, check=True, capture_output=True, text=True)
    return {"name": "upstream: pinrank data synth", "command": ["pinrank", *argv[1:]],
            "seconds": round(time.monotonic() - t0, 2), "exit_code": 0}


def as_of_dates(dataset: Path, count: int) -> list[str]:
    """One day each, from the dataset's train_end_ms on (the log runs 3 days past it)."""
    end = datetime.fromtimestamp(json.loads((dataset / "meta.json").read_text())["train_end_ms"] / 1000, timezone.utc)
    return [(end + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(count)]


class RolloutWatch:
    """Live traffic around the `rollout` task, with each answer labelled by
    the version that gave it (references captured before and after)."""

    def __init__(self, fleet: LocalFleet | None, dataset: Path) -> None:
        self.fleet, self.dataset = fleet, dataset
        self.summary: dict[str, Any] | None = None

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        if step != "rollout" or self.fleet is None:
            yield
            return
        before = self.fleet.versions()
        with traffic(self.fleet.addresses, self.dataset) as live:
            old = reference(self.fleet.addresses[0], live.requests)
            yield
        after = self.fleet.versions()
        references = {f"v{before[self.fleet.addresses[0]]}": old}
        if set(after.values()) != set(before.values()) and len(set(after.values())) == 1:
            references[f"v{after[self.fleet.addresses[0]]}"] = reference(self.fleet.addresses[0], live.requests)
        self.summary = live.summary(references)


def run_day(day: Day, runner: argo.Runner, template: dict, cron: dict, params: dict[str, str],
            data: Path, fleet: LocalFleet | None, watch: RolloutWatch, log: Callable[[str], None]) -> dict[str, Any]:
    name = f"pinrank-daily-d{day.number}"
    values = argo.parameters(template, cron, params)
    log(f"\n== day {day.number} ({name}): {day.what}")
    versions_before = fleet.versions() if fleet else None
    current_before = _current(data)
    watch.summary = None
    run = runner.run(name, values)
    run_dir = data / "runs" / name
    snapshot = _read_json(run_dir / "snapshot" / "meta.json")
    export = _read_json(run_dir / "export.json")
    out = {
        "day": day.number, "workflow": name, "what": day.what, "as_of": values["as-of"],
        "parameters": {k: values[k] for k in ("retrain-pinnerformer", "rollout", "force-canary-failure", "as-of")},
        "status": run.status, "seconds": round(run.seconds, 1),
        "steps": [s.record() for s in run.steps],
        "snapshot": {k: snapshot[k] for k in ("version", "incremental", "counts")} if snapshot else None,
        "exported_version": export["published"][values["export-target"]]["version"] if export else None,
        "versions_served_before": versions_before,
        "versions_served_after": fleet.versions() if fleet else None,
        "current_before": current_before, "current_after": _current(data),
        "rollout_report": _read_json(run_dir / "rollout.json"),
        # The exit handler's line, with only the gist of the rollout report it embeds (in full: rollout_report).
        "outcome": _outcome(run_dir / "outcome.json"),
        "traffic_during_rollout": watch.summary,
    }
    log(f"== day {day.number}: {run.status} in {run.seconds:.0f} s; served before {versions_before}, "
        f"after {out['versions_served_after']}; current -> {out['current_after']}")
    return out


def pod_loss_evidence(day0: dict[str, Any], data: Path) -> dict[str, Any] | None:
    """What shows the PyTorchJob resumed: the checkpoint step when the pod
    was lost, the final step, and how long the restarted run trained (its
    own metrics: train_seconds counts only the steps it ran)."""
    step = next(s for s in day0["steps"] if s["name"] == "train-pinnerformer")
    loss = (step["detail"] or {}).get("pod_loss")
    if not loss:
        return None
    metrics = _read_json(data / "runs" / day0["workflow"] / "models" / "pinnerformer.metrics.json") or {}
    return {**loss, "restarts": step["detail"]["restarts"], "events": step["detail"]["events"],
            "final_step": metrics.get("steps"), "restarted_run_train_seconds": metrics.get("train_seconds"),
            "world_size": step["detail"]["world_size"], "job_phase": step["phase"]}


def run_loop(work: Path, *, replicas: int = 2, lose_training_pod: bool = True,
             overrides: dict[str, str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.monotonic()
    template, cron = argo.load(argo.WORKFLOW_TEMPLATE), argo.load(argo.CRON_WORKFLOW)
    work = work.resolve()  # every pod runs in a directory of its own: no path may be relative
    if work.exists():
        shutil.rmtree(work)
    volumes = work / "volumes"
    data = volumes / VOLUME
    dataset = data / "dataset"
    params = {**LOCAL_PARAMETERS, **(overrides or {})}
    key = os.urandom(24).hex()
    loss = PodLoss("train-pinnerformer") if lose_training_pod else None
    cluster = LocalCluster(volumes, work / "logs", {SECRET: key}, log=log, pod_loss=loss)
    fleet: LocalFleet | None = None
    watch = RolloutWatch(None, dataset)
    runner = argo.Runner(template, cluster, log=log, around=watch)
    record: dict[str, Any] = {
        "what": "the daily loop of deploy/k8s/daily run locally by `python -m deploy.daily` (make daily-loop)",
        "manifests": [str(p.relative_to(argo.ROOT)) for p in (argo.WORKFLOW_TEMPLATE, argo.CRON_WORKFLOW)],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "local_parameters": params, "work": str(work),
    }
    record["upstream"] = upstream(dataset, log)
    dates = as_of_dates(dataset, len(DAYS))
    days = []
    with contextlib.ExitStack() as stack:
        for day, as_of in zip(DAYS, dates):
            fleet_param = {"fleet": ",".join(fleet.addresses)} if fleet else {}
            days.append(run_day(day, runner, template, cron, {**params, **day.overrides, "as-of": as_of,
                                                               **fleet_param}, data, fleet, watch, log))
            if day.number == 0:
                if days[0]["status"] != "Succeeded":
                    break
                log(f"\n== the fleet: {replicas} x pinrank serve --model-control explicit on the exported repository")
                fleet = stack.enter_context(LocalFleet(data / "repository" / params["export-target"],
                                                       work / "fleet", replicas, key))
                watch.fleet = fleet
                record["fleet"] = {**fleet.describe(), "versions_at_start": fleet.versions()}
                log(f"   started in {fleet.start_seconds:.0f} s: {record['fleet']['versions_at_start']}")
    record["days"] = days
    record["training_pod_loss"] = pod_loss_evidence(days[0], data) if days else None
    record.update(verdict(days))
    record["total_seconds"] = round(time.monotonic() - t0, 1)
    return record


def verdict(days: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's conditions, from what the days recorded."""
    if len(days) < len(DAYS):
        return {"failed_requests_during_switch": None, "rollback_on_canary_failure": False, "ok": False}
    d0, d1, d2 = days
    t1 = d1["traffic_during_rollout"] or {}
    failed = t1.get("failed_requests")
    rollout1 = next(s for s in d1["steps"] if s["name"] == "rollout")
    new_version = d1["exported_version"]
    rolled_out = (d1["status"] == "Succeeded" and rollout1["exit_code"] == 0 and t1.get("requests", 0) > 0
                  and set(d1["versions_served_after"].values()) == {new_version}
                  and d1["current_after"] == f"runs/{d1['workflow']}")
    rollout2 = next(s for s in d2["steps"] if s["name"] == "rollout")
    promote2 = next(s for s in d2["steps"] if s["name"] == "promote")
    rolled_back = (d2["status"] == "Failed" and rollout2["exit_code"] == 3 and rollout2["attempts"] == 1
                   and promote2["phase"] == "Omitted"
                   and d2["versions_served_after"] == d2["versions_served_before"] == d1["versions_served_after"]
                   and d2["current_after"] == d2["current_before"] == d1["current_after"]
                   and (d2["outcome"] or {}).get("status") == "Failed")
    return {
        "failed_requests_during_switch": failed,
        "rollback_on_canary_failure": rolled_back,
        "checks": {"bootstrap_succeeded": d0["status"] == "Succeeded",
                   "day1_incremental_snapshot": bool((d1["snapshot"] or {}).get("incremental")),
                   "day1_rolled_out_to_every_replica": rolled_out,
                   "day1_no_failed_request": failed == 0,
                   "day2_rolled_back_and_not_promoted": rolled_back},
        "ok": d0["status"] == "Succeeded" and rolled_out and failed == 0 and rolled_back,
    }
