"""deploy/k8s/daily: the daily loop's manifests, checked offline.

As tests/deploy/test_manifests.py does for the fleet: built-in kinds against
the Kubernetes OpenAPI schemas of kubernetes-validate (strict), the custom
kinds (PyTorchJob, WorkflowTemplate, CronWorkflow) against deploy/schemas/,
and everything Argo only creates at run time (its containers, the objects
its resource templates create after parameter substitution) the same way.
Then the pieces against each other and against the code they run: every
command is a real `pinrank` subcommand with options it has, obtained by
running each container's own shell line with a stand-in `pinrank` that
records its arguments; the trainers resume from the checkpoint the next
steps read; the Indexed Job has one completion per shard; a canary rollback
is final; the fleet overlay starts Triton with the entrypoint's flags under
explicit model control, on the repository the export writes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_manifests import TEST_KEY, load_yaml_docs, render, run_entrypoint, secrets_of, triton_flags, validate_builtin

from deploy.daily import argo
from deploy.daily.loop import LOCAL_PARAMETERS
from deploy.daily.pods import LocalCluster
from pinrank.cli import main as pinrank_main

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DAILY = K8S / "daily"
FLEET = DAILY / "fleet"
SCHEMAS = ROOT / "deploy" / "schemas"
CRD_SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.kubeflow.org_v1.json",
    ("argoproj.io/v1alpha1", "WorkflowTemplate"): "workflowtemplate.argoproj.io_v1alpha1.json",
    ("argoproj.io/v1alpha1", "CronWorkflow"): "cronworkflow.argoproj.io_v1alpha1.json",
}
DAILY_KINDS = {"Namespace", "Secret", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding",
               "WorkflowTemplate", "CronWorkflow"}
FLEET_KINDS = {"Namespace", "Secret", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
               "PodDisruptionBudget", "NetworkPolicy"}
#: Parameter sets every check runs with: the production defaults, the local loop's, the bootstrap run's.
PARAMETER_SETS = {"production": {}, "local": LOCAL_PARAMETERS,
                  "bootstrap": {"retrain-pinnerformer": "true", "rollout": "false"}}
#: Where the local loop and these tests mount the volume; the pods mount it at MOUNT.
MOUNT = "/data"
WORKFLOW = "pinrank-daily-test"


# -- loading and rendering ---------------------------------------------------------

@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return argo.load(argo.WORKFLOW_TEMPLATE)


@pytest.fixture(scope="module")
def cron() -> dict[str, Any]:
    return argo.load(argo.CRON_WORKFLOW)


def templates(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in template["spec"]["templates"]}


def tasks(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in templates(template)[template["spec"]["entrypoint"]]["dag"]["tasks"]}


#: Lists kustomize merges item by item in a strategic-merge patch, and the key it matches items on.
MERGE_KEYS = {"containers": "name", "volumes": "name", "volumeMounts": "mountPath", "env": "name",
              "ports": "containerPort"}


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge for what fleet/ patches: maps merge
    recursively, the lists above merge by key, anything else is replaced."""
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key in MERGE_KEYS and isinstance(value, list) and isinstance(base.get(key), list):
            merged = copy.deepcopy(base[key])
            for item in value:
                same = [i for i, old in enumerate(merged) if old.get(MERGE_KEYS[key]) == item.get(MERGE_KEYS[key])]
                if same:
                    merged[same[0]] = strategic_merge(merged[same[0]], item)
                else:
                    merged.append(copy.deepcopy(item))
            out[key] = merged
        else:
            out[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
    return out


def render_fleet() -> list[dict[str, Any]]:
    """`kubectl apply -k deploy/k8s/daily/fleet`: test_manifests.render for its
    base and files, then its strategic-merge patches (the kustomize feature
    that render leaves out)."""
    k = yaml.safe_load((FLEET / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "patches"}, sorted(k)
    docs: list[dict[str, Any]] = []
    for entry in k["resources"]:
        target = (FLEET / entry).resolve()
        docs += render(target) if target.is_dir() else [copy.deepcopy(d) for d in load_yaml_docs(target)]
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = k["namespace"]
    for p in k["patches"]:
        assert set(p) == {"path"}, "only file patches are modelled"
        (patch,) = load_yaml_docs(FLEET / p["path"])
        (i,) = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) ==
                (patch["kind"], patch["metadata"]["name"])]
        docs[i] = strategic_merge(docs[i], patch)
    return docs


