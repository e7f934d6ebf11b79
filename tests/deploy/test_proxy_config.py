"""The proxy's nginx config (pinrank.serving.proxy), checked offline: the
committed ConfigMap is what the module renders from the schema, its limits
admit every legal request and little more, its allow-list covers Triton's
whole gRPC service, and nginx itself accepts it (`nginx -t`, where nginx is
installed). tests/integration/test_proxy.py runs it against the real server.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from tritonclient.grpc import service_pb2

from pinrank.backend import schema
from pinrank.serving import proxy

ROOT = Path(__file__).resolve().parents[2]
CONFIGMAP = ROOT / "deploy" / "k8s" / "triton" / "proxy-config.yaml"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "triton" / "deployment.yaml"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
REGENERATE = "python -m pinrank.serving.proxy --configmap deploy/k8s/triton/proxy-config.yaml"


def committed_config() -> str:
    (doc,) = [d for d in yaml.safe_load_all(CONFIGMAP.read_text()) if d]
    return doc["data"][proxy.CONFIG_KEY]


def pod_spec() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d]
    return doc["spec"]["template"]


def test_committed_config_is_what_the_schema_renders():
    assert committed_config() == proxy.render(), f"stale: regenerate with `{REGENERATE}`"
    assert CONFIGMAP.read_text() == proxy.configmap_yaml(proxy.render()), f"regenerate with `{REGENERATE}`"


def test_a_schema_change_changes_the_config(monkeypatch):
    """The drift check above can fail: more candidates, a larger cap."""
    try:
        monkeypatch.setattr(schema, "MAX_CANDIDATES", 10 * schema.MAX_CANDIDATES)
        bigger = importlib.reload(proxy)
        assert bigger.BODY_CAP > 2 * 8 * schema.MAX_CANDIDATES
        assert bigger.render() != committed_config()
    finally:
        monkeypatch.undo()
        importlib.reload(proxy)
    assert proxy.render() == committed_config()


def test_pod_runs_this_config():
    template = pod_spec()
    assert template["metadata"]["annotations"][proxy.CONFIG_ANNOTATION] == proxy.config_sha256(committed_config()), \
        "the annotation rolls the pods when the config changes: regenerate it too"
    (sidecar,) = [c for c in template["spec"]["containers"] if c["name"] == "proxy"]
    conf = f"{proxy.CONFIG_MOUNT}/{proxy.CONFIG_KEY}"
    assert sidecar["command"][0] == "nginx" and sidecar["command"][-2:] == ["-c", conf]
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes[mounts[proxy.CONFIG_MOUNT]]["configMap"]["name"] == proxy.CONFIGMAP_NAME
    # nginx writes its pid and temp files only there (the root filesystem is read-only).
    assert "emptyDir" in volumes[mounts[proxy.ProxySettings.runtime_dir]]
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert "memory" in sidecar["resources"]["limits"]


def test_sidecar_is_the_nginx_release_tested_here():
    (sidecar,) = [c for c in pod_spec()["spec"]["containers"] if c["name"] == "proxy"]
    name, _, tag = sidecar["image"].rpartition(":")
    assert name == "nginx" and re.fullmatch(r"\d+\.\d+\.\d+", tag), "a pinned official nginx image"
    if NGINX is None:
        pytest.skip("nginx is not installed here to compare with")
    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=True).stderr
    local = re.search(r"nginx/(\d+\.\d+)", version)
    assert local and tag.startswith(local.group(1) + "."), "test the release the pod runs"


# -- the limits ---------------------------------------------------------------

def _largest_request() -> dict[str, np.ndarray]:
    big = np.iinfo(np.int64).max
    lengths = {"candidate_ids": schema.MAX_CANDIDATES}
    return {s.name: np.full(lengths.get(s.name, 1 if s.shape != (-1,) else schema.MAX_REQUEST_ACTIONS), big,
                            np.int64) for s in schema.REQUEST_INPUTS}


def test_body_cap_admits_the_largest_legal_request_over_http_and_grpc():
    """Measured on what tritonclient (the SDK's transport) actually sends."""
    arrays = _largest_request()
    inputs = []
    for name, arr in arrays.items():
        tensor = httpclient.InferInput(name, list(arr.shape), "INT64")
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(s.name) for s in schema.RESPONSE_OUTPUTS]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs, request_id="x" * 64)
    assert json_size is not None, "binary tensors, as the proxy requires"
    assert json_size <= proxy.largest_json_header() <= proxy.JSON_HEADER_CAP
    assert len(body) <= proxy.largest_binary_body() <= proxy.BODY_CAP

    request = service_pb2.ModelInferRequest(model_name=schema.ENSEMBLE_MODEL, id="x" * 64)
    for name, arr in arrays.items():
        # The data in raw_input_contents, as tritonclient sends it.
        request.inputs.add(name=name, datatype="INT64", shape=list(arr.shape))
        request.raw_input_contents.append(arr.tobytes())
    for s in schema.RESPONSE_OUTPUTS:
        request.outputs.add(name=s.name)
    grpc_message = request.ByteSize() + 5  # gRPC's length prefix
    assert grpc_message <= proxy.largest_binary_body() <= proxy.BODY_CAP


