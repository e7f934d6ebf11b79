"""The bad-input matrix: every way a caller, an operator or a file can hand
pinrank something wrong, and the clear answer each one must get.

A case is data: an id, the surface it enters through (SURFACES), what is
wrong, a callable that performs it, and the substrings a *clear* error must
contain (the offending field or file and the problem). Two kinds of "wrong"
are legitimate traffic, and their right answer is a correct ranking, not an
error (`served=True`):

- unknown user and item ids: cold-start users and new items are normal; they
  get the cold-start embedding and the out-of-vocabulary row;
- duplicated candidates: merged candidate sources repeat items; each item is
  ranked once (first occurrence kept), so no feed shows an item twice and a
  single repeat does not fail the whole request.

Raw gRPC/HTTP cases call Triton with tritonclient, urllib or the gRPC stub,
bypassing the SDK's own validation, so the *server* is what answers them.
After every case the server must still answer `/v2/health/ready`.

`run_matrix(http_url, grpc_url, workdir)` runs them all; `run_with_server`
also exports an untrained repository and serves it, for `make reliability`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import grpc
import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from click.testing import CliRunner
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.backend.snapshot import SnapshotError, UserSnapshot
from pinrank.backend.units import MS_PER_HOUR
from pinrank.backend.vocab import ItemVocab
from pinrank.cli import main as pinrank_main
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.data.importers import import_source
from pinrank.data.synthetic import SyntheticConfig, generate
from pinrank.models.checkpoints import load_checkpoint, save_checkpoint
from pinrank.models.ranker import load_ranker
from pinrank.serving.tritonserver import ServerError, free_ports, running_server, validate_repository
from pinrank_client import Action, PinrankError, RankingClient
from pinrank_client import cli as client_cli
from testkit.export_inputs import write_random_snapshot, write_untrained_ranker

SURFACES: tuple[str, ...] = (
    "sdk", "client_cli", "pinrank_cli", "grpc_raw", "http_raw", "importer", "config", "checkpoint",
)
#: Request time of every case (2026-01-01 UTC); actions lie before it.
REQ_TS = 1_767_225_600_000
_TIMEOUT_S = 30.0  # generous: a 2-core CI box may be busy; cases never wait on it
_MESSAGE_CHARS = 400


@dataclass(frozen=True)
class Outcome:
    """What a case produced: the error text a user would see, or a response."""

    error: str | None = None
    served: bool = False
    problem: str | None = None  # for served cases: how the response broke the contract


@dataclass
class Context:
    """Where cases run: a live server's URLs (host:port) and a scratch dir."""

    http_url: str
    grpc_url: str
    workdir: Path

    @cached_property
    def fixtures(self) -> "Fixtures":
        return Fixtures(self.workdir / "fixtures")

    def scratch(self, name: str) -> Path:
        path = self.workdir / "cases" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


@dataclass(frozen=True)
class Case:
    id: str
    surface: str
    problem: str
    perform: Callable[[Context], Outcome]
    expect: tuple[str, ...] = ()
    served: bool = False
    forbid: tuple[str, ...] = ("Traceback",)

    def judge(self, outcome: Outcome) -> bool:
        """Clear = the expected answer: a correct ranking for served cases,
        else an error holding every `expect` substring (any case) and no
        `forbid` one."""
        if self.served:
            return outcome.served and outcome.problem is None and outcome.error is None
        if not outcome.error:
            return False
        text = outcome.error.lower()
        return all(s.lower() in text for s in self.expect) and not any(s.lower() in text for s in self.forbid)


# --- fixtures: a tiny dataset, snapshot, untrained ranker and its export ------------------