@pytest.fixture(scope="module")
def daily() -> list[dict[str, Any]]:
    return render(DAILY)


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    return render_fleet()


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def variables(template: dict[str, Any], cron: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    values = argo.parameters(template, cron, overrides)
    return {"workflow.name": WORKFLOW, "workflow.status": "Succeeded",
            **{f"workflow.parameters.{k}": v for k, v in values.items()}}


def resource_objects(template: dict[str, Any], cron: dict[str, Any],
                     overrides: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What each resource task creates, after Argo's substitution: task name -> object."""
    v = variables(template, cron, overrides)
    out = {}
    for name, task in tasks(template).items():
        t = templates(template)[task["template"]]
        if "resource" in t:
            inputs = {f"inputs.parameters.{p['name']}": argo.substitute(p["value"], v)
                      for p in task.get("arguments", {}).get("parameters", [])}
            out[name] = yaml.safe_load(argo.substitute(t["resource"]["manifest"], {**v, **inputs}))
    return out


def container_steps(template: dict[str, Any], cron: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Every container the workflow runs (Argo's own and those of the objects
    it creates), substituted: step -> (container, its pod's volumes)."""
    v = variables(template, cron, overrides)
    out: dict[str, Any] = {}
    for name, t in templates(template).items():
        if "container" in t:
            out[name] = (argo.substitute_all(t["container"], v), template["spec"]["volumes"])
    for name, obj in resource_objects(template, cron, overrides).items():
        for pod_name, pod in pods_of(obj).items():
            (container,) = pod["spec"]["containers"]
            out[f"{name}/{pod_name}"] = (container, pod["spec"].get("volumes", []))
    return out


def pods_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod templates of a Job or a PyTorchJob."""
    if obj["kind"] == "Job":
        return {"index": obj["spec"]["template"]}
    return {rtype.lower(): rs["template"] for rtype, rs in obj["spec"]["pytorchReplicaSpecs"].items()}


# -- validation --------------------------------------------------------------------

def crd_schema(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads((SCHEMAS / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())


def as_pod(spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def validate_object(doc: dict[str, Any]) -> None:
    """A built-in kind against Kubernetes' schema; a custom kind against
    deploy/schemas, and what it embeds (pod templates, Argo containers)
    against Kubernetes' schemas."""
    key = (doc["apiVersion"], doc["kind"])
    if key not in CRD_SCHEMAS:
        validate_builtin(doc)
        return
    jsonschema.Draft202012Validator(crd_schema(doc)).validate(doc)
    if doc["kind"] == "PyTorchJob":
        for rs in doc["spec"]["pytorchReplicaSpecs"].values():
            validate_builtin(as_pod(rs["template"]["spec"]))
    if doc["kind"] == "WorkflowTemplate":
        spec = doc["spec"]
        for t in spec["templates"]:
            if "container" in t:
                validate_builtin(as_pod({"containers": [{"name": "main", **t["container"]}],
                                         "volumes": spec.get("volumes", []),
                                         "securityContext": spec.get("securityContext", {})}, t["name"]))


def substituted_template(template, cron, overrides) -> dict[str, Any]:
    """The WorkflowTemplate with every parameter substituted except in the
    resource manifests (checked as the objects they create) and `when`."""
    v = variables(template, cron, overrides)
    doc = copy.deepcopy(template)
    for t in doc["spec"]["templates"]:
        if "container" in t:
            t["container"] = argo.substitute_all(t["container"], v)
    return doc


def test_daily_kustomization_renders_the_kinds_it_is_for(daily):
    kinds = [d["kind"] for d in daily]
    assert set(kinds) == DAILY_KINDS and len(kinds) == len(DAILY_KINDS)
    assert all(d["metadata"].get("namespace") == "pinrank" for d in daily if d["kind"] != "Namespace")


def test_fleet_kustomization_renders_the_fleet_and_its_admin_access(fleet):
    assert {d["kind"] for d in fleet} == FLEET_KINDS
    assert {d["metadata"]["name"] for d in fleet if d["kind"] == "Service"} == {"pinrank-triton",
                                                                                  "pinrank-triton-admin"}


def test_every_daily_file_is_applied():
    daily = yaml.safe_load((DAILY / "kustomization.yaml").read_text())
    fleet = yaml.safe_load((FLEET / "kustomization.yaml").read_text())
    listed = {(DAILY / e).resolve() for e in daily["resources"]} | {(FLEET / e).resolve() for e in fleet["resources"]}
    listed |= {(FLEET / p["path"]).resolve() for p in fleet["patches"]}
    files = {p.resolve() for p in DAILY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files <= listed


def _normalised(docs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    def norm(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list):
            items = [norm(v) for v in x]
            if all(isinstance(i, dict) for i in items):  # merged lists: kustomize's order is not modelled
                return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))
            return items
        return x
    return {(d["kind"], d["metadata"]["name"]): norm(d) for d in docs}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
@pytest.mark.parametrize("directory", [DAILY, FLEET], ids=["daily", "fleet"])
def test_rendering_matches_kubectl_kustomize(directory, daily, fleet):
    """Where kubectl is installed, the real kustomize renders what these tests check."""
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert _normalised([d for d in yaml.safe_load_all(result.stdout) if d]) == \
        _normalised(daily if directory == DAILY else fleet)


@pytest.mark.parametrize("which", ["daily", "fleet"])
def test_manifests_validate(which, daily, fleet):
    for doc in daily if which == "daily" else fleet:
        validate_object(doc)


@pytest.mark.parametrize("params", sorted(PARAMETER_SETS))
def test_workflow_containers_validate_once_substituted(params, template, cron):
    validate_object(substituted_template(template, cron, PARAMETER_SETS[params]))


@pytest.mark.parametrize("params", sorted(PARAMETER_SETS))
def test_objects_the_workflow_creates_validate(params, template, cron):
    objects = resource_objects(template, cron, PARAMETER_SETS[params])
    assert {o["kind"] for o in objects.values()} == {"Job", "PyTorchJob"}
    for obj in objects.values():
        validate_object(obj)


def _broken(mutate: Callable[[dict[str, Any]], None], doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    mutate(doc)
    return doc


def _template_named(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (t,) = [t for t in doc["spec"]["templates"] if t["name"] == name]
    return t


def _pytorchjob(template, cron) -> dict[str, Any]:
    return resource_objects(template, cron, {})["train-ranker"]


BROKEN: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "pytorchjob misspelt field": ("pytorchjob", lambda d: d["spec"].update(runpolicy={})),
    "pytorchjob restart policy": ("pytorchjob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].update(
        restartPolicy="OnError")),
    "pytorchjob two masters": ("pytorchjob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2)),
    "pytorchjob container not named pytorch": ("pytorchjob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"]["spec"]["containers"][0].update(name="trainer")),
    "pytorchjob bad pod field": ("pytorchjob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"]["template"][
        "spec"]["containers"][0].update(volumemounts=[])),
    "workflow unknown retry policy": ("workflowtemplate", lambda d: _template_named(d, "export")[
        "retryStrategy"].update(retryPolicy="OnTuesdays")),
    "workflow task with old dependencies": ("workflowtemplate", lambda d: d["spec"]["templates"][0]["dag"]["tasks"][
        0].update(dependencies=["x"])),
    "workflow template two kinds of work": ("workflowtemplate", lambda d: _template_named(d, "export").update(
        resource={"action": "create", "manifest": "x"})),
    "workflow misspelt spec field": ("workflowtemplate", lambda d: d["spec"].update(onexit="record-outcome")),
    "workflow bad container field": ("workflowtemplate", lambda d: _template_named(d, "export")["container"].update(
        args="export")),
    "workflow backoff duration in words": ("workflowtemplate", lambda d: _template_named(d, "export")[
        "retryStrategy"]["backoff"].update(duration="two minutes")),
    "cron old single schedule": ("cronworkflow", lambda d: d["spec"].update(schedule="0 3 * * *")),
    "cron concurrency policy": ("cronworkflow", lambda d: d["spec"].update(concurrencyPolicy="Never")),
    "cron schedule with six fields": ("cronworkflow", lambda d: d["spec"].update(schedules=["0 0 3 * * *"])),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_daily_manifests_are_rejected(case, template, cron):
    which, mutate = BROKEN[case]
    doc = {"pytorchjob": _pytorchjob(template, cron), "workflowtemplate": substituted_template(template, cron, {}),
           "cronworkflow": cron}[which]
    validate_object(doc)  # the original passes...
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_object(_broken(mutate, doc))  # ...the edited one does not


# -- parameters ---------------------------------------------------------------------

def test_every_parameter_is_declared_and_used(template, cron):
    text = argo.WORKFLOW_TEMPLATE.read_text()
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    used = set(re.findall(r"\{\{workflow\.parameters\.([-\w]+)\}\}", text))
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"
    for t in template["spec"]["templates"]:
        inputs = {p["name"] for p in t.get("inputs", {}).get("parameters", [])}
        assert set(re.findall(r"\{\{inputs\.parameters\.([-\w]+)\}\}", json.dumps(t))) == inputs, t["name"]
    for p in cron["spec"]["workflowSpec"]["arguments"]["parameters"]:
        assert p["name"] in declared


def test_the_cron_workflow_runs_the_daily_default(template, cron):
    spec = cron["spec"]
    assert spec["workflowSpec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"]
    assert spec["concurrencyPolicy"] == "Forbid" and len(spec["schedules"]) == 1
    minute, hour, dom, month, dow = spec["schedules"][0].split()
    assert (dom, month, dow) == ("*", "*", "*") and minute.isdigit() and hour.isdigit(), "once a day"
    values = argo.parameters(template, cron)
    # Daily: the served PinnerFormer, an incremental snapshot, a real rollout.
    assert values["retrain-pinnerformer"] == "false" and values["force-canary-failure"] == "false"
    assert values["rollout"] == "true"
    # Runs never overlap: neither two scheduled ones nor a manual one with a scheduled one.
    assert template["spec"]["synchronization"]["mutexes"]


# -- what the containers run -------------------------------------------------------------

FAKE_PINRANK = '#!/bin/sh\nprintf "%s\\0" "$@" > "$FAKE_PINRANK_ARGV"\n'


def _parse(words: list[str]) -> tuple[click.Command, dict[str, Any], list[str]]:
    """A `pinrank ...` argv through click's own parser: unknown options, a
    missing value, or a missing required option fail here. The options come
    back keyed as written (`--out`), arguments by name."""
    assert words[0] == "pinrank", words
    command: click.Command = pinrank_main
    rest = words[1:]
    while isinstance(command, click.Group):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"no command {rest[0]!r} in {words}"
        command, rest = sub, rest[1:]
    ctx = click.Context(command)
    parsed, args, _ = command.make_parser(ctx).parse_args(list(rest))
    for p in command.params:
        if p.required and p.name not in parsed:
            raise AssertionError(f"{' '.join(words[:3])}: missing required {p.opts}")
    spelled = {p.name: next((o for o in p.opts if o.startswith("--")), p.name) for p in command.params}
    return command, {spelled[name]: value for name, value in parsed.items()}, args


def _sandbox(tmp_path: Path, *, previous: bool | None) -> tuple[LocalCluster, Path]:
    """A stand-in `pinrank` and the volume: with `previous` not None, laid
    out as on the day a run reaches its embedding step (with or without the
    snapshot it builds on); with None, empty (a test lays it out)."""
    data = tmp_path / "volumes" / "pinrank-data"
    data.mkdir(parents=True, exist_ok=True)
    if previous is not None:
        run = data / "runs" / WORKFLOW
        for d in ("dataset", f"runs/{WORKFLOW}/models", f"runs/{WORKFLOW}/shards/0", f"runs/{WORKFLOW}/shards/1",
                  "runs/yesterday/snapshot"):
            (data / d).mkdir(parents=True, exist_ok=True)
        if previous:
            (run / "previous").symlink_to("../yesterday/snapshot")
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "pinrank").write_text(FAKE_PINRANK)
    (fake / "pinrank").chmod(0o755)
    cluster = LocalCluster(tmp_path / "volumes", tmp_path / "logs", {("pinrank-admin-key", "admin-key"): TEST_KEY},
                           bin_dir=fake, log=lambda _: None)
    return cluster, data


def run_step(tmp_path: Path, template, cron, step: str, overrides: dict[str, str], *, previous: bool = True,
             index: int = 0) -> list[str]:
    """Run one step's container for real, with the stand-in `pinrank`; the argv it was called with."""
    cluster, data = _sandbox(tmp_path, previous=previous)
    container, volumes = container_steps(template, cron, overrides)[step]
    added = {"JOB_COMPLETION_INDEX": str(index)} if step.startswith("embed/") else {}
    p = cluster.process(WORKFLOW, step.replace("/", "-"), "pod", container, volumes, added)
    argv_file = tmp_path / "argv"
    result = subprocess.run(p.argv, env={**p.env, "FAKE_PINRANK_ARGV": str(argv_file)}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    words = argv_file.read_bytes().split(b"\0")[:-1]
    return ["pinrank", *(w.decode() for w in words)]


DAILY_RUN = {**LOCAL_PARAMETERS, "as-of": "2026-01-17", "fleet": "10.0.0.1:8000,10.0.0.2:8000"}


@pytest.mark.parametrize("previous", [True, False], ids=["incremental", "full"])
def test_embedding_shards_run_pinrank_embed_with_the_completion_index(tmp_path, template, cron, previous):
    argv = run_step(tmp_path, template, cron, "embed/index", DAILY_RUN, previous=previous, index=1)
    command, opts, _ = _parse(argv)
    assert command.name == "embed"
    assert opts["--num-shards"] == DAILY_RUN["shards"] and opts["--shard-index"] == "1"
    assert opts["--out"].endswith(f"/runs/{WORKFLOW}/shards/1") and opts["--as-of"] == "2026-01-17"
    assert opts["--checkpoint"].endswith(f"/runs/{WORKFLOW}/models/pinnerformer.pt")
    # Incremental whenever the run builds on the served model's snapshot (carry-pinnerformer links it).
    assert ("--previous" in opts) == previous
    if previous:
        assert Path(opts["--previous"]).resolve() == (tmp_path / "volumes/pinrank-data/runs/yesterday/snapshot")


def test_embedding_without_as_of_uses_the_datasets_end(tmp_path, template, cron):
    _, opts, _ = _parse(run_step(tmp_path, template, cron, "embed/index", {}, previous=False))
    assert "--as-of" not in opts and opts["--num-shards"] == "64" and opts["--threads"] == "4"


@pytest.mark.parametrize("previous", [True, False], ids=["incremental", "full"])
def test_merge_joins_every_shard_against_the_same_previous(tmp_path, template, cron, previous):
    command, opts, _ = _parse(run_step(tmp_path, template, cron, "merge-shards", DAILY_RUN, previous=previous))
    assert command.name == "embed-merge"
    run = tmp_path / f"volumes/pinrank-data/runs/{WORKFLOW}"
    assert sorted(opts["shards"]) == [str(run / "shards" / "0"), str(run / "shards" / "1")]
    assert opts["--out"] == str(run / "snapshot") and ("--previous" in opts) == previous


@pytest.mark.parametrize("fleet,force", [("list", False), ("dns", False), ("list", True)])
def test_rollout_runs_pinrank_rollout_on_the_exported_repository(tmp_path, template, cron, fleet, force):
    overrides = {**DAILY_RUN, "force-canary-failure": "true" if force else "false"}
    if fleet == "dns":
        overrides.update(fleet="", **{"fleet-dns": "pinrank-triton-admin.pinrank.svc.cluster.local:8000"})
    command, opts, _ = _parse(run_step(tmp_path, template, cron, "rollout", overrides))
    assert command.name == "rollout"
    assert ("--fleet" in opts, "--fleet-dns" in opts) == ((True, False) if fleet == "list" else (False, True))
    assert ("--force-canary-failure" in opts) == force
    assert opts["--repository"] == str(tmp_path / "volumes/pinrank-data/repository/cpu")
    assert opts["--report"].endswith(f"/runs/{WORKFLOW}/rollout.json")


def _argv(template, cron, step: str, overrides: dict[str, str]) -> list[str]:
    container, _ = container_steps(template, cron, overrides)[step]
    return [*container.get("command", []), *container.get("args", [])]


@pytest.mark.parametrize("params", sorted(PARAMETER_SETS))
def test_training_and_export_commands_are_real(params, template, cron):
    overrides = PARAMETER_SETS[params]
    for step in ("train-pinnerformer/master", "train-pinnerformer/worker", "train-ranker/master",
                 "train-ranker/worker"):
        argv = _argv(template, cron, step, overrides)
        assert argv[:3] == ["torchrun", "-m", "pinrank.cli"], argv
        command, opts, _ = _parse(["pinrank", *argv[3:]])
        assert command.name == step.split("/")[0].removeprefix("train-")
        assert opts["--backend"] == argo.parameters(template, cron, overrides)["dist-backend"]
    command, opts, _ = _parse(_argv(template, cron, "export", overrides))
    assert command.name == "export"


def test_the_trainers_resume_from_the_checkpoint_on_the_shared_volume(template, cron):
    """A restarted pod (restartPolicy OnFailure) or a retried step continues:
    the command has --resume, and its --out is on the shared volume, the
    same file for every pod and every attempt of the run."""
    objects = resource_objects(template, cron, {})
    for name in ("train-pinnerformer", "train-ranker"):
        job = objects[name]
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
        assert replicas["Master"]["template"] == replicas["Worker"]["template"], "one pod definition"
        for rtype, rs in replicas.items():
            assert rs["restartPolicy"] == "OnFailure", rtype
            (c,) = rs["template"]["spec"]["containers"]
            assert c["command"] == ["torchrun"], "the operator's PET_* environment configures torchrun"
            _, opts, _ = _parse(["pinrank", *c["args"][2:]])
            assert opts["--resume"] is True
            mount = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                      for v in rs["template"]["spec"]["volumes"]}
            assert opts["--out"] == f"{MOUNT}/runs/{WORKFLOW}/models/{name.removeprefix('train-')}.pt"
            assert claims[mount[MOUNT]] == "pinrank-data"
        assert job["spec"]["runPolicy"]["backoffLimit"] >= 1, "restarts are allowed"
        assert job["metadata"]["generateName"], "a retried step creates a new job that resumes"
    # The trainers and the retry: the step is retried, the pods restart.
    assert templates(template)["pytorchjob"]["retryStrategy"]["limit"] >= 1


def test_gpus_nccl_by_default_gloo_on_cpu(template, cron):
    for params, backend, gpus in (("production", "nccl", "8"), ("local", "gloo", "0")):
        job = resource_objects(template, cron, PARAMETER_SETS[params])["train-ranker"]
        (c,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert job["spec"]["nprocPerNode"] == ("8" if params == "production" else "1")
        assert c["args"][c["args"].index("--backend") + 1] == backend


def test_data_flows_from_step_to_step(tmp_path, template, cron):
    """What a step writes is what the next reads: checkpoint -> ranker and
    embedding, ranker + snapshot -> export, export -> rollout, dataset everywhere."""
    trainers = {n: _parse(["pinrank", *_argv(template, cron, f"train-{n}/master", DAILY_RUN)[3:]])[1]
                for n in ("pinnerformer", "ranker")}
    embed = _parse(run_step(tmp_path / "e", template, cron, "embed/index", DAILY_RUN))[1]
    merge = _parse(run_step(tmp_path / "m", template, cron, "merge-shards", DAILY_RUN))[1]
    export = _parse(_argv(template, cron, "export", DAILY_RUN))[1]
    rollout = _parse(run_step(tmp_path / "r", template, cron, "rollout", DAILY_RUN))[1]
    run = f"{MOUNT}/runs/{WORKFLOW}"

    def in_run(path: str, sandbox: str) -> str:
        return path.replace(str(tmp_path / sandbox / "volumes" / "pinrank-data"), MOUNT)

    assert trainers["ranker"]["--pinnerformer"] == trainers["pinnerformer"]["--out"] == \
        in_run(embed["--checkpoint"], "e")
    assert export["--ranker"] == trainers["ranker"]["--out"] == f"{run}/models/ranker.pt"
    assert export["--snapshot"] == in_run(merge["--out"], "m") == f"{run}/snapshot"
    assert in_run(embed["--out"], "e").startswith(f"{run}/shards/")
    assert in_run(rollout["--repository"], "r") == f"{export['--out']}/{export['--target']}"
    datasets = {trainers["pinnerformer"]["--data"], trainers["ranker"]["--data"], export["--data"],
                in_run(embed["--data"], "e"), in_run(rollout["--data"], "r")}
    assert datasets == {f"{MOUNT}/dataset"}


def test_the_indexed_job_has_one_completion_per_shard(template, cron):
    raw = templates(template)["embed-shards"]["resource"]["manifest"]
    assert "completions: {{workflow.parameters.shards}}" in raw
    assert "parallelism: {{workflow.parameters.shards}}" in raw
    for params, overrides in PARAMETER_SETS.items():
        job = resource_objects(template, cron, overrides)["embed"]
        shards = int(argo.parameters(template, cron, overrides)["shards"])
        assert job["spec"]["completionMode"] == "Indexed", params
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == shards, params
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_no_container_names_the_mount_path_in_a_shell_line(template, cron):
    """Shell lines reach the volume through $DATA/$RUN: a path spelled out
    inside a script would escape the mapping to another mount point."""
    for step, (container, _) in container_steps(template, cron, {}).items():
        if container.get("command", [None])[0] == "sh":
            assert f"{MOUNT}/" not in container["args"][0], step


# -- the glue the shell lines do ------------------------------------------------------------

def _run_script(tmp_path: Path, template, cron, step: str, overrides: dict[str, str],
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cluster, _ = _sandbox(tmp_path, previous=None)
    container, volumes = container_steps(template, cron, overrides)[step]
    p = cluster.process(WORKFLOW, step, "pod", container, volumes)
    return subprocess.run(p.argv, env={**p.env, **(extra_env or {})}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=30, check=False)


def test_carry_pins_the_served_model_and_its_snapshot(tmp_path, template, cron):
    data = tmp_path / "volumes" / "pinrank-data"
    result = _run_script(tmp_path, template, cron, "carry-pinnerformer", {})
    assert result.returncode == 1 and "retrain-pinnerformer=true" in result.stderr, "no bootstrap yet: says what to do"
    served = data / "runs" / "served"
    (served / "models").mkdir(parents=True)
    (served / "snapshot").mkdir()
    (served / "models" / "pinnerformer.pt").write_bytes(b"model")
    (data / "current").symlink_to("runs/served")
    result = _run_script(tmp_path, template, cron, "carry-pinnerformer", {})
    assert result.returncode == 0, result.stderr
    run = data / "runs" / WORKFLOW
    assert (run / "models" / "pinnerformer.pt").read_bytes() == b"model"
    assert (run / "previous").resolve() == (served / "snapshot").resolve()
    assert not (run / "previous").readlink().is_absolute(), "relative: valid wherever the volume is mounted"


def test_promote_moves_current_and_prunes_old_runs(tmp_path, template, cron):
    data = tmp_path / "volumes" / "pinrank-data"
    runs = data / "runs"
    for i in range(5):
        (runs / f"old-{i}").mkdir(parents=True)
        os.utime(runs / f"old-{i}", (1_000_000 + i, 1_000_000 + i))
    (data / "current").symlink_to("runs/old-0")  # the oldest is the one served
    (runs / WORKFLOW / "shards" / "0").mkdir(parents=True)
    result = _run_script(tmp_path, template, cron, "promote", {"keep-runs": "2"})
    assert result.returncode == 0, result.stderr
    assert os.readlink(data / "current") == f"runs/{WORKFLOW}"
    assert not (runs / WORKFLOW / "shards").exists()
    assert sorted(p.name for p in runs.iterdir()) == sorted([WORKFLOW, "old-4"])


def test_promote_never_prunes_the_served_run(tmp_path, template, cron):
    """Even when the served run is the oldest directory (its mtime is what
    `ls -t` sorts by), keep-runs does not remove it."""
    data = tmp_path / "volumes" / "pinrank-data"
    for name in ("newer-1", "newer-2"):
        (data / "runs" / name).mkdir(parents=True)
    (data / "runs" / WORKFLOW).mkdir()
    os.utime(data / "runs" / WORKFLOW, (1_000_000, 1_000_000))
    result = _run_script(tmp_path, template, cron, "promote", {"keep-runs": "1"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (data / "runs").iterdir()) == sorted([WORKFLOW, "newer-2"]) or \
        sorted(p.name for p in (data / "runs").iterdir()) == sorted([WORKFLOW, "newer-1"])
    assert os.readlink(data / "current") == f"runs/{WORKFLOW}"


@pytest.mark.parametrize("status,report", [("Succeeded", True), ("Failed", True), ("Error", False)])
def test_the_exit_handler_records_every_outcome(tmp_path, template, cron, status, report):
    data = tmp_path / "volumes" / "pinrank-data"
    if report:
        (data / "runs" / WORKFLOW).mkdir(parents=True)
        (data / "runs" / WORKFLOW / "rollout.json").write_text(json.dumps({"outcome": "rolled_back",
                                                                            "exit_code": 3}, indent=2))
    v = {**variables(template, cron, {}), "workflow.status": status}
    container = argo.substitute_all(templates(template)["record-outcome"]["container"], v)
    cluster, _ = _sandbox(tmp_path, previous=None)
    p = cluster.process(WORKFLOW, "exit", "pod", container, template["spec"]["volumes"])
    result = subprocess.run(p.argv, env=p.env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    line = json.loads((data / "runs" / WORKFLOW / "outcome.json").read_text())
    assert line["status"] == status and line["workflow"] == WORKFLOW
    assert (line["rollout"] or {}).get("exit_code") == (3 if report else None)
    assert json.loads((data / "outcomes.log").read_text().splitlines()[-1]) == line


# -- retries ------------------------------------------------------------------------

def test_retries_where_safe_and_never_after_a_canary_rollback(template):
    t = templates(template)
    for name in ("pytorchjob", "carry-pinnerformer", "embed-shards", "merge-shards", "export", "promote"):
        strategy = t[name]["retryStrategy"]
        assert int(strategy["limit"]) >= 1 and argo.retry_wanted(strategy, 1, 1), name
        assert argo.backoff_seconds(strategy, 1) > 0, name
    rollout = t["rollout"]["retryStrategy"]
    assert argo.retry_wanted(rollout, 1, 1), "a failed switch (every replica rolled back) may be transient"
    for code in (2, 3, 4):
        assert not argo.retry_wanted(rollout, code, 1), f"exit {code} is final"
    assert "retryStrategy" not in t["record-outcome"]


def test_rollout_exit_codes_are_the_commands(template):
    """The codes the retry expression and the docs name are the ones `pinrank rollout --help` documents."""
    rollout = pinrank_main.get_command(click.Context(pinrank_main), "rollout")
    epilog = rollout.epilog or ""
    for code, meaning in ((1, "failed"), (3, "rolled back"), (4, "rollback did not complete")):
        assert re.search(rf"^\s*{code}\s+.*{meaning}", epilog, re.MULTILINE | re.IGNORECASE), (code, epilog)


# -- the cluster side: identity, volume, fleet ---------------------------------------------

def test_rbac_allows_exactly_what_the_workflow_creates(daily, template, cron):
    role = one(daily, "Role")
    allowed = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    for obj in resource_objects(template, cron, {}).values():
        group = obj["apiVersion"].rpartition("/")[0]
        plural = obj["kind"].lower() + "s"
        assert {"create", "get", "watch"} <= allowed.get((group, plural), set()), obj["kind"]
    assert {"create", "patch"} <= allowed[("argoproj.io", "workflowtaskresults")]
    binding = one(daily, "RoleBinding")
    sa = one(daily, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert template["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_one_shared_volume_everywhere(daily, fleet, template, cron):
    pvc = one(daily, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "pods on many nodes write and read it"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]]
    for obj in resource_objects(template, cron, {}).values():
        for pod in pods_of(obj).values():
            claims += [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                       if "persistentVolumeClaim" in v]
    deployment = one(fleet, "Deployment")
    claims += [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
               if "persistentVolumeClaim" in v]
    assert set(claims) == {pvc["metadata"]["name"]} and len(claims) >= 5


def _triton(fleet) -> dict[str, Any]:
    (c,) = [c for c in one(fleet, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    return c


def test_the_fleet_runs_the_entrypoints_flags_under_explicit_model_control(fleet):
    c = _triton(fleet)
    assert c["command"] == ["/opt/nvidia/nvidia_entrypoint.sh", "tritonserver"]
    ours = triton_flags(["tritonserver", *c["args"]])
    env = {e["name"]: e.get("value") for e in c["env"]}
    printed = run_entrypoint({**{k: v for k, v in env.items() if v is not None}, "PINRANK_ADMIN_KEY": TEST_KEY,
                              "PINRANK_PRINT_COMMAND": "1"})
    assert printed.returncode == 0, printed.stderr
    theirs = triton_flags(printed.stdout.splitlines())
    changed = {"--model-control-mode": "explicit", "--model-repository": "/data/repository/gpu",
               "--http-address": "0.0.0.0"}
    added = {"--load-model": "*", "--grpc-max-connection-age": "60000", "--grpc-max-connection-age-grace": "5000"}
    key = "$(PINRANK_ADMIN_KEY)"
    assert {k: v.replace(key, TEST_KEY) for k, v in ours.items() if k not in changed and k not in added} == \
        {k: v for k, v in theirs.items() if k not in changed}
    assert {k: ours[k] for k in changed} == changed and {k: ours[k] for k in added} == added
    assert set(theirs) - set(ours) == set()
    # The key comes from the Secret the restricted-API flags name, by the variable Kubernetes expands.
    assert key in ours["--http-restricted-api"] and "PINRANK_ADMIN_KEY" in {e["name"] for e in c["env"]}


def test_the_fleet_serves_the_repository_the_export_writes(fleet, template, cron):
    c = _triton(fleet)
    flags = triton_flags(["tritonserver", *c["args"]])
    mount = {m["mountPath"]: m for m in c["volumeMounts"]}[MOUNT]
    assert mount["readOnly"] is True, "only the export and the rollout write the repository"
    export = _parse(_argv(template, cron, "export", {}))[1]
    assert flags["--model-repository"] == f"{export['--out']}/{export['--target']}"
    assert flags["--model-control-mode"] == "explicit" and flags["--load-model"] == "*"


def test_only_the_rollout_reaches_the_admin_port(fleet, template):
    deployment = one(fleet, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    c = _triton(fleet)
    admin_port = {p["name"]: p["containerPort"] for p in c["ports"]}["admin-http"]
    assert admin_port == int(triton_flags(["tritonserver", *c["args"]])["--http-port"])
    service = one(fleet, "Service", "pinrank-triton-admin")
    assert service["spec"]["clusterIP"] == "None", "headless: one DNS record per pod, for --fleet-dns"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["admin-http"]
    fleet_dns = argo.parameters(template)["fleet-dns"]
    assert fleet_dns == f"{service['metadata']['name']}.pinrank.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    policy = one(fleet, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    rules = policy["spec"]["ingress"]
    admin_rules = [r for r in rules if any(p["port"] == "admin-http" for p in r["ports"])]
    (admin_rule,) = admin_rules
    (source,) = admin_rule["from"]
    rollout_labels = templates(template)["rollout"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= rollout_labels.items()
    others = [t for t in template["spec"]["templates"] if t["name"] != "rollout"
              and source["podSelector"]["matchLabels"].items() <= t.get("metadata", {}).get("labels", {}).items()]
    assert others == [], "no other step gets the admin port"
    proxy_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"
                   for p in c["ports"]}
    open_ports = {p["port"] for r in rules if "from" not in r for p in r["ports"]}
    assert open_ports == proxy_ports, "clients reach every pod through the proxy, as without the policy"


def test_the_rollout_uses_the_fleets_admin_key(daily, fleet, template):
    rollout_env = {e["name"]: e for e in templates(template)["rollout"]["container"]["env"]}
    fleet_env = {e["name"]: e for e in _triton(fleet)["env"]}
    ref = rollout_env["PINRANK_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == fleet_env["PINRANK_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) in secrets_of(daily)
