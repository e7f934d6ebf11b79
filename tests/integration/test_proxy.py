"""The nginx proxy (pinrank.serving.proxy) in front of the real tritonserver.

The config under test is the one the pod runs, rendered with local ports: the
real Debian nginx 1.22 (the release the sidecar image pins) forwards to the
bundled Triton 2.51 on loopback. What passes (the SDK over HTTP and gRPC,
health, metadata) and what is refused before Triton sees it (step models,
admin APIs even with the key, oversized and compressed bodies, JSON-only
bodies, slow clients) are checked on the wire. Skipped where nginx is not
installed (.ci/run installs it with apt-get).

Not sent here: the 95-byte shape-[2**40] JSON (issue 16, row 1). Its JSON
part is legal-sized, so the proxy passes it and it crashes Triton; the
supervisor in `pinrank serve` contains it (docs/security.md).
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.cli import main
from pinrank.serving import proxy
from pinrank.serving.proxy_process import NginxProxy, nginx_binary
from pinrank.serving.tritonserver import free_ports, running_server
from pinrank_client import RankingClient, admin_headers
from testkit.export_inputs import (
    make_export_inputs,
)

pytestmark = pytest.mark.triton

if nginx_binary() is None:
    pytest.skip("nginx is not installed (apt-get install nginx-light)", allow_module_level=True)

ITEMS = np.arange(1, 301, dtype=np.int64) * 7  # make_export_inputs' item ids
INFER = f"/v2/models/{schema.ENSEMBLE_MODEL}/infer"
#: Nesting depth that killed Triton 2.51's HTTP endpoint when measured (8 MiB
#: stack): 38,000 levels. The proxy's JSON part holds less than a 15th of it.
KILLING_DEPTH = 38_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy")
    inputs = make_export_inputs(root / "inputs", num_items=ITEMS.size, num_users=60)
    result = CliRunner().invoke(main, ["export", *inputs.cli_args(), "--out", str(root / "repo"), "--target", "cpu",
                                       "--results", str(root / "export.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with running_server(root / "repo" / "cpu", log_path=root / "tritonserver.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def front(server, tmp_path_factory):
    """nginx with the pod's config, on free loopback ports, in front of `server`."""
    run = tmp_path_factory.mktemp("nginx")
    http, grpc, metrics = free_ports(3)
    settings = proxy.ProxySettings(
        listen_host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics,
        triton_http_port=server.ports.http, triton_grpc_port=server.ports.grpc,
        triton_metrics_port=server.ports.metrics, runtime_dir=str(run), access_log="off", worker_processes=1)
    with NginxProxy(settings) as nginx:
        assert _status_or_none(http, "/v2/health/ready") == 200, nginx.log_tail()
        yield settings


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _status_or_none(port: int, path: str) -> int | None:
    try:
        return _request(port, "GET", path)[0]
    except OSError:
        return None


def _error(body: bytes) -> str:
    return json.loads(body)["error"]


def _rank(url: str):
    with RankingClient(url, timeout_s=10, retries=0) as client:
        return client.rank(1, ITEMS[:20].tolist(), top_k=5)


def _inferences(server) -> int:
    """Requests the ensemble executed, successful or not, from Triton's own
    statistics on loopback (statistics are not served through the proxy)."""
    status, body = _request(server.ports.http, "GET", f"/v2/models/{schema.ENSEMBLE_MODEL}/stats")
    assert status == 200, body
    stats = json.loads(body)["model_stats"][0]["inference_stats"]
    return stats["success"]["count"] + stats["fail"]["count"]


def _ready(server) -> bool:
    return _status_or_none(server.ports.http, "/v2/health/ready") == 200


# -- what passes ---------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sdk_ranks_through_the_proxy_as_directly(server, front, protocol):
    port = front.http_port if protocol == "http" else front.grpc_port
    direct = server.http_url if protocol == "http" else server.grpc_url
    through, reference = _rank(f"{protocol}://127.0.0.1:{port}"), _rank(f"{protocol}://{direct}")
    assert [i.item_id for i in through.items] == [i.item_id for i in reference.items]
    assert len(through.items) == 5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_and_contract_through_the_proxy(front, protocol):
    port = front.http_port if protocol == "http" else front.grpc_port
    with RankingClient(f"{protocol}://127.0.0.1:{port}", timeout_s=10, retries=0) as client:
        health = client.health()
        assert health.live and health.model_ready, health
        assert client.check_contract() == []


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{schema.ENSEMBLE_MODEL}",
                                  f"/v2/models/{schema.ENSEMBLE_MODEL}/ready"])
def test_health_and_metadata_routes_pass(front, path):
    assert _request(front.http_port, "GET", path)[0] == 200


