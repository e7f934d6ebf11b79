"""What the case surfaces share: a valid request, the ranking contract check,
raw gRPC/HTTP senders, CLI and error outcome builders."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_HOUR
from pinrank.serving.tritonserver import free_ports
from reliability.bad_inputs.case import REQ_TS, Context, Outcome
from reliability.bad_inputs.cli_runners import run_client_cli, run_pinrank

TIMEOUT_S = 30.0  # generous: a 2-core CI box may be busy; cases never wait on it
_MESSAGE_CHARS = 400


def base_request(**over: Any) -> dict[str, np.ndarray]:
    """A valid request (unknown ids are fine: they are served too); `over`
    replaces or, with None, drops fields."""
    req: dict[str, Any] = {
        "user_id": [1],
        "candidate_ids": [7, 14, 21, 28, 35],
        "action_item_ids": [7, 14],
        "action_types": [schema.ACTION_IDS["save"], schema.ACTION_IDS["click"]],
        "action_surfaces": [schema.SURFACE_IDS["home"], 0],
        "action_ts_ms": [REQ_TS - 3 * MS_PER_HOUR, REQ_TS - 60_000],
        "request_ts_ms": [REQ_TS],
        "top_k": [3],
    }
    for key, value in over.items():
        if value is None:
            req.pop(key, None)
        else:
            req[key] = value
    return {k: np.asarray(v, dtype=np.int64) if not isinstance(v, np.ndarray) else v for k, v in req.items()}


def _ranking_problem(out: Mapping[str, np.ndarray | None], candidates: Sequence[int], k: int) -> str | None:
    """Why a response breaks the contract for this request, or None."""
    ids, scores, probs = out.get("item_ids"), out.get("scores"), out.get("head_probs")
    if ids is None or scores is None or probs is None:
        return f"missing outputs in {sorted(out)}"
    problems = []
    if ids.shape != (k,):
        problems.append(f"expected {k} items, got shape {ids.shape}")
    if len(set(ids.tolist())) != ids.size:
        problems.append(f"an item is ranked twice: {ids.tolist()}")
    if not set(ids.tolist()) <= {int(c) for c in candidates}:
        problems.append("an item that was not a candidate")
    if not np.isfinite(scores).all() or (np.diff(scores) > 0).any():
        problems.append(f"scores not finite and descending: {scores.tolist()}")
    if probs.shape != (ids.shape[0], schema.NUM_HEADS) or not ((probs >= 0) & (probs <= 1)).all():
        problems.append(f"head_probs not [{k}, {schema.NUM_HEADS}] probabilities")
    return "; ".join(problems) or None


def served_outcome(out: Mapping[str, np.ndarray | None], candidates: Sequence[int], k: int) -> Outcome:
    return Outcome(served=True, problem=_ranking_problem(out, candidates, k))


def short_message(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


_TRITON_DTYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float64": "FP64", "object": "BYTES",
                  "uint64": "UINT64", "bool": "BOOL"}


def _infer_raw(ctx: Context, protocol: str, arrays: Mapping[str, np.ndarray],
               model: str = schema.ENSEMBLE_MODEL) -> dict[str, np.ndarray] | str:
    """tritonclient straight to the server (no SDK checks): outputs, or the error message."""
    if protocol == "grpc":
        io: Any = grpcclient
        client: Any = io.InferenceServerClient(ctx.grpc_url)
    else:
        io = httpclient
        client = io.InferenceServerClient(ctx.http_url, network_timeout=TIMEOUT_S)
    inputs = []
    for name, arr in arrays.items():
        tensor = io.InferInput(name, list(arr.shape), _TRITON_DTYPES[arr.dtype.name])
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    try:
        kwargs = {"client_timeout": TIMEOUT_S} if protocol == "grpc" else {}
        result = client.infer(model, inputs, **kwargs)
    except InferenceServerException as exc:
        return f"[{exc.status()}] {exc.message()}"
    finally:
        client.close()
    return {s.name: result.as_numpy(s.name) for s in schema.RESPONSE_OUTPUTS}


def raw_case(protocol: str, arrays: Callable[[], Mapping[str, np.ndarray]], *, served_k: int | None = None,
             model: str = schema.ENSEMBLE_MODEL) -> Callable[[Context], Outcome]:
    def perform(ctx: Context) -> Outcome:
        req = arrays()
        got = _infer_raw(ctx, protocol, req, model)
        if isinstance(got, str):
            return Outcome(error=got)
        if served_k is None:
            return Outcome(served=True, problem="served a request that should have been rejected")
        return served_outcome(got, req["candidate_ids"].tolist(), served_k)

    return perform


def http_post(ctx: Context, body: bytes, *, path: str = f"/v2/models/{schema.ENSEMBLE_MODEL}/infer",
              headers: Mapping[str, str] | None = None) -> Outcome:
    req = urllib.request.Request(f"http://{ctx.http_url}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return Outcome(served=True, problem=f"HTTP {resp.status}: accepted ({resp.read(200)!r})")
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode(errors="replace")
        try:
            message = json.loads(raw).get("error", raw)
        except (json.JSONDecodeError, AttributeError):
            message = raw
        return Outcome(error=f"HTTP {exc.code}: {message}")


def json_inputs(req: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.reshape(-1).tolist()}
            for k, v in req.items()]


def grpc_raw_bytes(ctx: Context, mutate: Callable[[Any], None]) -> Outcome:
    """A ModelInferRequest built by hand (raw_input_contents), then `mutate`d."""
    request = service_pb2.ModelInferRequest(model_name=schema.ENSEMBLE_MODEL)
    for name, arr in base_request().items():
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, "INT64"
        tensor.shape.extend(arr.shape)
        request.raw_input_contents.append(arr.astype("<i8").tobytes())
    mutate(request)
    with grpc.insecure_channel(ctx.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return Outcome(error=f"[{exc.code().name}] {exc.details()}")
    return Outcome(served=True, problem="accepted a malformed request")


def cli_outcome(code: int, text: str, want_code: int | None = None) -> Outcome:
    if code == 0:
        return Outcome(served=True, problem=f"exit 0: {short_message(text)}")
    wrong = f" (expected exit {want_code})" if want_code is not None and code != want_code else ""
    return Outcome(error=f"exit {code}{wrong}: {text}")


def pinrank_case(args: Callable[[Context], Sequence[object]], env: Mapping[str, str] | None = None
                 ) -> Callable[[Context], Outcome]:
    return lambda ctx: cli_outcome(*run_pinrank(args(ctx), env))


def client_case(args: Callable[[Context], Sequence[object]], want_code: int,
                env: Mapping[str, str] | None = None) -> Callable[[Context], Outcome]:
    return lambda ctx: cli_outcome(*run_client_cli(args(ctx), env), want_code=want_code)


def raises(fn: Callable[[Context], object], *errors: type[BaseException]) -> Callable[[Context], Outcome]:
    """Outcome of `fn`: the message of an anticipated error class, or 'no error raised'.
    Any other exception propagates and counts as unclear (with its traceback)."""

    def perform(ctx: Context) -> Outcome:
        try:
            fn(ctx)
        except errors as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}")
        return Outcome(served=True, problem="no error raised")

    return perform


def closed_port() -> int:
    return free_ports(1)[0]
