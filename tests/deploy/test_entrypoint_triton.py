"""deploy/entrypoint.sh's flags on a real Triton 2.51 (the server the
nvidia-pytriton wheel bundles: the release of the image's nvcr.io 24.10 base).

The fleet image cannot be built here, but its server command can be run: the
entrypoint prints the exact argument list it would exec, and the bundled
binary runs it on an empty repository (no GPU backend needed to check that
the restricted APIs are locked, the probes' endpoints open and the metrics
port up). Bound to 127.0.0.1 through the entrypoint's own setting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import pinrank_client
from pinrank.serving.tritonserver import free_ports, server_env, tritonserver_binary
from pinrank_client import PinrankError, RankingClient, ServerUnavailableError, admin_headers

pytestmark = pytest.mark.triton

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "entrypoint.sh"
KEY = "k3y.with_all~allowed+chars/-0123456789"
HEADER = "pinrank-admin-key"
#: Triton prefixes the restricted-protocol header over gRPC (HTTP/2 metadata).
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"


def _status(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("empty_repository")
    http, grpc, metrics = free_ports(3)
    env = {"PATH": os.environ["PATH"], "PINRANK_PRINT_COMMAND": "1", "PINRANK_ADMIN_KEY": KEY,
           "PINRANK_BIND_ADDRESS": "127.0.0.1", "PINRANK_MODEL_REPOSITORY": str(repo),
           "PINRANK_HTTP_PORT": str(http), "PINRANK_GRPC_PORT": str(grpc), "PINRANK_METRICS_PORT": str(metrics)}
    # The Deployment's extra arguments too, so the server accepts them as given.
    printed = subprocess.run(["bash", str(ENTRYPOINT), "--grpc-max-connection-age=60000",
                              "--grpc-max-connection-age-grace=5000"],
                             env=env, capture_output=True, text=True, timeout=30, check=True)
    argv = printed.stdout.splitlines()
    assert argv[0] == "tritonserver"
    log = (repo.parent / "tritonserver.log").open("w")
    proc = subprocess.Popen([str(tritonserver_binary()), *argv[1:]], env=server_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 90
        while _status_or_none(f"{base}/v2/health/ready") != 200:
            assert proc.poll() is None, f"tritonserver exited {proc.returncode}: {Path(log.name).read_text()[-2000:]}"
            assert time.monotonic() < deadline, "tritonserver did not become ready"
            time.sleep(0.3)
        yield {"proc": proc, "http": base, "grpc": f"127.0.0.1:{grpc}", "metrics": f"http://127.0.0.1:{metrics}"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _status_or_none(url: str) -> int | None:
    try:
        return _status(url)
    except (urllib.error.URLError, OSError):
        return None


def test_probe_endpoints_need_no_header(server):
    assert _status(f"{server['http']}/v2/health/ready") == 200
    assert _status(f"{server['http']}/v2/health/live") == 200
    assert _status(f"{server['metrics']}/metrics") == 200


def test_statistics_stay_open(server):
    assert _status(f"{server['http']}/v2/models/stats") == 200


@pytest.mark.parametrize("method,path", [("POST", "/v2/repository/index"), ("GET", "/v2/logging")])
def test_restricted_http_apis_need_the_key(server, method, path):
    url = server["http"] + path
    assert _status(url, method) == 403
    assert _status(url, method, {HEADER: KEY[:-1]}) == 403
    assert _status(url, method, {HEADER: KEY}) == 200


def test_restricted_grpc_apis_need_the_key(server):
    client = grpcclient.InferenceServerClient(server["grpc"])
    try:
        assert client.is_server_ready()  # health stays open
        for headers in (None, {HEADER: KEY}, {GRPC_HEADER: KEY[:-1]}):
            with pytest.raises(InferenceServerException, match=f"restricted, expecting header '{GRPC_HEADER}'"):
                client.get_model_repository_index(headers=headers)
        assert client.get_model_repository_index(headers={GRPC_HEADER: KEY}) is not None
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sdk_sends_the_admin_header_across_failover(server, protocol):
    """The client side of the fleet: several URLs, one of them down; the admin
    header goes with every attempt, so the failover lands on a server that
    accepts it, over either protocol with one headers dict."""
    (dead,) = free_ports(1)
    live = server["http"] if protocol == "http" else f"grpc://{server['grpc']}"
    urls = [f"{protocol}://127.0.0.1:{dead}", live]
    with RankingClient(urls, retries=2, backoff_s=0.01, headers=admin_headers(KEY)) as client:
        assert client.list_models() == []
        assert [h.live for h in client.health_all()] == [False, True]
    with RankingClient(urls, retries=2, backoff_s=0.01) as client, pytest.raises(PinrankError) as excinfo:
        client.list_models()
    # A refusal is final: not mistaken for a server that is down and retried.
    assert not isinstance(excinfo.value, ServerUnavailableError)
    assert isinstance(excinfo.value, pinrank_client.AccessDeniedError)


def test_sigterm_drains_and_exits(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    # --exit-timeout-secs bounds the drain; with nothing in flight it is immediate.
    assert proc.wait(timeout=35) == 0