def test_metrics_port_serves_only_metrics(front):
    status, body = _request(front.metrics_port, "GET", "/metrics")
    assert status == 200 and b"nv_inference_request_success" in body
    assert _request(front.metrics_port, "GET", "/v2/health/ready")[0] == 404
    assert _request(front.metrics_port, "POST", "/metrics", b"x")[0] == 405


# -- what is refused -----------------------------------------------------------

@pytest.mark.parametrize("method,path,status", [
    ("POST", f"/v2/models/{schema.RANKER_MODEL}/infer", 404),
    ("POST", f"/v2/models/{schema.PREPROCESS_MODEL}/versions/1/infer", 404),
    ("GET", f"/v2/models/{schema.POSTPROCESS_MODEL}", 404),
    ("POST", f"/v2/models/{schema.ENSEMBLE_MODEL}/infer/../../{schema.RANKER_MODEL}/infer", 404),
    ("POST", "/v2/repository/index", 403),
    ("POST", f"/v2/repository/models/{schema.RANKER_MODEL}/load", 403),
    ("GET", f"/v2/models/{schema.ENSEMBLE_MODEL}/config", 403),
    ("GET", f"/v2/models/{schema.ENSEMBLE_MODEL}/stats", 403),
    ("GET", "/v2/models/stats", 403),
    ("GET", "/v2/systemsharedmemory/status", 403),
    ("GET", "/v2/logging", 403),
    ("GET", "/v2/trace/setting", 403),
    ("GET", INFER, 405),
    ("POST", "/v2/health/ready", 405),
    ("GET", "/", 404),
])
def test_everything_else_is_refused_even_with_the_key(server, front, method, path, status):
    before = _inferences(server)
    got, body = _request(front.http_port, method, path, b"{}" if method == "POST" else None,
                         admin_headers(server.admin_key))
    assert got == status, body
    assert "proxy" in _error(body) or "method" in _error(body)
    assert _inferences(server) == before


