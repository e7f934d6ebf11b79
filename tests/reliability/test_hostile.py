"""Issue 16's hostile requests: the payloads are what the rows describe
(unit), and against `pinrank serve` (real tritonserver, supervised) every
crash is contained while valid SDK traffic keeps being answered."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import zlib
from pathlib import Path

from reliability import hostile
from reliability.bad_inputs.helpers import base_request


def test_row1_is_a_tiny_body_declaring_2_to_the_40_elements():
    body = hostile.huge_shape_json()
    assert len(body) <= 100
    (inp,) = json.loads(body)["inputs"]
    assert inp["shape"] == [2**40] and inp["data"] == [1]


def test_row2_nests_data_as_deep_as_asked():
    body = hostile.deep_json(depth=200)
    data = json.loads(body)["inputs"][0]["data"]
    depth = 0
    while isinstance(data, list):
        data, depth = data[0], depth + 1
    assert depth == 200 and len(hostile.deep_json()) > 2 * hostile.DEEP_NESTING


def test_row3_gzip_inflates_to_the_size_asked_and_is_cached(tmp_path: Path):
    body = hostile.gzip_bomb(inflated=3 * 2**24 + 5, cache_dir=tmp_path)
    assert len(zlib.decompress(body, 31)) == 3 * 2**24 + 5
    assert len(body) < 2**16
    assert hostile.gzip_bomb(inflated=3 * 2**24 + 5, cache_dir=tmp_path) == body
    assert gzip.decompress(hostile.gzip_body(b"abc")) == b"abc"


def test_row4_shape_times_eight_wraps_to_the_bytes_attached():
    body, headers = hostile.wrapped_shape_binary()
    head_len = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:head_len])
    cand = next(i for i in header["inputs"] if i["name"] == "candidate_ids")
    assert (cand["shape"][0] * 8) % 2**64 == cand["parameters"]["binary_data_size"] == len(body) - head_len == 40
    # The other inputs are those of a valid request, so the stub gets as far as sizing candidate_ids.
    assert {i["name"] for i in header["inputs"]} == set(base_request())


def test_row7_carries_a_nul_in_the_input_name():
    names = [i["name"] for i in json.loads(hostile.nul_name_json())["inputs"]]
    assert "user_id\u0000zzz" in names and "user_id" not in names


def _one_shot_server(reply: bytes | None) -> tuple[int, threading.Thread]:
    """A socket that reads one request and answers `reply` (None: closes)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        if reply is not None:
            conn.sendall(reply)
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def test_send_http_reports_status_or_how_the_connection_ended():
    port, t = _one_shot_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 9\r\n\r\n{\"e\":\"x\"}")
    assert hostile.send_http("127.0.0.1", port, b"{}") == 'HTTP 400 {"e":"x"}'
    t.join(5)
    assert hostile.status_of('HTTP 400 {"e":"x"}') == 400
    port, t = _one_shot_server(None)
    assert hostile.send_http("127.0.0.1", port, b"{}") == "closed without a response"
    t.join(5)
    assert hostile.status_of("closed without a response") is None


def test_slow_clients_counts_connections_the_server_ends():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    def accept_and_close_half() -> None:
        for i in range(4):
            conn, _ = srv.accept()
            if i % 2 == 0:
                conn.close()
            else:
                held.append(conn)

    held: list[socket.socket] = []
    t = threading.Thread(target=accept_and_close_half, daemon=True)
    t.start()
    got = hostile.slow_clients("127.0.0.1", port, count=4, hold_s=1.5)
    t.join(5)
    for c in held:
        c.close()
    srv.close()
    assert (got.opened, got.closed_by_server) == (4, 2)
