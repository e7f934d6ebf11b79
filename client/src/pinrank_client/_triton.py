"""Glue between schema tensors and tritonclient objects, shared by the four
client flavours (sync/async x gRPC/HTTP), whose request/response types have the
same interface. Every tensor name and dtype comes from the schema."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

from pinrank_client import schema
from pinrank_client.errors import InvalidRequestError


def build_inputs(module: ModuleType, arrays: Mapping[str, NDArray[Any]]) -> list[Any]:
    """InferInputs for `arrays` (tritonclient.grpc or .http as `module`)."""
    inputs = []
    for spec in schema.REQUEST_INPUTS:
        arr = arrays.get(spec.name)
        if arr is None:
            if spec.optional:
                continue
            raise InvalidRequestError(f"missing input {spec.name!r}")
        arr = np.ascontiguousarray(arr, dtype=spec.dtype)
        tensor = module.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    return inputs


def grpc_channel_args(backoff_s: float, max_backoff_s: float) -> list[tuple[str, int]]:
    """tritonclient's default channel options plus a bounded reconnect backoff.

    A gRPC channel whose server went away waits out its own reconnect backoff
    (1 s growing to 120 s by default) and fails every call with UNAVAILABLE
    meanwhile, even after the server is back. Capping it at the SDK's own
    backoff keeps the retry policy the one thing that decides how soon a
    recovered server is used again. (grpc.min_reconnect_backoff_ms is left
    alone: despite its name it is the minimum *connect timeout*, and a small
    one would break slow TLS handshakes.) Passing channel_args replaces all
    of tritonclient's defaults, so those are repeated here.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions  # noqa: PLC0415 - the grpc stack loads only for gRPC clients (HTTP users never pay for it)

    keepalive = KeepAliveOptions()
    initial_ms = max(50, int(backoff_s * 1000))
    max_ms = max(initial_ms, int(max_backoff_s * 1000))
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


def requested_outputs(module: ModuleType) -> list[Any]:
    # Asking by name (rather than "all outputs") keeps the response to the
    # contract if the server later adds debug outputs.
    return [module.InferRequestedOutput(spec.name) for spec in schema.RESPONSE_OUTPUTS]


def read_outputs(result: Any) -> dict[str, NDArray[Any] | None]:
    return {spec.name: result.as_numpy(spec.name) for spec in schema.RESPONSE_OUTPUTS}


def model_identity(result: Any, default_name: str) -> tuple[str, str]:
    """(model name, version) that answered: a dict for HTTP, a protobuf for gRPC."""
    response = result.get_response()
    if isinstance(response, Mapping):
        return str(response.get("model_name") or default_name), str(response.get("model_version") or "")
    return (response.model_name or default_name), response.model_version


def _tensor_meta(items: Any) -> list[dict[str, Any]]:
    # gRPC's JSON renders int64 dims as strings; normalise to ints.
    return [
        {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t.get("shape", [])]}
        for t in (items or [])
    ]


def normalize_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """One shape for model metadata whichever protocol fetched it."""
    return {
        "name": meta.get("name", ""),
        "versions": [str(v) for v in meta.get("versions", [])],
        "platform": meta.get("platform", ""),
        "inputs": _tensor_meta(meta.get("inputs")),
        "outputs": _tensor_meta(meta.get("outputs")),
    }


def normalize_index(index: Any) -> list[dict[str, str]]:
    """One shape for the repository index: gRPC wraps it in {"models": [...]}."""
    models = index.get("models", []) if isinstance(index, Mapping) else index
    return [
        {
            "name": str(m.get("name", "")),
            "version": str(m.get("version", "")),
            "state": str(m.get("state", "")),
            "reason": str(m.get("reason", "")),
        }
        for m in models or []
    ]


def contract_mismatches(meta: Mapping[str, Any]) -> list[str]:
    """How the served model's interface differs from schema.REQUEST_INPUTS /
    RESPONSE_OUTPUTS (empty when it matches). Takes normalize_metadata output."""
    problems = []
    for group, specs in (("input", schema.REQUEST_INPUTS), ("output", schema.RESPONSE_OUTPUTS)):
        served = {t["name"]: t for t in meta.get(group + "s", [])}
        for spec in specs:
            tensor = served.pop(spec.name, None)
            if tensor is None:
                problems.append(f"{group} {spec.name!r} is missing on the server")
                continue
            if tensor["datatype"] != spec.triton_dtype:
                problems.append(
                    f"{group} {spec.name!r}: server has {tensor['datatype']}, schema says {spec.triton_dtype}"
                )
            if list(tensor["shape"]) != list(spec.shape):
                problems.append(
                    f"{group} {spec.name!r}: server shape {tensor['shape']}, schema says {list(spec.shape)}"
                )
        problems.extend(f"server has {group} {name!r}, which the schema lacks" for name in served)
    return problems