def test_grpc_admin_methods_are_refused_even_with_the_key(server, front):
    with grpc.insecure_channel(f"127.0.0.1:{front.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = list(admin_headers(server.admin_key).items())
        for call, request in [(stub.RepositoryIndex, service_pb2.RepositoryIndexRequest()),
                              (stub.ModelConfig, service_pb2.ModelConfigRequest(name=schema.ENSEMBLE_MODEL)),
                              (stub.ModelStatistics, service_pb2.ModelStatisticsRequest()),
                              (stub.LogSettings, service_pb2.LogSettingsRequest())]:
            with pytest.raises(grpc.RpcError) as caught:
                call(request, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value
            assert "proxy" in caught.value.details()
        unknown = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_step_models_are_not_filtered_by_the_proxy(front):
    """The documented gap: gRPC names the model inside the message, which
    nginx does not parse. The call reaches Triton; the step model's own input
    checks are what answer it."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{front.grpc_port}")
    try:
        assert client.get_model_metadata(schema.RANKER_MODEL).name == schema.RANKER_MODEL
    finally:
        client.close()


def test_oversized_body_is_refused_before_triton(server, front):
    before = _inferences(server)
    # Content-Length alone decides: nothing of the body is sent or read.
    conn = http.client.HTTPConnection("127.0.0.1", front.http_port, timeout=10)
    try:
        conn.putrequest("POST", INFER)
        conn.putheader("Content-Length", str(proxy.BODY_CAP + 1))
        conn.putheader("Inference-Header-Content-Length", "100")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert str(proxy.BODY_CAP) in _error(response.read())
    finally:
        conn.close()
    # Chunked: no length up front, cut when the count passes the cap.
    chunks = (b"x" * 65536 for _ in range(proxy.BODY_CAP // 65536 + 1))
    status, answer = _request(front.http_port, "POST", INFER, chunks, {"Inference-Header-Content-Length": "100"})
    assert status == 413, answer
    assert _inferences(server) == before and _ready(server)


def test_oversized_grpc_message_is_refused(server, front):
    before = _inferences(server)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{front.grpc_port}")
    try:
        candidates = grpcclient.InferInput("candidate_ids", [proxy.BODY_CAP // 8 + 1], "INT64")
        candidates.set_data_from_numpy(np.ones(proxy.BODY_CAP // 8 + 1, np.int64))
        with pytest.raises(InferenceServerException, match="larger than"):
            client.infer(schema.ENSEMBLE_MODEL, [candidates], client_timeout=10)
    finally:
        client.close()
    assert _inferences(server) == before


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP", "identity, gzip"])
def test_compressed_body_is_refused(server, front, encoding):
    before = _inferences(server)
    body = gzip.compress(b"\0" * 1_000_000)  # 1 MB of zeros in about 1 KB
    status, answer = _request(front.http_port, "POST", INFER, body,
                              {"Content-Encoding": encoding, "Inference-Header-Content-Length": "100"})
    assert status == 415 and "Content-Encoding" in _error(answer)
    assert _inferences(server) == before


def test_compressed_grpc_message_is_refused(front):
    with grpc.insecure_channel(f"127.0.0.1:{front.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name=schema.ENSEMBLE_MODEL),
                            compression=grpc.Compression.Gzip, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "compressed" in caught.value.details()
        # The same call uncompressed reaches Triton (which rejects the empty request itself).
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name=schema.ENSEMBLE_MODEL), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- JSON nesting: bounded by the JSON part, not by the body cap -----------------

def _deep(depth: int) -> bytes:
    head = '{"inputs":[{"name":"candidate_ids","shape":[1],"datatype":"INT64","data":'
    return (head + "[" * depth + "1" + "]" * depth + "}]}").encode()


def test_json_only_bodies_are_refused(server, front):
    """A body of nested JSON that kills Triton fits under the body cap, so
    plain-JSON inference is not admitted: without the binary-tensor header
    (or with a JSON part over the cap) the proxy answers 400."""
    body = _deep(KILLING_DEPTH)
    assert len(body) < proxy.BODY_CAP  # the cap alone would not stop it
    for headers in ({}, {"Inference-Header-Content-Length": str(len(body))},
                    {"Inference-Header-Content-Length": "0"}, {"Inference-Header-Content-Length": "-1"}):
        status, answer = _request(front.http_port, "POST", INFER, body, {"Content-Type": "application/json", **headers})
        assert status == 400 and "Inference-Header-Content-Length" in _error(answer), headers
    assert _ready(server)


def test_deepest_json_part_the_proxy_admits_leaves_triton_up(server, front):
    """The most nesting a client can get through: the whole JSON part at
    its cap. Triton parses it, answers, and stays ready."""
    depth = (proxy.JSON_HEADER_CAP - len(_deep(0))) // 2
    body = _deep(depth)
    assert len(body) <= proxy.JSON_HEADER_CAP and depth * 15 < KILLING_DEPTH
    # The JSON part is the first N bytes; a killing depth after it is binary data to Triton.
    tail = _deep(KILLING_DEPTH)
    status, answer = _request(front.http_port, "POST", INFER, body + tail,
                              {"Inference-Header-Content-Length": str(len(body))})
    assert status in (400, 500), answer  # Triton's own error, from a live server
    assert "error" in json.loads(answer)
    assert _ready(server)
    assert _rank(f"http://127.0.0.1:{front.http_port}").items


def test_small_json_request_with_its_length_passes(front):
    """Plain JSON still works for small requests (curl), given its length."""
    inputs = [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]},
              {"name": "candidate_ids", "shape": [3], "datatype": "INT64", "data": ITEMS[:3].tolist()},
              {"name": "request_ts_ms", "shape": [1], "datatype": "INT64", "data": [1_767_225_000_000]}]
    for name in ("action_item_ids", "action_types", "action_surfaces", "action_ts_ms"):
        inputs.append({"name": name, "shape": [0], "datatype": "INT64", "data": []})
    body = json.dumps({"inputs": inputs}).encode()
    status, answer = _request(front.http_port, "POST", INFER, body,
                              {"Content-Type": "application/json", "Inference-Header-Content-Length": str(len(body))})
    assert status == 200, answer
    outputs = {o["name"]: o for o in json.loads(answer)["outputs"]}
    assert sorted(outputs["item_ids"]["data"]) == sorted(ITEMS[:3].tolist())


# -- slow clients ----------------------------------------------------------------

def _closed_after(port: int, partial: bytes, limit_s: float) -> float:
    """Seconds until the proxy drops a client that stops after `partial`."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        sock.sendall(partial)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    return time.monotonic() - start


@pytest.mark.parametrize("partial,timeout_s", [
    (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n", proxy.HEADER_TIMEOUT_S),
    (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 10\r\n"
     b"Content-Length: 1000\r\n\r\n{\"inp", proxy.BODY_TIMEOUT_S),
])
def test_slow_clients_are_cut_off(server, front, partial, timeout_s):
    before = _inferences(server)
    held = _closed_after(front.http_port, partial, limit_s=timeout_s + 10)
    assert timeout_s - 0.5 <= held < timeout_s + 3, held
    assert _inferences(server) == before


def test_many_slow_clients_do_not_block_valid_ones(front):
    """200 connections stalled mid-headers: a valid call still goes through,
    and all of them are closed within the header timeout."""
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", front.http_port), timeout=5)
            s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        assert _rank(f"http://127.0.0.1:{front.http_port}").items
        time.sleep(proxy.HEADER_TIMEOUT_S + 1.5)
        for s in socks:
            s.settimeout(2)
            try:
                assert s.recv(4096) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()
