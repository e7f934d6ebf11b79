"""A client pointed at the other protocol's port, over real sockets (no
Triton): a real gRPC server (grpcio) and a real HTTP/1.1 server (the
standard library's). The SDK must say that the URL is wrong, as an
InvalidArgumentError that is not retried, where tritonclient alone raises
geventhttpclient's HTTPParseError or aiohttp's ClientResponseError.
test_client_real_server.py checks the same against tritonserver itself."""

from __future__ import annotations

import concurrent.futures
import http.server
import threading
from typing import Any, Iterator

import grpc
import pytest
import sdk_call  # tests/client/, on sys.path as the test's own folder

from pinrank_client import InvalidArgumentError, RankRequest

NOW = 1_718_000_000_000


@pytest.fixture(scope="module")
def grpc_port() -> Iterator[int]:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def call(flavour: str, url: str, method: str, retried: list[object]) -> Any:
    args = [RankRequest(1, [1, 2], request_ts_ms=NOW)] if method == "rank_request" else []
    return sdk_call.call(flavour, url, method, *args, timeout_s=5.0, retries=2, backoff_s=0.01,
                         on_retry=retried.append)


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("method", ["rank_request", "model_metadata"])
def test_http_client_at_a_grpc_port(grpc_port, flavour, method):
    url = f"http://127.0.0.1:{grpc_port}"
    retried: list[object] = []
    with pytest.raises(InvalidArgumentError) as info:
        call(flavour, url, method, retried)
    assert str(info.value).startswith(f"{url} does not speak HTTP/1.1: is it a gRPC port?"), info.value
    assert info.value.__cause__ is not None and retried == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_grpc_client_at_an_http_port(http_port, flavour):
    # This server answers gRPC's preface with an HTTP/1.1 error, which gRPC
    # reports as UNAVAILABLE ("Failed parsing HTTP/2"): a wrong URL, not an outage.
    url = f"grpc://127.0.0.1:{http_port}"
    retried: list[object] = []
    with pytest.raises(InvalidArgumentError) as info:
        call(flavour, url, "rank_request", retried)
    assert str(info.value).startswith(f"{url} does not speak gRPC (HTTP/2): is it an HTTP port?"), info.value
    assert retried == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_health_names_the_problem_and_does_not_raise(grpc_port, flavour):
    health = call(flavour, f"http://127.0.0.1:{grpc_port}", "health", [])
    assert not health.live and not health.model_ready
    assert "is it a gRPC port?" in (health.error or "")
