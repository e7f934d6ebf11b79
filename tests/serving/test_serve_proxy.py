"""`pinrank serve --proxy`: nginx with the pod's config in front of the
supervised tritonserver, which stays on loopback; and no exposure beyond
loopback without a decision."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from pinrank.cli import main
from pinrank.serving.proxy_process import nginx_binary
from pinrank.serving.tritonserver import free_ports
from pinrank_client import RankingClient
from reliability import hostile
from reliability.bad_inputs.case import REQ_TS
from reliability.bad_inputs.fixtures import Fixtures
from testkit.serve_process import ServeProcess


def test_a_host_beyond_loopback_needs_a_proxy_decision(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--repository", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--proxy" in result.output and "--no-proxy" in result.output


def test_proxy_ports_must_not_clash(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--repository", str(tmp_path), "--proxy", "--proxy-http-port", "8000"])
    assert result.exit_code == 2 and "must differ" in result.output


def _status(port: int, path: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_serve_with_the_proxy_ranks_through_it_and_refuses_what_crashes_triton(tmp_path):
    repo = Fixtures(tmp_path / "fixtures").repository
    http, grpc, metrics = free_ports(3)
    serve = ServeProcess(repo, tmp_path / "serve", model_control="none", extra_args=(
        "--proxy", "--proxy-http-port", str(http), "--proxy-grpc-port", str(grpc), "--proxy-metrics-port",
        str(metrics)))
    with serve:
        pid = serve.server_pid()
        with RankingClient(f"grpc://127.0.0.1:{grpc}", timeout_s=30) as client:
            assert len(client.rank(1, [7, 14, 21], [], top_k=2, request_ts_ms=REQ_TS).items) == 2
        assert _status(http, "/v2/health/ready") == 200
        assert _status(http, "/v2/models/ranker/infer", b"{}") == 404  # step models stay off HTTP
        assert _status(http, "/v2/repository/index", b"{}") == 403
        # Rows 2 and 3 stop at the proxy: Triton never sees them.
        assert hostile.status_of(hostile.send_http("127.0.0.1", http, hostile.deep_json())) == 413  # 200 KB
        # 40,000 levels (Triton 2.51 dies from 38,000) fit under the body cap: refused as JSON-only.
        assert hostile.status_of(hostile.send_http("127.0.0.1", http, hostile.deep_json(40_000))) == 400
        bomb = hostile.gzip_bomb(inflated=2**26, cache_dir=tmp_path)
        assert hostile.status_of(hostile.send_http("127.0.0.1", http, bomb,
                                                   headers={"Content-Encoding": "gzip"})) == 415
        assert serve.server_pid() == pid and serve.ready()
