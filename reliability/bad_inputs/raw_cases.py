"""Raw gRPC/HTTP cases: tensors, protobufs and JSON bodies sent straight to
Triton, past the SDK, so the server's own checks answer."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_HOUR
from reliability.bad_inputs.case import REQ_TS, Case
from reliability.bad_inputs.helpers import base_request, grpc_raw_bytes, http_post, json_inputs, raw_case


def raw_cases(protocol: str) -> list[Case]:
    s = f"{protocol}_raw"
    p = protocol
    far_future = REQ_TS + 24 * MS_PER_HOUR
    return [
        Case(f"{p}_fp32_candidates", s, "candidate_ids sent as FP32",
             raw_case(p, lambda: base_request(candidate_ids=np.asarray([7, 14], np.float32))),
             ("candidate_ids", "FP32", "INT64")),
        Case(f"{p}_int32_user_id", s, "user_id sent as INT32",
             raw_case(p, lambda: base_request(user_id=np.asarray([1], np.int32))), ("user_id", "INT32", "INT64")),
        Case(f"{p}_two_user_ids", s, "user_id with two elements",
             raw_case(p, lambda: base_request(user_id=[1, 2])), ("user_id", "expected [1]", "got [2]")),
        Case(f"{p}_2d_candidates", s, "candidate_ids shaped [1, N]",
             raw_case(p, lambda: base_request(candidate_ids=[[7, 14]])), ("candidate_ids", "shape")),
        Case(f"{p}_empty_candidates", s, "zero candidates",
             raw_case(p, lambda: base_request(candidate_ids=np.zeros(0, np.int64))), ("candidate_ids is empty",)),
        Case(f"{p}_oversized_candidates", s, "200,000 candidates (1.6 MB)",
             raw_case(p, lambda: base_request(candidate_ids=np.arange(1, 200_001, dtype=np.int64))),
             ("too many candidates", "200000")),
        Case(f"{p}_mismatched_history", s, "action arrays of different lengths",
             raw_case(p, lambda: base_request(action_types=[1, 2, 3])), ("equal lengths", "action_types")),
        Case(f"{p}_too_many_actions", s, f"{schema.MAX_REQUEST_ACTIONS + 1} actions",
             raw_case(p, lambda: base_request(**{k: np.full(schema.MAX_REQUEST_ACTIONS + 1, v, np.int64) for k, v in
                                                   (("action_item_ids", 7), ("action_types", 1),
                                                    ("action_surfaces", 0), ("action_ts_ms", REQ_TS - 1))})),
             ("too many actions",)),
        Case(f"{p}_negative_request_ts", s, "negative request_ts_ms",
             raw_case(p, lambda: base_request(request_ts_ms=[-5])), ("request_ts_ms=-5", "plausible")),
        Case(f"{p}_future_actions", s, "actions a day after the request",
             raw_case(p, lambda: base_request(action_ts_ms=[far_future, far_future])),
             ("action_ts_ms", "after request_ts_ms")),
        Case(f"{p}_unknown_action_type", s, "action type id 42",
             raw_case(p, lambda: base_request(action_types=[42, 1])), ("action_types holds 42",)),
        Case(f"{p}_negative_candidate", s, "a negative candidate id",
             raw_case(p, lambda: base_request(candidate_ids=[7, -3])), ("candidate_ids", "non-negative")),
        Case(f"{p}_negative_user", s, "a negative user id",
             raw_case(p, lambda: base_request(user_id=[-1])), ("user_id", "non-negative")),
        Case(f"{p}_missing_input_with_top_k", s, "request_ts_ms missing (top_k present)",
             raw_case(p, lambda: base_request(request_ts_ms=None)), ("missing input", "request_ts_ms")),
        Case(f"{p}_duplicate_candidates_served_once", s, "duplicated candidates: each item ranked once",
             raw_case(p, lambda: base_request(candidate_ids=[7, 14, 7, 21, 14], top_k=[5]), served_k=3),
             served=True),
        Case(f"{p}_unknown_ids_served", s, "unknown user, candidates and history items: served (cold start)",
             raw_case(p, lambda: base_request(user_id=[10**15], candidate_ids=[10**15 + 1, 10**15 + 2],
                                                action_item_ids=[10**15 + 3, 10**15 + 4]), served_k=2),
             served=True),
    ]


def grpc_bytes_cases() -> list[Case]:
    def short_bytes(req: Any) -> None:
        req.raw_input_contents[1] = req.raw_input_contents[1][:-3]

    def unknown_model(req: Any) -> None:
        req.model_name = "pinrnk"

    return [
        Case("grpc_raw_truncated_tensor_bytes", "grpc_raw", "candidate_ids raw bytes 3 short of its shape",
             lambda ctx: grpc_raw_bytes(ctx, short_bytes), ("candidate_ids", "byte size")),
        Case("grpc_raw_unknown_model", "grpc_raw", "a misspelt model name",
             lambda ctx: grpc_raw_bytes(ctx, unknown_model), ("unknown model", "pinrnk")),
    ]


def http_body_cases() -> list[Case]:
    def body(mutate: Callable[[list[dict[str, Any]]], Any]) -> bytes:
        inputs = json_inputs(base_request())
        out = mutate(inputs)
        return json.dumps({"inputs": inputs if out is None else out}).encode()

    def shape_mismatch(inputs: list[dict[str, Any]]) -> None:
        inputs[1]["shape"] = [9]

    def string_data(inputs: list[dict[str, Any]]) -> None:
        inputs[1]["data"] = ["seven", "fourteen"]
        inputs[1]["shape"] = [2]

    return [
        Case("http_raw_malformed_json", "http_raw", "the body is not JSON",
             lambda ctx: http_post(ctx, b'{"inputs": [{"name": "user_id", '), ("failed to parse", "JSON")),
        Case("http_raw_shape_data_mismatch", "http_raw", "shape [9] with 5 values",
             lambda ctx: http_post(ctx, body(shape_mismatch)), ("shape does not match", "data")),
        Case("http_raw_string_ids", "http_raw", "candidate ids as strings",
             lambda ctx: http_post(ctx, body(string_data)), ("unable to parse 'data'", "integer")),
        Case("http_raw_no_inputs", "http_raw", "a JSON body without inputs",
             lambda ctx: http_post(ctx, b'{"outputs": []}'), ("inputs",)),
        Case("http_raw_unknown_model", "http_raw", "a misspelt model name",
             lambda ctx: http_post(ctx, body(lambda i: None), path="/v2/models/pinrnk/infer"),
             ("unknown model", "pinrnk")),
        Case("http_raw_garbage_body_8mb", "http_raw", "8 MB of non-JSON bytes",
             lambda ctx: http_post(ctx, b"\x00\xff" * (4 << 20)), ("JSON",)),
        Case("http_raw_repository_index_without_key", "http_raw", "POST /v2/repository/index without the admin key",
             lambda ctx: http_post(ctx, b"{}", path="/v2/repository/index"),
             ("HTTP 403", "restricted", "pinrank-admin-key")),
        Case("http_raw_unload_without_key", "http_raw", "POST unload of the ranker without the admin key",
             lambda ctx: http_post(ctx, b"{}", path=f"/v2/repository/models/{schema.RANKER_MODEL}/unload"),
             ("HTTP 403", "restricted")),
    ]