class Fixtures:
    """Valid inputs the file cases corrupt, built once per workdir (seconds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @cached_property
    def dataset(self) -> Path:
        path = self.root / "data"
        if not (path / "meta.json").exists():
            cfg = SyntheticConfig(users=40, items=150, topics=4, days=6, eval_days=2, seed=0)
            generate(cfg, path, progress=False)
        return path

    @cached_property
    def snapshot(self) -> Path:
        path = self.root / "snapshot"
        if not (path / "meta.json").exists():
            ds = load_dataset(self.dataset)
            write_random_snapshot(path, np.unique(ds.actions["user_id"]), as_of_ms=ds.train_end_ms)
        return path

    @cached_property
    def ranker(self) -> Path:
        path = self.root / "ranker.pt"
        if not path.exists():
            write_untrained_ranker(path, load_dataset(self.dataset))
        return path

    @cached_property
    def repository(self) -> Path:
        """An exported cpu repository (untrained ranker): what `pinrank serve` takes."""
        out = self.root / "repo"
        if not (out / "cpu" / schema.ENSEMBLE_MODEL / "config.pbtxt").exists():
            code, text = _pinrank(["export", "--ranker", self.ranker, "--snapshot", self.snapshot,
                                   "--data", self.dataset, "--out", out, "--target", "cpu",
                                   "--results", self.root / "export.json"])
            if code != 0:
                raise RuntimeError(f"could not export the fixture repository:\n{text}")
        return out / "cpu"

    def repository_copy(self, dest: Path) -> Path:
        shutil.copytree(self.repository, dest, symlinks=True)
        return dest


# --- helpers ----------------------------------------------------------------------------


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


def _served(out: Mapping[str, np.ndarray | None], candidates: Sequence[int], k: int) -> Outcome:
    return Outcome(served=True, problem=_ranking_problem(out, candidates, k))


def _short(text: str) -> str:
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
        client = io.InferenceServerClient(ctx.http_url, network_timeout=_TIMEOUT_S)
    inputs = []
    for name, arr in arrays.items():
        tensor = io.InferInput(name, list(arr.shape), _TRITON_DTYPES[arr.dtype.name])
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    try:
        kwargs = {"client_timeout": _TIMEOUT_S} if protocol == "grpc" else {}
        result = client.infer(model, inputs, **kwargs)
    except InferenceServerException as exc:
        return f"[{exc.status()}] {exc.message()}"
    finally:
        client.close()
    return {s.name: result.as_numpy(s.name) for s in schema.RESPONSE_OUTPUTS}


def _raw_case(protocol: str, arrays: Callable[[], Mapping[str, np.ndarray]], *, served_k: int | None = None,
              model: str = schema.ENSEMBLE_MODEL) -> Callable[[Context], Outcome]:
    def perform(ctx: Context) -> Outcome:
        req = arrays()
        got = _infer_raw(ctx, protocol, req, model)
        if isinstance(got, str):
            return Outcome(error=got)
        if served_k is None:
            return Outcome(served=True, problem="served a request that should have been rejected")
        return _served(got, req["candidate_ids"].tolist(), served_k)

    return perform


def _http_post(ctx: Context, body: bytes, *, path: str = f"/v2/models/{schema.ENSEMBLE_MODEL}/infer",
               headers: Mapping[str, str] | None = None) -> Outcome:
    req = urllib.request.Request(f"http://{ctx.http_url}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            return Outcome(served=True, problem=f"HTTP {resp.status}: accepted ({resp.read(200)!r})")
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode(errors="replace")
        try:
            message = json.loads(raw).get("error", raw)
        except (json.JSONDecodeError, AttributeError):
            message = raw
        return Outcome(error=f"HTTP {exc.code}: {message}")


def _json_inputs(req: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.reshape(-1).tolist()}
            for k, v in req.items()]


def _grpc_raw_bytes(ctx: Context, mutate: Callable[[Any], None]) -> Outcome:
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
            stub.ModelInfer(request, timeout=_TIMEOUT_S)
        except grpc.RpcError as exc:
            return Outcome(error=f"[{exc.code().name}] {exc.details()}")
    return Outcome(served=True, problem="accepted a malformed request")


def _pinrank(args: Sequence[object], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """`pinrank ARGS` in-process: (exit code, everything it printed)."""
    result = CliRunner().invoke(pinrank_main, [str(a) for a in args], env=dict(env or {}))
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))  # an uncaught error is never clear
    return result.exit_code, text


def _client_cli(args: Sequence[object], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(client_cli.main, [str(a) for a in args], env=dict(env or {}))
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
    return result.exit_code, text


def _cli_outcome(code: int, text: str, want_code: int | None = None) -> Outcome:
    if code == 0:
        return Outcome(served=True, problem=f"exit 0: {_short(text)}")
    wrong = f" (expected exit {want_code})" if want_code is not None and code != want_code else ""
    return Outcome(error=f"exit {code}{wrong}: {text}")


def _pinrank_case(args: Callable[[Context], Sequence[object]], env: Mapping[str, str] | None = None
                  ) -> Callable[[Context], Outcome]:
    return lambda ctx: _cli_outcome(*_pinrank(args(ctx), env))


def _client_case(args: Callable[[Context], Sequence[object]], want_code: int,
                 env: Mapping[str, str] | None = None) -> Callable[[Context], Outcome]:
    return lambda ctx: _cli_outcome(*_client_cli(args(ctx), env), want_code=want_code)


def _raises(fn: Callable[[Context], object], *errors: type[BaseException]) -> Callable[[Context], Outcome]:
    """Outcome of `fn`: the message of an anticipated error class, or 'no error raised'.
    Any other exception propagates and counts as unclear (with its traceback)."""

    def perform(ctx: Context) -> Outcome:
        try:
            fn(ctx)
        except errors as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}")
        return Outcome(served=True, problem="no error raised")

    return perform


def _closed_port() -> int:
    return free_ports(1)[0]


# --- SDK ------------------------------------------------------------------------------


def _sdk(ctx: Context, protocol: str = "grpc", **kw: Any) -> Any:
    url = f"grpc://{ctx.grpc_url}" if protocol == "grpc" else f"http://{ctx.http_url}"
    return RankingClient(url, timeout_s=_TIMEOUT_S, retries=0, **kw)


def _sdk_rank(protocol: str = "grpc", *, validate: bool = True, **request: Any) -> Callable[[Context], None]:
    def call(ctx: Context) -> None:
        args: dict[str, Any] = {"user_id": 1, "candidate_ids": [7, 14, 21], "actions": [], "top_k": 2,
                                "request_ts_ms": REQ_TS}
        args.update(request)
        with _sdk(ctx, protocol, validate=validate) as client:
            client.rank(**args)

    return call


def _action(*args: Any) -> Any:
    return Action(*args)


def _sdk_served(protocol: str, candidates: list[int], user_id: int, k: int) -> Callable[[Context], Outcome]:
    def perform(ctx: Context) -> Outcome:
        try:
            with _sdk(ctx, protocol) as client:
                resp = client.rank(user_id, candidates, [_action(candidates[0], "click", REQ_TS - MS_PER_HOUR)],
                                   top_k=k, request_ts_ms=REQ_TS)
        except PinrankError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}")
        out = {"item_ids": np.asarray(resp.item_ids, np.int64),
               "scores": np.asarray([i.utility for i in resp], np.float32),
               "head_probs": np.asarray([[i.head_probs[h] for h in schema.HEADS] for i in resp], np.float32)
               .reshape(-1, schema.NUM_HEADS)}
        return _served(out, candidates, min(k, len(set(candidates))))

    return perform


def _sdk_list_models_without_key(ctx: Context) -> None:
    with _sdk(ctx, "grpc") as client:
        client.list_models()


def _sdk_cases() -> list[Case]:
    err = (PinrankError, ValueError)
    over = list(range(1, schema.MAX_CANDIDATES + 2))
    return [
        Case("sdk_empty_candidates", "sdk", "empty candidate list",
             _raises(_sdk_rank(candidate_ids=[]), *err), ("candidate_ids is empty",)),
        Case("sdk_too_many_candidates", "sdk", f"{len(over)} candidates (> MAX_CANDIDATES)",
             _raises(_sdk_rank(candidate_ids=over), *err), ("too many candidates", str(schema.MAX_CANDIDATES))),
        Case("sdk_float_candidate_ids", "sdk", "float candidate ids",
             _raises(_sdk_rank(candidate_ids=[1.5, 2.0]), *err), ("candidate_ids", "integers")),
        Case("sdk_2d_candidate_ids", "sdk", "candidate ids as a 2-D array",
             _raises(_sdk_rank(candidate_ids=[[7, 14]]), *err), ("candidate_ids", "1-D")),
        Case("sdk_unknown_action_type", "sdk", "action type 'like' is not in the schema",
             _raises(lambda ctx: _sdk_rank(actions=[_action(7, "like", REQ_TS - MS_PER_HOUR)])(ctx), *err),
             ("unknown action", "'like'")),
        Case("sdk_negative_action_ts", "sdk", "negative action timestamp",
             _raises(lambda ctx: _sdk_rank(actions=[_action(7, "save", -5)])(ctx), *err),
             ("action_ts_ms", "too small")),
        Case("sdk_far_future_action", "sdk", "an action a day after the request",
             _raises(lambda ctx: _sdk_rank(actions=[_action(7, "save", REQ_TS + 24 * MS_PER_HOUR)])(ctx), *err),
             ("action_ts_ms", "after request_ts_ms")),
        Case("sdk_far_future_request_ts", "sdk", "request_ts_ms in microseconds (far future)",
             _raises(_sdk_rank(request_ts_ms=REQ_TS * 1000), *err), ("request_ts_ms", "plausible")),
        Case("sdk_negative_user_id", "sdk", "negative user id",
             _raises(_sdk_rank(user_id=-1), *err), ("user_id", "non-negative")),
        Case("sdk_top_k_zero", "sdk", "top_k = 0",
             _raises(_sdk_rank(top_k=0), *err), ("top_k", ">= 1")),
        Case("sdk_bad_url_scheme", "sdk", "ftp:// server URL",
             _raises(lambda ctx: _sdk_url(ctx, "ftp://127.0.0.1:1"), *err), ("unsupported url scheme", "ftp")),
        Case("sdk_bad_timeout", "sdk", "timeout_s = 0",
             _raises(_sdk_timeout, *err),
             ("timeout_s", "> 0")),
        Case("sdk_unreachable_server", "sdk", "nothing listens at the URL",
             _raises(_sdk_unreachable, *err), ("unavailable",)),
        Case("sdk_server_rejects_unvalidated", "sdk",
             "validate=False, 1001 candidates: the server's own check answers",
             _raises(_sdk_rank(validate=False, candidate_ids=over), *err),
             ("InvalidRequestError", "too many candidates")),
        Case("sdk_unknown_ids_served", "sdk", "unknown user and items (cold start): served, not an error",
             _sdk_served("grpc", [10**12 + i for i in range(5)], 10**12, 3), served=True),
        Case("sdk_duplicate_candidates_served_once", "sdk", "duplicated candidates: each item ranked once",
             _sdk_served("http", [7, 7, 14, 21, 14], 1, 5), served=True),
        Case("sdk_model_listing_without_admin_key", "sdk", "repository index without the admin key",
             _raises(_sdk_list_models_without_key, *err), ("AccessDeniedError", "restricted", "pinrank-admin-key")),
        # Issue 16 row 9: each must be a PinrankError (not a bare ValueError,
        # OverflowError or transport error) naming the field or the URL problem.
        Case("sdk_top_k_beyond_int64", "sdk", "top_k = 2**63",
             _raises(_sdk_rank(top_k=2**63), PinrankError), ("top_k", "int64")),
        Case("sdk_user_id_beyond_int64", "sdk", "user_id = 2**64",
             _raises(_sdk_rank(user_id=2**64), PinrankError), ("user_id", "int64")),
        Case("sdk_unicode_digit_action", "sdk", "action type '\u0663' (Arabic-Indic three)",
             _raises(lambda ctx: _sdk_rank(actions=[_action(7, "\u0663", REQ_TS - MS_PER_HOUR)])(ctx), PinrankError),
             ("unknown action", "ASCII digits")),
        Case("sdk_superscript_action", "sdk", "action type '\u00b2' (superscript two)",
             _raises(lambda ctx: _sdk_rank(actions=[_action(7, "\u00b2", REQ_TS - MS_PER_HOUR)])(ctx), PinrankError),
             ("unknown action",)),
        Case("sdk_nan_timeout", "sdk", "timeout_s = NaN",
             _raises(lambda ctx: _sdk_url(ctx, f"grpc://{ctx.grpc_url}", timeout_s=float("nan")), PinrankError),
             ("timeout_s", "finite")),
        Case("sdk_url_with_api_path", "sdk", "http://host:port/v2 (the SDK adds the API path)",
             _raises(lambda ctx: _sdk_url(ctx, f"http://{ctx.http_url}/v2"), PinrankError), ("/v2",)),
        Case("sdk_http_at_grpc_port", "sdk", "the HTTP client pointed at the gRPC port",
             _raises(_sdk_http_at_grpc_port, PinrankError), ("InvalidArgumentError", "is it a gRPC port")),
    ]


def _sdk_url(ctx: Context, url: str, **kw: Any) -> None:
    RankingClient(url, **kw)


def _sdk_http_at_grpc_port(ctx: Context) -> None:
    with RankingClient(f"http://{ctx.grpc_url}", timeout_s=5, retries=0) as client:
        client.rank(1, [7], [], request_ts_ms=REQ_TS)


def _sdk_timeout(ctx: Context) -> None:
    RankingClient(f"grpc://{ctx.grpc_url}", timeout_s=0)


def _sdk_unreachable(ctx: Context) -> None:
    with RankingClient(f"grpc://127.0.0.1:{_closed_port()}", timeout_s=5, retries=0) as client:
        client.rank(1, [7], [], request_ts_ms=REQ_TS)


# --- client CLI -----------------------------------------------------------------------


def _request_file(ctx: Context, name: str, text: str) -> Path:
    path = ctx.scratch(name) / "request.json"
    path.write_text(text)
    return path


def _client_cli_cases() -> list[Case]:
    grpc = lambda ctx: ["--url", f"grpc://{ctx.grpc_url}", "--timeout", "30", "--retries", "0"]  # noqa: E731
    many = ",".join(str(i) for i in range(1, schema.MAX_CANDIDATES + 2))
    return [
        Case("client_cli_bad_json_file", "client_cli", "request file is not JSON",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--request-file",
                                       _request_file(ctx, "cli_bad_json", '{"user_id": 1, "candidate_ids": [1,')], 2),
             ("exit 2:", "not valid JSON")),
        Case("client_cli_json_not_object", "client_cli", "request file holds a list",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--request-file",
                                       _request_file(ctx, "cli_json_list", "[1, 2, 3]")], 2),
             ("exit 2:", "expected a JSON object")),
        Case("client_cli_unknown_request_field", "client_cli", "request file with a misspelt field",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--request-file", _request_file(
                 ctx, "cli_field", '{"user_id": 1, "candidates": [7, 14]}')], 2),
             ("exit 2:", "unknown request field", "candidates")),
        Case("client_cli_non_integer_candidate", "client_cli", "--candidates 7,x",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--user-id", "1", "--candidates", "7,x"], 2),
             ("exit 2:", "--candidates", "'x'")),
        Case("client_cli_bad_action_format", "client_cli", "--action without a timestamp",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--user-id", "1", "--candidates", "7",
                                       "--action", "7:save"], 2),
             ("exit 2:", "--action", "ITEM:TYPE:TS_MS")),
        Case("client_cli_missing_user", "client_cli", "no --user-id",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--candidates", "7,14"], 2),
             ("exit 2:", "--user-id")),
        Case("client_cli_bad_url", "client_cli", "--url with an unsupported scheme",
             _client_case(lambda ctx: ["health", "--url", "ftp://127.0.0.1:1"], 2),
             ("exit 2:", "--url", "ftp")),
        Case("client_cli_zero_timeout", "client_cli", "--timeout 0",
             _client_case(lambda ctx: ["health", *grpc(ctx)[:2], "--timeout", "0"], 2),
             ("exit 2:", "--timeout")),
        Case("client_cli_unreachable", "client_cli", "nothing listens at --url",
             _client_case(lambda ctx: ["rank", "--url", f"grpc://127.0.0.1:{_closed_port()}", "--retries", "0",
                                       "--user-id", "1", "--candidates", "7", "--request-ts-ms", str(REQ_TS)], 3),
             ("exit 3:", "unavailable")),
        Case("client_cli_server_rejects_unvalidated", "client_cli",
             "--no-validate with 1001 candidates: the server's check answers",
             _client_case(lambda ctx: ["rank", *grpc(ctx), "--no-validate", "--user-id", "1",
                                       "--candidates", many, "--request-ts-ms", str(REQ_TS)], 2),
             ("exit 2:", "invalid request", "too many candidates")),
        Case("client_cli_models_without_admin_key", "client_cli", "model listing without the admin key",
             _client_case(lambda ctx: ["models", *grpc(ctx)], 2, env={"PINRANK_ADMIN_KEY": ""}),
             ("exit 2:", "access denied", "PINRANK_ADMIN_KEY")),
    ]


# --- raw gRPC / HTTP --------------------------------------------------------------------


def _raw_cases(protocol: str) -> list[Case]:
    s = f"{protocol}_raw"
    p = protocol
    far_future = REQ_TS + 24 * MS_PER_HOUR
    return [
        Case(f"{p}_fp32_candidates", s, "candidate_ids sent as FP32",
             _raw_case(p, lambda: base_request(candidate_ids=np.asarray([7, 14], np.float32))),
             ("candidate_ids", "FP32", "INT64")),
        Case(f"{p}_int32_user_id", s, "user_id sent as INT32",
             _raw_case(p, lambda: base_request(user_id=np.asarray([1], np.int32))), ("user_id", "INT32", "INT64")),
        Case(f"{p}_two_user_ids", s, "user_id with two elements",
             _raw_case(p, lambda: base_request(user_id=[1, 2])), ("user_id", "expected [1]", "got [2]")),
        Case(f"{p}_2d_candidates", s, "candidate_ids shaped [1, N]",
             _raw_case(p, lambda: base_request(candidate_ids=[[7, 14]])), ("candidate_ids", "shape")),
        Case(f"{p}_empty_candidates", s, "zero candidates",
             _raw_case(p, lambda: base_request(candidate_ids=np.zeros(0, np.int64))), ("candidate_ids is empty",)),
        Case(f"{p}_oversized_candidates", s, "200,000 candidates (1.6 MB)",
             _raw_case(p, lambda: base_request(candidate_ids=np.arange(1, 200_001, dtype=np.int64))),
             ("too many candidates", "200000")),
        Case(f"{p}_mismatched_history", s, "action arrays of different lengths",
             _raw_case(p, lambda: base_request(action_types=[1, 2, 3])), ("equal lengths", "action_types")),
        Case(f"{p}_too_many_actions", s, f"{schema.MAX_REQUEST_ACTIONS + 1} actions",
             _raw_case(p, lambda: base_request(**{k: np.full(schema.MAX_REQUEST_ACTIONS + 1, v, np.int64) for k, v in
                                                   (("action_item_ids", 7), ("action_types", 1),
                                                    ("action_surfaces", 0), ("action_ts_ms", REQ_TS - 1))})),
             ("too many actions",)),
        Case(f"{p}_negative_request_ts", s, "negative request_ts_ms",
             _raw_case(p, lambda: base_request(request_ts_ms=[-5])), ("request_ts_ms=-5", "plausible")),
        Case(f"{p}_future_actions", s, "actions a day after the request",
             _raw_case(p, lambda: base_request(action_ts_ms=[far_future, far_future])),
             ("action_ts_ms", "after request_ts_ms")),
        Case(f"{p}_unknown_action_type", s, "action type id 42",
             _raw_case(p, lambda: base_request(action_types=[42, 1])), ("action_types holds 42",)),
        Case(f"{p}_negative_candidate", s, "a negative candidate id",
             _raw_case(p, lambda: base_request(candidate_ids=[7, -3])), ("candidate_ids", "non-negative")),
        Case(f"{p}_negative_user", s, "a negative user id",
             _raw_case(p, lambda: base_request(user_id=[-1])), ("user_id", "non-negative")),
        Case(f"{p}_missing_input_with_top_k", s, "request_ts_ms missing (top_k present)",
             _raw_case(p, lambda: base_request(request_ts_ms=None)), ("missing input", "request_ts_ms")),
        Case(f"{p}_duplicate_candidates_served_once", s, "duplicated candidates: each item ranked once",
             _raw_case(p, lambda: base_request(candidate_ids=[7, 14, 7, 21, 14], top_k=[5]), served_k=3),
             served=True),
        Case(f"{p}_unknown_ids_served", s, "unknown user, candidates and history items: served (cold start)",
             _raw_case(p, lambda: base_request(user_id=[10**15], candidate_ids=[10**15 + 1, 10**15 + 2],
                                                action_item_ids=[10**15 + 3, 10**15 + 4]), served_k=2),
             served=True),
    ]


def _grpc_bytes_cases() -> list[Case]:
    def short_bytes(req: Any) -> None:
        req.raw_input_contents[1] = req.raw_input_contents[1][:-3]

    def unknown_model(req: Any) -> None:
        req.model_name = "pinrnk"

    return [
        Case("grpc_raw_truncated_tensor_bytes", "grpc_raw", "candidate_ids raw bytes 3 short of its shape",
             lambda ctx: _grpc_raw_bytes(ctx, short_bytes), ("candidate_ids", "byte size")),
        Case("grpc_raw_unknown_model", "grpc_raw", "a misspelt model name",
             lambda ctx: _grpc_raw_bytes(ctx, unknown_model), ("unknown model", "pinrnk")),
    ]


def _http_body_cases() -> list[Case]:
    def body(mutate: Callable[[list[dict[str, Any]]], Any]) -> bytes:
        inputs = _json_inputs(base_request())
        out = mutate(inputs)
        return json.dumps({"inputs": inputs if out is None else out}).encode()

    def shape_mismatch(inputs: list[dict[str, Any]]) -> None:
        inputs[1]["shape"] = [9]

    def string_data(inputs: list[dict[str, Any]]) -> None:
        inputs[1]["data"] = ["seven", "fourteen"]
        inputs[1]["shape"] = [2]

    return [
        Case("http_raw_malformed_json", "http_raw", "the body is not JSON",
             lambda ctx: _http_post(ctx, b'{"inputs": [{"name": "user_id", '), ("failed to parse", "JSON")),
        Case("http_raw_shape_data_mismatch", "http_raw", "shape [9] with 5 values",
             lambda ctx: _http_post(ctx, body(shape_mismatch)), ("shape does not match", "data")),
        Case("http_raw_string_ids", "http_raw", "candidate ids as strings",
             lambda ctx: _http_post(ctx, body(string_data)), ("unable to parse 'data'", "integer")),
        Case("http_raw_no_inputs", "http_raw", "a JSON body without inputs",
             lambda ctx: _http_post(ctx, b'{"outputs": []}'), ("inputs",)),
        Case("http_raw_unknown_model", "http_raw", "a misspelt model name",
             lambda ctx: _http_post(ctx, body(lambda i: None), path="/v2/models/pinrnk/infer"),
             ("unknown model", "pinrnk")),
        Case("http_raw_garbage_body_8mb", "http_raw", "8 MB of non-JSON bytes",
             lambda ctx: _http_post(ctx, b"\x00\xff" * (4 << 20)), ("JSON",)),
        Case("http_raw_repository_index_without_key", "http_raw", "POST /v2/repository/index without the admin key",
             lambda ctx: _http_post(ctx, b"{}", path="/v2/repository/index"),
             ("HTTP 403", "restricted", "pinrank-admin-key")),
        Case("http_raw_unload_without_key", "http_raw", "POST unload of the ranker without the admin key",
             lambda ctx: _http_post(ctx, b"{}", path=f"/v2/repository/models/{schema.RANKER_MODEL}/unload"),
             ("HTTP 403", "restricted")),
    ]


# --- pinrank CLI ----------------------------------------------------------------------------


def _truncated_copy(src: Path, dest: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: max(1, int(len(data) * keep))])
    return dest


def _pickle_payload(path: Path, marker: Path) -> Path:
    """A checkpoint whose unpickling would create `marker` (harmless, detectable)."""
    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))

    torch.save({"kind": "ranker", "config": {}, "state_dict": {}, "payload": Payload()}, path)
    return path


def _payload_check(perform: Callable[[Context, Path], Outcome]) -> Callable[[Context], Outcome]:
    def run(ctx: Context) -> Outcome:
        marker = ctx.scratch("payload_marker") / "PAYLOAD_RAN"
        out = perform(ctx, marker)
        if marker.exists():
            return Outcome(error=f"{out.error or ''} [payload executed]")
        return out

    return run


def _export_args(ctx: Context, ranker: Path) -> list[object]:
    fx = ctx.fixtures
    out = ctx.scratch("export_out")
    return ["export", "--ranker", ranker, "--snapshot", fx.snapshot, "--data", fx.dataset, "--out", out / "repo",
            "--target", "cpu", "--results", out / "export.json"]


def _movielens_dir(ctx: Context, name: str, ratings: bytes | str) -> Path:
    root = ctx.scratch(name) / "ml"
    root.mkdir()
    data = ratings.encode() if isinstance(ratings, str) else ratings
    (root / "ratings.csv").write_bytes(data)
    (root / "movies.csv").write_text("movieId,title,genres\n10,A (1995),Comedy\n20,B (1996),Drama\n")
    return root


_ML_OK = "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.0,964982800\n2,10,5.0,964983000\n"


def _broken_config_repo(ctx: Context, name: str) -> Path:
    repo = ctx.scratch(name) / "repo"
    (repo / "pinrank" / "1").mkdir(parents=True)
    unclosed = 'name: "pinrank"\nplatform: "ensemble"\ninput { name: "user_id" dims: [1\n'
    (repo / "pinrank" / "config.pbtxt").write_text(unclosed)
    return repo


def _tampered_repo(ctx: Context, name: str) -> Path:
    repo = ctx.fixtures.repository_copy(ctx.scratch(name) / "repo")
    versions = sorted((repo / schema.RANKER_MODEL).glob("[0-9]*"), key=lambda v: int(v.name))
    onnx = versions[-1] / "ranker.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside the weights
    onnx.write_bytes(bytes(data))
    return repo


def _open_key_file(ctx: Context) -> Path:
    path = ctx.scratch("open_key") / "admin-key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(0o644)
    return path


def _pinrank_cli_cases() -> list[Case]:
    no_env_key = {"PINRANK_ADMIN_KEY": ""}
    return [
        Case("pinrank_cli_export_truncated_checkpoint", "pinrank_cli", "export from a truncated checkpoint",
             _pinrank_case(lambda ctx: _export_args(ctx, _truncated_copy(
                 ctx.fixtures.ranker, ctx.scratch("trunc_ckpt") / "ranker.pt"))),
             ("ranker.pt", "not a readable checkpoint")),
        Case("pinrank_cli_export_pickle_payload", "pinrank_cli",
             "export from a checkpoint carrying a pickle payload (code execution attempt)",
             _payload_check(lambda ctx, marker: _cli_outcome(*_pinrank(_export_args(
                 ctx, _pickle_payload(ctx.scratch("evil_ckpt") / "ranker.pt", marker))))),
             ("refused", "not a weights-only checkpoint"), forbid=("Traceback", "payload executed")),
        Case("pinrank_cli_export_wrong_kind", "pinrank_cli", "export from a non-ranker checkpoint",
             _pinrank_case(lambda ctx: _export_args(ctx, _wrong_kind_checkpoint(ctx))),
             ("expected a 'ranker' checkpoint", "pinnerformer")),
        Case("pinrank_cli_import_truncated_csv", "pinrank_cli", "data import of a ratings.csv cut mid-row",
             _pinrank_case(lambda ctx: ["data", "import", "--format", "movielens", "--src",
                                        _movielens_dir(ctx, "cli_trunc_csv", _ML_OK + "3,10,4"),
                                        "--out", ctx.scratch("cli_trunc_out") / "ds"]),
             ("ratings.csv:5", "expected 4 columns")),
        Case("pinrank_cli_validate_corrupt_parquet", "pinrank_cli", "data validate on a truncated actions.parquet",
             _pinrank_case(lambda ctx: ["data", "validate", _corrupt_dataset(ctx)]),
             ("actions.parquet", "not a readable Parquet file")),
        Case("pinrank_cli_serve_broken_config", "pinrank_cli", "serve a repository with a malformed config.pbtxt",
             _pinrank_case(lambda ctx: ["serve", "--repository", _broken_config_repo(ctx, "cli_broken_cfg")]),
             ("config.pbtxt", "not a valid Triton ModelConfig")),
        Case("pinrank_cli_serve_tampered_artifact", "pinrank_cli",
             "serve a repository whose ranker.onnx changed after export",
             _pinrank_case(lambda ctx: ["serve", "--repository", _tampered_repo(ctx, "cli_tampered")]),
             ("ranker.onnx", "does not match manifest.json")),
        Case("pinrank_cli_serve_missing_repository", "pinrank_cli", "serve a directory that does not exist",
             _pinrank_case(lambda ctx: ["serve", "--repository", ctx.workdir / "no-such-repo"]),
             ("does not exist",)),
        Case("pinrank_cli_serve_world_readable_key", "pinrank_cli", "serve with an admin key file readable by others",
             _pinrank_case(lambda ctx: ["serve", "--repository", ctx.fixtures.repository,
                                        "--admin-key-file", _open_key_file(ctx)], env=no_env_key),
             ("admin key file", "readable by others", "chmod 600")),
        Case("pinrank_cli_export_bad_instances", "pinrank_cli", "export --instances 2:x:1",
             _pinrank_case(lambda ctx: [*_export_args(ctx, ctx.fixtures.ranker), "--instances", "2:x:1"]),
             ("--instances", "PRE:RANKER:POST")),
    ]


def _wrong_kind_checkpoint(ctx: Context) -> Path:
    return save_checkpoint(ctx.scratch("wrong_kind") / "pf.pt", kind="pinnerformer", config={},
                           model=torch.nn.Linear(2, 2))


def _corrupt_dataset(ctx: Context) -> Path:
    ds = ctx.scratch("corrupt_dataset") / "data"
    shutil.copytree(ctx.fixtures.dataset, ds)
    _truncated_copy(ds / "actions.parquet", ds / "actions.parquet", keep=0.4)
    return ds


# --- importers -----------------------------------------------------------------------------


def _import(fmt: str, src: Callable[[Context], Path]) -> Callable[[Context], Outcome]:
    return _raises(lambda ctx: import_source(fmt, src(ctx), ctx.scratch(f"import_out_{fmt}") / "ds"), DatasetError)


def _taobao_file(ctx: Context, name: str, rows: str) -> Path:
    path = ctx.scratch(name) / "UserBehavior.csv"
    path.write_text(rows)
    return path


def _rees46_file(ctx: Context, name: str, rows: str) -> Path:
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    path = ctx.scratch(name) / "2019-Oct.csv"
    path.write_text(header + rows)
    return path


_REES46_ROW = "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde\n"


def _importer_cases() -> list[Case]:
    return [
        Case("importer_truncated_csv", "importer", "ratings.csv cut in the middle of a row",
             _import("movielens", lambda ctx: _movielens_dir(ctx, "imp_trunc", _ML_OK + "3,10")),
             ("ratings.csv:5", "expected 4 columns, got 2")),
        Case("importer_wrong_header", "importer", "ratings.csv with another header",
             _import("movielens", lambda ctx: _movielens_dir(ctx, "imp_header", "user,movie,stars,time\n1,10,4,9\n")),
             ("ratings.csv:1", "expected header")),
        Case("importer_not_utf8", "importer", "ratings.csv in a binary encoding",
             _import("movielens", lambda ctx: _movielens_dir(ctx, "imp_utf8", b"\xff\xfe\x00u\x00s\x00e\x00r")),
             ("ratings.csv", "not UTF-8")),
        Case("importer_negative_timestamp", "importer", "a rating stamped -5 s",
             _import("movielens", lambda ctx: _movielens_dir(ctx, "imp_neg_ts", _ML_OK + "3,10,4.0,-5\n")),
             ("ratings.csv:5", "timestamp", "outside the plausible range")),
        Case("importer_nan_rating", "importer", "a NaN rating",
             _import("movielens", lambda ctx: _movielens_dir(ctx, "imp_nan", _ML_OK + "3,10,nan,964983100\n")),
             ("ratings.csv:5", "rating 'nan'")),
        Case("importer_far_future_timestamp", "importer", "a Taobao event in 2286",
             _import("taobao", lambda ctx: _taobao_file(ctx, "imp_future", "1,100,5,pv,1511544070\n"
                                                        "2,100,5,pv,9999999999\n")),
             ("UserBehavior.csv:2", "outside the plausible range")),
        Case("importer_unknown_behavior", "importer", "Taobao behavior 'like'",
             _import("taobao", lambda ctx: _taobao_file(ctx, "imp_behavior", "1,100,5,like,1511544070\n")),
             ("UserBehavior.csv:1", "unknown behavior_type 'like'")),
        Case("importer_bad_event_time", "importer", "REES46 event_time 'yesterday'",
             _import("rees46", lambda ctx: _rees46_file(ctx, "imp_time", _REES46_ROW.replace(
                 "2019-10-01 00:00:00 UTC", "yesterday"))),
             ("2019-Oct.csv:2", "unparsable event_time 'yesterday'")),
        Case("importer_missing_source", "importer", "a source folder that does not exist",
             _import("taobao", lambda ctx: ctx.workdir / "no-such-source"),
             ("no-such-source", "no such file or directory")),
    ]


# --- config files ----------------------------------------------------------------------------


def _validate_repo(repo: Callable[[Context], Path]) -> Callable[[Context], Outcome]:
    return _raises(lambda ctx: validate_repository(repo(ctx)), ServerError)


def _bad_manifest_repo(ctx: Context) -> Path:
    repo = ctx.fixtures.repository_copy(ctx.scratch("bad_manifest") / "repo")
    version = sorted((repo / schema.RANKER_MODEL).glob("[0-9]*"), key=lambda v: int(v.name))[-1]
    (version / "manifest.json").write_text('{"artifact_sha256": {"ranker.onnx": ')
    return repo


def _snapshot_with(ctx: Context, name: str, edit: Callable[[Path], None]) -> Path:
    snap = ctx.scratch(name) / "snapshot"
    shutil.copytree(ctx.fixtures.snapshot, snap)
    edit(snap)
    return snap


def _nan_embeddings(snap: Path) -> None:
    emb = np.load(snap / "user_emb.npy")
    emb[0, 0] = np.nan
    np.save(snap / "user_emb.npy", emb)


def _unsorted_users(snap: Path) -> None:
    ids = np.load(snap / "user_ids.npy")
    np.save(snap / "user_ids.npy", ids[::-1].copy())


def _pickled_vocab(ctx: Context) -> Path:
    path = ctx.scratch("pickled_vocab") / "item_ids.npy"
    np.save(path, np.array([7, "x", None], dtype=object), allow_pickle=True)
    return path


def _bad_meta_dataset(ctx: Context) -> Path:
    ds = ctx.scratch("bad_meta") / "data"
    shutil.copytree(ctx.fixtures.dataset, ds)
    (ds / "meta.json").write_text('{"source": "synthetic", ')
    return ds


def _config_cases() -> list[Case]:
    return [
        Case("config_malformed_pbtxt", "config", "config.pbtxt with an unclosed list",
             _validate_repo(lambda ctx: _broken_config_repo(ctx, "cfg_pbtxt")),
             ("config.pbtxt", "not a valid Triton ModelConfig")),
        Case("config_binary_pbtxt", "config", "config.pbtxt holding binary bytes",
             _validate_repo(lambda ctx: _binary_config_repo(ctx)), ("config.pbtxt", "not a valid Triton ModelConfig")),
        Case("config_tampered_artifact", "config", "ranker.onnx changed after export (manifest sha256)",
             _validate_repo(lambda ctx: _tampered_repo(ctx, "cfg_tampered")),
             ("ranker.onnx", "sha256", "does not match manifest.json")),
        Case("config_corrupt_manifest", "config", "manifest.json cut short",
             _validate_repo(_bad_manifest_repo), ("manifest.json", "not valid JSON")),
        Case("config_nan_snapshot", "config", "a NaN in the user-embedding snapshot",
             _raises(lambda ctx: UserSnapshot.load(_snapshot_with(ctx, "cfg_nan", _nan_embeddings)), SnapshotError),
             ("snapshot", "NaN")),
        Case("config_unsorted_snapshot", "config", "snapshot user ids out of order",
             _raises(lambda ctx: UserSnapshot.load(_snapshot_with(ctx, "cfg_unsorted", _unsorted_users)),
                     SnapshotError), ("snapshot", "sorted and unique")),
        Case("config_pickled_vocabulary", "config", "item vocabulary saved as a pickled object array",
             _raises(lambda ctx: ItemVocab.load(_pickled_vocab(ctx)), ValueError),
             ("item_ids.npy", "allow_pickle")),
        Case("config_dataset_meta_truncated", "config", "dataset meta.json cut short",
             _raises(lambda ctx: load_dataset(_bad_meta_dataset(ctx)), DatasetError), ("meta.json", "invalid JSON")),
    ]


def _binary_config_repo(ctx: Context) -> Path:
    repo = ctx.scratch("cfg_binary") / "repo"
    (repo / "pinrank").mkdir(parents=True)
    (repo / "pinrank" / "config.pbtxt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    return repo


# --- checkpoints ----------------------------------------------------------------------------


def _load(path: Callable[[Context], Path], kind: str = "ranker") -> Callable[[Context], Outcome]:
    return _raises(lambda ctx: load_checkpoint(path(ctx), kind), ValueError, FileNotFoundError)


def _load_ranker(path: Callable[[Context], Path]) -> Callable[[Context], Outcome]:
    return _raises(lambda ctx: load_ranker(path(ctx)), ValueError, FileNotFoundError)


def _ckpt_variant(ctx: Context, name: str, edit: Callable[[dict[str, Any]], Any]) -> Path:
    ckpt = torch.load(ctx.fixtures.ranker, map_location="cpu", weights_only=True)
    edited = edit(ckpt)
    path = ctx.scratch(name) / "ranker.pt"
    torch.save(ckpt if edited is None else edited, path)
    return path


def _checkpoint_cases() -> list[Case]:
    def more_items(ckpt: dict[str, Any]) -> None:
        ckpt["config"]["num_items"] += 7

    def no_config(ckpt: dict[str, Any]) -> None:
        del ckpt["config"]["ranker"]

    return [
        Case("checkpoint_truncated", "checkpoint", "a checkpoint cut in half",
             _load(lambda ctx: _truncated_copy(ctx.fixtures.ranker, ctx.scratch("ck_trunc") / "r.pt")),
             ("r.pt", "not a readable checkpoint")),
        Case("checkpoint_empty_file", "checkpoint", "a zero-byte checkpoint",
             _load(lambda ctx: _empty(ctx.scratch("ck_empty") / "r.pt")), ("r.pt", "not a readable checkpoint")),
        Case("checkpoint_pickle_payload", "checkpoint", "a checkpoint that would run code when unpickled",
             _payload_check(lambda ctx, marker: _load(lambda c: _pickle_payload(
                 c.scratch("ck_evil") / "r.pt", marker))(ctx)),
             ("refused", "not a weights-only checkpoint", "open"), forbid=("payload executed",)),
        Case("checkpoint_wrong_kind", "checkpoint", "a PinnerFormer checkpoint where a ranker is expected",
             _load(_wrong_kind_checkpoint), ("expected a 'ranker' checkpoint", "'pinnerformer'")),
        Case("checkpoint_not_a_dict", "checkpoint", "a checkpoint holding a bare list of tensors",
             _load(lambda ctx: _ckpt_variant(ctx, "ck_list", lambda c: list(c["state_dict"].values()))),
             ("expected a 'ranker' checkpoint", "'list'")),
        Case("checkpoint_weights_mismatch", "checkpoint", "num_items in the config disagrees with the weights",
             _load_ranker(lambda ctx: _ckpt_variant(ctx, "ck_mismatch", more_items)),
             ("weights do not fit its config", "size mismatch")),
        Case("checkpoint_missing_config", "checkpoint", "a ranker checkpoint without its architecture",
             _load_ranker(lambda ctx: _ckpt_variant(ctx, "ck_noconfig", no_config)), ("missing", "'ranker'")),
        Case("checkpoint_missing_file", "checkpoint", "a checkpoint path that does not exist",
             _load(lambda ctx: ctx.workdir / "nope.pt"), ("nope.pt", "checkpoint not found")),
    ]


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# --- the matrix -----------------------------------------------------------------------------


def cases() -> list[Case]:
    """Every case, in run order (fast server-facing ones first)."""
    out = [
        *_raw_cases("grpc"), *_grpc_bytes_cases(), *_raw_cases("http"), *_http_body_cases(),
        *_sdk_cases(), *_client_cli_cases(), *_pinrank_cli_cases(), *_importer_cases(), *_config_cases(),
        *_checkpoint_cases(),
    ]
    ids = [c.id for c in out]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert all(c.surface in SURFACES for c in out)
    return out


def server_ready(http_url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_case(case: Case, ctx: Context) -> dict[str, Any]:
    """One case's row: what it answered, whether that is clear, the server after it."""
    t0 = time.perf_counter()
    try:
        outcome = case.perform(ctx)
    except Exception as exc:  # an unanticipated failure is, by definition, not a clear answer
        outcome = Outcome(error=f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    seconds = time.perf_counter() - t0
    clear = case.judge(outcome)
    return {
        "id": case.id,
        "surface": case.surface,
        "problem": case.problem,
        "expected": "served correctly" if case.served else list(case.expect),
        "answer": "served" if outcome.served and outcome.error is None else "error",
        "message": _short(outcome.error or outcome.problem or "served as expected"),
        "clear_error": clear,
        "server_ready_after": server_ready(ctx.http_url),
        "seconds": round(seconds, 3),
    }


def run_matrix(http_url: str, grpc_url: str, workdir: str | Path,
               only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every case (or those whose id is in `only`) against a live pinrank
    server (host:port URLs) and return counts plus one row per case."""
    ctx = Context(http_url.removeprefix("http://"), grpc_url.removeprefix("grpc://"), Path(workdir))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    selected = [c for c in cases() if only is None or c.id in only]
    if not server_ready(ctx.http_url):
        raise RuntimeError(f"the server at {ctx.http_url} is not ready before the first case")
    t0 = time.perf_counter()
    with _quiet_env():
        rows = [run_case(case, ctx) for case in selected]
    by_surface: dict[str, dict[str, int]] = {}
    for row in rows:
        s = by_surface.setdefault(row["surface"], {"total": 0, "clear_error": 0})
        s["total"] += 1
        s["clear_error"] += int(row["clear_error"])
    return {
        "bad_inputs_total": len(rows),
        "bad_inputs_clear_error": sum(r["clear_error"] for r in rows),
        "server_ready_after_all": bool(rows) and all(r["server_ready_after"] for r in rows),
        "by_surface": by_surface,
        "unclear": [r["id"] for r in rows if not r["clear_error"]],
        "seconds": round(time.perf_counter() - t0, 2),
        "cases": rows,
    }


@contextlib.contextmanager
def _quiet_env() -> Iterator[None]:
    """Cases must not pick up (or leak) an operator's admin key or client URL."""
    saved = {k: os.environ.pop(k) for k in ("PINRANK_ADMIN_KEY", "PINRANK_URL") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def run_with_server(workdir: str | Path, repository: str | Path | None = None,
                    log_path: str | Path | None = None) -> dict[str, Any]:
    """Serve `repository` (default: an untrained export built in `workdir`)
    on free localhost ports and run the matrix against it."""
    workdir = Path(workdir)
    repo = Path(repository) if repository is not None else Fixtures(workdir / "fixtures").repository
    log = Path(log_path) if log_path is not None else workdir / "tritonserver.log"
    with _quiet_env(), running_server(repo, log_path=log) as server:
        result = run_matrix(server.http_url, server.grpc_url, workdir)
        result["server_ready_after_all"] = result["server_ready_after_all"] and server.is_ready()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """python -m reliability.bad_inputs [--http-url H:P --grpc-url H:P] [--out FILE]"""
    ap = argparse.ArgumentParser(description="Run the bad-input matrix against a pinrank server.")
    ap.add_argument("--http-url", help="host:port of a running server's HTTP endpoint (else one is started)")
    ap.add_argument("--grpc-url", help="host:port of its gRPC endpoint")
    ap.add_argument("--repository", type=Path, help="repository to serve when no URLs are given")
    ap.add_argument("--workdir", type=Path, default=Path("artifacts/reliability"))
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args(argv)
    if bool(args.http_url) != bool(args.grpc_url):
        ap.error("give both --http-url and --grpc-url, or neither")
    if args.http_url:
        result = run_matrix(args.http_url, args.grpc_url, args.workdir)
    else:
        result = run_with_server(args.workdir, args.repository)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    for row in result["cases"]:
        mark = "ok " if row["clear_error"] and row["server_ready_after"] else "BAD"
        print(f"{mark} {row['surface']:<12} {row['id']:<44} {row['message'][:100]}")
    print(f"{result['bad_inputs_clear_error']}/{result['bad_inputs_total']} clear, server ready after all: "
          f"{result['server_ready_after_all']} ({result['seconds']} s)")
    ok = result["bad_inputs_clear_error"] == result["bad_inputs_total"] and result["server_ready_after_all"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