def test_caps_leave_headroom_not_an_order_of_magnitude():
    assert 2 * proxy.largest_binary_body() <= proxy.BODY_CAP < 4 * proxy.largest_binary_body()
    assert 2 * proxy.largest_json_header() <= proxy.JSON_HEADER_CAP < 4 * proxy.largest_json_header()
    # Plain JSON is not what the cap is sized for: the largest legal one would not fit a JSON part.
    assert proxy.largest_json_body() > proxy.JSON_HEADER_CAP


@pytest.mark.parametrize("n", [1, 7, 9, 10, 99, 100, 2720, 4096, proxy.JSON_HEADER_CAP])
def test_header_length_regex_matches_exactly_one_to_n(n):
    pattern = re.compile(proxy._integers_up_to(n))
    assert [i for i in range(3 * n + 20) if pattern.match(str(i))] == list(range(1, n + 1))
    for bad in ("", "0", "-1", f"0{n}", f"{n} ", "1e3", "+1"):
        assert not pattern.match(bad), bad


# -- the allow-list -------------------------------------------------------------

def test_every_grpc_method_is_either_allowed_or_refused():
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == proxy.GRPC_SERVICE
    methods = {m.name for m in service.methods}
    allowed, refused = set(proxy.GRPC_ALLOWED), set(proxy.GRPC_REFUSED)
    assert not allowed & refused
    assert allowed | refused == methods, f"new Triton methods to classify: {methods - allowed - refused}"
    assert not {m for m in allowed if "Repository" in m or "SharedMemory" in m or "Config" in m}


@pytest.mark.parametrize("path,allowed", [
    (f"/v2/models/{schema.ENSEMBLE_MODEL}/infer", True),
    (f"/v2/models/{schema.ENSEMBLE_MODEL}/versions/12/infer", True),
    (f"/v2/models/{schema.RANKER_MODEL}/infer", False),
    (f"/v2/models/{schema.ENSEMBLE_MODEL}x/infer", False),
    (f"/v2/models/{schema.ENSEMBLE_MODEL}/infer/x", False),
    (f"/v2/models/{schema.ENSEMBLE_MODEL}/versions/1x/infer", False),
])
def test_infer_route_names_only_the_ensemble(path, allowed):
    assert bool(re.match(proxy.HTTP_INFER, path)) is allowed


def test_config_quotes_what_nginx_would_misread():
    assert proxy.dump([("return", "400", "a; b { c }")]) == "return 400 'a; b { c }';\n"
    assert proxy.dump([("add_header", "x", "it's")]) == "add_header x 'it\\'s';\n"
    with pytest.raises(ValueError, match="expand variables"):
        proxy._json_error(400, "costs $5")


# -- nginx itself ---------------------------------------------------------------

def _nginx_test(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_accepts_the_config(tmp_path):
    conf = tmp_path / "nginx.conf"
    # The pod's config, with the runtime directory moved here.
    conf.write_text(proxy.render(proxy.ProxySettings(runtime_dir=str(tmp_path))))
    assert conf.read_text().replace(str(tmp_path), proxy.ProxySettings.runtime_dir) == committed_config()
    result = _nginx_test(conf)
    assert result.returncode == 0, result.stderr
    # ...and the check can fail.
    conf.write_text(conf.read_text().replace("client_max_body_size", "client_max_body_sise", 1))
    result = _nginx_test(conf)
    assert result.returncode != 0 and "client_max_body_sise" in result.stderr
