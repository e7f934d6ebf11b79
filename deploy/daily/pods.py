"""Pods, Indexed Jobs and PyTorchJobs as local processes: what the kubelet,
the Job controller and the Kubeflow Training Operator would run for the
daily loop's manifests, on one machine.

A container runs its own command and args (Kubernetes' `$(VAR)` expansion
applied) with its own environment (literal values; secretKeyRef from the
secrets given), plus what the controller adds: JOB_COMPLETION_INDEX for an
Indexed Job's pod; MASTER_ADDR/PORT, WORLD_SIZE, RANK and torchrun's
PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR/PORT for a
PyTorchJob's (training-operator 1.8, pkg/controller.v1/pytorch/envvar.go and
master.go; the master's Service name becomes 127.0.0.1). A
persistentVolumeClaim mounted at M is the directory <root>/<claimName>:
every argument and environment value that is M or starts with M/ is
rewritten to it. The image is this checkout's .venv (its bin/ first on
PATH: `pinrank`, `torchrun`; `sh` is the system's).

Restart semantics follow the controllers: an Indexed Job's failed pod
(restartPolicy Never) is replaced until the Job's failures exceed
backoffLimit; a PyTorchJob pod with restartPolicy OnFailure restarts in
place until the job's restarts exceed runPolicy.backoffLimit; both after
the kubelet's and the Job controller's back-off (10 s, doubling, at most
5 min). The delay matters: a container restarted at once can reach the
dying rank 0's rendezvous store before it goes and then wait for a group
that never forms, which Kubernetes' back-off avoids. The final
`status` is what those controllers write (conditions included), which the
workflow's success and failure conditions then read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import torch

from deploy.daily.argo import ArgoSubsetError, Attempt
from pinrank.serving.health import descendants
from pinrank.serving.tritonserver import free_ports

#: Variables of the runner's own environment that a pod must not inherit:
#: a process group or key set here would leak into the "cluster".
NOT_INHERITED = re.compile(r"^(PINRANK_.*|PET_.*|MASTER_ADDR|MASTER_PORT|RANK|LOCAL_RANK|WORLD_SIZE|"
                           r"LOCAL_WORLD_SIZE|GROUP_RANK|TORCHELASTIC_.*|JOB_COMPLETION_INDEX)$")
#: Seconds before a failed container restarts (or a failed Job pod is
#: replaced): the kubelet's CrashLoopBackOff and the Job controller's back-off.
RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S = 10.0, 300.0
#: Kubernetes' `$(VAR)` references in command and args (`$$` escapes a `$`).
K8S_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of command and args: `$(VAR)` of a defined
    variable becomes its value, `$$` a `$`; anything else stays as written
    (so a shell's `$(cmd)` and `$((n + 1))` reach the shell untouched)."""
    def value(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return K8S_REFERENCE.sub(value, text)


def restart_delay(restarts: int) -> float:
    """The back-off before restart number `restarts` + 1."""
    return min(RESTART_BACKOFF_S * 2 ** restarts, RESTART_BACKOFF_MAX_S)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodLoss:
    """Kill one PyTorchJob pod, once, right after the trainer's first
    checkpoint appears at its --out: a node lost mid-training."""

    step: str
    pod: str = "worker-0"
    fired: bool = False
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Process:
    """One container of one pod, started (and restarted) as a local process group."""

    pod: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    restarts: int = 0
    proc: subprocess.Popen | None = None
    _log: IO[str] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a")  # closed in wait()/kill()
        self._log.write(f"--- {utc_now()} start: {shlex.join(self.argv)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def poll(self) -> int | None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None and self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL everything the container runs, as a node loss or the
        kubelet would: its process group and every descendant (torchrun
        starts each rank in a session of its own, so the group alone would
        leave the ranks running)."""
        if self.proc is not None and self.proc.poll() is None:
            below = descendants(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        self.poll()

    def tail(self, chars: int = 1500) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""


class LocalCluster:
    """Runs the daily loop's pods as processes (see the module docstring)."""

    def __init__(self, volumes_root: Path, logs: Path, secrets: Mapping[tuple[str, str], str], *,
                 bin_dir: Path = Path(sys.executable).parent, log: Callable[[str], None] = print,
                 pod_loss: PodLoss | None = None, poll_s: float = 0.2, max_job_s: float = 1800.0) -> None:
        self.volumes_root, self.logs, self.secrets = Path(volumes_root).resolve(), Path(logs).resolve(), dict(secrets)
        self.bin_dir, self.log, self.pod_loss, self.poll_s = Path(bin_dir), log, pod_loss, poll_s
        #: A local safety net under the manifests' own deadlines (hours): a hung job fails the run.
        self.max_job_s = max_job_s

    # -- a container's process --------------------------------------------

    def mounts(self, container: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """(mountPath, local directory) of each persistentVolumeClaim the container mounts."""
        by_name = {v["name"]: v for v in volumes}
        out = []
        for mount in container.get("volumeMounts", []):
            volume = by_name.get(mount["name"])
            if volume is None:
                raise ArgoSubsetError(f"volumeMount {mount['name']!r} names no volume")
            if "persistentVolumeClaim" in volume:
                local = self.volumes_root / volume["persistentVolumeClaim"]["claimName"]
                local.mkdir(parents=True, exist_ok=True)
                out.append((mount["mountPath"].rstrip("/"), str(local)))
        return out

    @staticmethod
    def local_path(value: str, mounts: Sequence[tuple[str, str]]) -> str:
        for mount, local in mounts:
            if value == mount or value.startswith(mount + "/"):
                return local + value[len(mount):]
        return value

    def environment(self, container: Mapping[str, Any], mounts: Sequence[tuple[str, str]],
                    added: Mapping[str, str]) -> dict[str, str]:
        """The container's environment: the runner's own minus what must not
        leak, the .venv first on PATH, then the container's variables, then
        what the controller adds."""
        env = {k: v for k, v in os.environ.items() if not NOT_INHERITED.match(k)}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = self.local_path(str(var["value"]), mounts)
            elif "secretKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["secretKeyRef"]
                if (ref["name"], ref["key"]) not in self.secrets:
                    raise ArgoSubsetError(f"no local value for Secret {ref['name']}/{ref['key']}")
                env[var["name"]] = self.secrets[(ref["name"], ref["key"])]
            else:
                raise ArgoSubsetError(f"env {var['name']}: only value and secretKeyRef are modelled")
        env.update(added)
        return env

    def argv(self, container: Mapping[str, Any], env: Mapping[str, str],
             mounts: Sequence[tuple[str, str]]) -> list[str]:
        words = [*container.get("command", []), *container.get("args", [])]
        if not words:
            raise ArgoSubsetError("a container without command: the image's entrypoint is not modelled")
        return [self.local_path(expand(str(w), env), mounts) for w in words]

    def process(self, workflow: str, step: str, pod: str, container: Mapping[str, Any],
                volumes: Sequence[Mapping[str, Any]], added: Mapping[str, str] | None = None) -> Process:
        mounts = self.mounts(container, volumes)
        env = self.environment(container, mounts, added or {})
        where = self.logs / workflow / step
        return Process(pod, self.argv(container, env, mounts), env, where / f"{pod}.log", where / f"{pod}.cwd")

    def _report_failure(self, p: Process, code: int | None) -> None:
        self.log(f"    pod {p.pod} exited {code}; last log lines ({p.log_path}):")
        for line in p.tail().splitlines()[-12:]:
            self.log(f"      | {line}")

    # -- an Argo container template -------------------------------------------

    def run_container(self, workflow: str, step: str, container: dict[str, Any], metadata: dict[str, Any],
                      volumes: list[dict[str, Any]]) -> Attempt:
        p = self.process(workflow, step, step, container, volumes)
        t0 = time.monotonic()
        p.start()
        assert p.proc is not None
        code = p.proc.wait()
        p.poll()
        if code != 0:
            self._report_failure(p, code)
        return Attempt(code, time.monotonic() - t0, [p.argv], {"log": str(p.log_path)})

    # -- resource templates ---------------------------------------------------------

    def run_resource(self, workflow: str, step: str, manifest: dict[str, Any]) -> tuple[Attempt, dict[str, Any]]:
        kind = (manifest.get("apiVersion"), manifest.get("kind"))
        if kind == ("batch/v1", "Job"):
            return self.run_indexed_job(workflow, step, manifest)
        if kind == ("kubeflow.org/v1", "PyTorchJob"):
            return self.run_pytorchjob(workflow, step, manifest)
        raise ArgoSubsetError(f"{step}: no local controller for {kind}")

    def run_indexed_job(self, workflow: str, step: str, manifest: dict[str, Any]) -> tuple[Attempt, dict[str, Any]]:
        """The Job controller for an Indexed Job: `parallelism` pods at a
        time, one per pending completion index; a failed pod is replaced
        until failures exceed backoffLimit (then the running ones are killed)."""
        spec = manifest["spec"]
        if spec.get("completionMode") != "Indexed":
            raise ArgoSubsetError(f"{step}: only Indexed Jobs are modelled")
        completions, parallelism = int(spec["completions"]), int(spec.get("parallelism", 1))
        backoff_limit = int(spec.get("backoffLimit", 6))
        pod_spec = spec["template"]["spec"]
        (container,) = pod_spec["containers"]
        volumes = pod_spec.get("volumes", [])
        controller_env = {f"index-{i}": {"JOB_COMPLETION_INDEX": str(i)} for i in range(completions)}
        pending, running, done = list(range(completions)), {}, set()
        failures, t0, commands = 0, time.monotonic(), {}
        not_before: dict[int, float] = {}  # index -> when its replacement pod may start
        failed = False
        while (pending or running) and not failed:
            if time.monotonic() - t0 > self.max_job_s:
                self.log(f"    {step}: still running after {self.max_job_s:.0f} s (local safety timeout)")
                failed = True
                break
            for index in [i for i in pending if not_before.get(i, 0.0) <= time.monotonic()]:
                if len(running) >= parallelism:
                    break
                pending.remove(index)
                p = self.process(workflow, step, f"index-{index}", container, volumes, controller_env[f"index-{index}"])
                commands[index] = p.argv
                p.start()
                running[index] = p
            time.sleep(self.poll_s)
            for index, p in list(running.items()):
                code = p.poll()
                if code is None:
                    continue
                del running[index]
                if code == 0:
                    done.add(index)
                    continue
                failures += 1
                self._report_failure(p, code)
                if failures > backoff_limit:
                    failed = True
                else:
                    # restartPolicy Never: a new pod for the index, after the controller's back-off.
                    not_before[index] = time.monotonic() + restart_delay(failures - 1)
                    pending.append(index)
        for p in running.values():
            p.kill()
        # What the Job controller writes (Kubernetes >= 1.31: the *Target / SuccessCriteriaMet condition first).
        if failed:
            status = {"failed": failures, "succeeded": len(done),
                      "conditions": [{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}]}
        else:
            status = {"failed": failures, "succeeded": len(done), "completedIndexes": _ranges(sorted(done)),
                      "completionTime": utc_now(),
                      "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                     {"type": "Complete", "status": "True"}]}
        detail = {"completions": completions, "parallelism": parallelism, "pod_failures": failures,
                  "pods": controller_env}
        return Attempt(1 if failed else 0, time.monotonic() - t0, [commands[i] for i in sorted(commands)],
                       detail), status

    def run_pytorchjob(self, workflow: str, step: str, manifest: dict[str, Any]) -> tuple[Attempt, dict[str, Any]]:
        """The Training Operator for a PyTorchJob with a Master: every replica
        started with the operator's environment; restartPolicy OnFailure
        restarts a pod that exits non-zero in place (a peer's loss fails the
        survivors' collectives, so they restart too and torchrun forms the
        group again) until the restarts exceed runPolicy.backoffLimit."""
        spec = manifest["spec"]
        nproc = spec.get("nprocPerNode", "1")
        per_node = int(nproc) if nproc.isdigit() else 1
        run_policy = spec.get("runPolicy", {})
        backoff_limit = int(run_policy.get("backoffLimit", 6))
        deadline = float(run_policy.get("activeDeadlineSeconds", 1e9))
        replicas = spec["pytorchReplicaSpecs"]
        pods: list[tuple[str, str, dict[str, Any]]] = []  # (replica type, pod name, its ReplicaSpec)
        for rtype in ("Master", "Worker"):
            for i in range(int(replicas.get(rtype, {}).get("replicas", 0))):
                pods.append((rtype, f"{rtype.lower()}-{i}", replicas[rtype]))
        if not pods or pods[0][0] != "Master":
            raise ArgoSubsetError(f"{step}: only PyTorchJobs with a Master are modelled")
        (port,) = free_ports(1)
        processes: list[Process] = []
        controller_env: dict[str, dict[str, str]] = {}
        for node_rank, (_, pod, rs) in enumerate(pods):
            (container,) = [c for c in rs["template"]["spec"]["containers"] if c["name"] == "pytorch"]
            added = {"PYTHONUNBUFFERED": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                     "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
                     "WORLD_SIZE": str(len(pods) * per_node), "RANK": str(node_rank),
                     "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(node_rank), "PET_NNODES": str(len(pods))}
            controller_env[pod] = added
            processes.append(self.process(workflow, step, pod, container, rs["template"]["spec"].get("volumes", []),
                                          added))
        restart_policy = {pod: rs.get("restartPolicy", "Never") for _, pod, rs in pods}
        t0 = time.monotonic()
        for p in processes:
            p.start()
        exit_codes: dict[str, int] = {}
        restart_at: dict[str, float] = {}  # pod -> when the kubelet restarts its container
        restarts, events, failed = 0, [], False
        while len(exit_codes) < len(processes) and not failed:
            time.sleep(self.poll_s)
            self._maybe_lose_pod(step, processes, events, t0)
            elapsed = time.monotonic() - t0
            if elapsed > min(deadline, self.max_job_s):
                events.append({"t": round(elapsed, 1), "event": "deadline passed (activeDeadlineSeconds or the "
                                                                "local safety timeout)"})
                failed = True
                break
            for p in processes:
                if p.pod in restart_at and restart_at[p.pod] <= time.monotonic():
                    del restart_at[p.pod]
                    events.append({"t": round(time.monotonic() - t0, 1), "pod": p.pod, "event": "restarted"})
                    p.start()
                if p.pod in exit_codes or p.pod in restart_at:
                    continue
                code = p.poll()
                if code is None:
                    continue
                if code == 0:
                    exit_codes[p.pod] = 0
                    continue
                if restart_policy[p.pod] in ("OnFailure", "Always") and restarts < backoff_limit:
                    restarts += 1
                    delay = restart_delay(p.restarts)
                    p.restarts += 1
                    restart_at[p.pod] = time.monotonic() + delay
                    events.append({"t": round(time.monotonic() - t0, 1), "pod": p.pod, "exit": code,
                                   "event": f"container failed; restart in {delay:.0f} s (restartPolicy OnFailure)"})
                    self.log(f"    pod {p.pod} exited {code}: restarting in place in {delay:.0f} s "
                             f"(restart {p.restarts})")
                else:
                    self._report_failure(p, code)
                    exit_codes[p.pod] = code
                    failed = True
        for p in processes:
            p.kill()
        master_ok = exit_codes.get(processes[0].pod) == 0 and not failed
        status: dict[str, Any] = {
            "replicaStatuses": {rtype: {"succeeded": sum(exit_codes.get(pod) == 0 for r, pod, _ in pods if r == rtype),
                                        "failed": sum(exit_codes.get(pod, 0) != 0 for r, pod, _ in pods if r == rtype)}
                                for rtype in {r for r, _, _ in pods}},
            "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                           {"type": "Succeeded" if master_ok else "Failed", "status": "True"}],
        }
        if master_ok:
            status["completionTime"] = utc_now()
        detail = {"pods": controller_env, "world_size": len(pods) * per_node,
                  "restarts": {p.pod: p.restarts for p in processes}, "events": events}
        if self.pod_loss is not None and self.pod_loss.step == step and self.pod_loss.record:
            detail["pod_loss"] = self.pod_loss.record
        return Attempt(0 if master_ok else 1, time.monotonic() - t0, [p.argv for p in processes], detail), status

    def _maybe_lose_pod(self, step: str, processes: Sequence[Process], events: list, t0: float) -> None:
        loss = self.pod_loss
        if loss is None or loss.fired or loss.step != step:
            return
        (victim,) = [p for p in processes if p.pod == loss.pod]
        checkpoint = Path(victim.argv[victim.argv.index("--out") + 1])
        if not checkpoint.exists():
            return
        victim.kill()
        loss.fired = True
        t = round(time.monotonic() - t0, 1)
        # The step the survivors will resume from: the file the trainer renamed into place.
        step_saved = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
        loss.record = {"pod": loss.pod, "killed_at_s": t, "checkpoint": str(checkpoint),
                       "checkpoint_step_when_lost": step_saved}
        events.append({"t": t, "pod": loss.pod, "event": "killed (SIGKILL to the pod's processes) after the first "
                                                         "checkpoint appeared"})
        self.log(f"    pod {loss.pod} killed at {t} s, after the first checkpoint ({checkpoint.name}) appeared")


def _ranges(indexes: Sequence[int]) -> str:
    """The Job status' completedIndexes form: "0-3,5"."""
    out: list[str] = []
    for i in indexes:
        if out and i == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)
