"""Tensor names and dtypes come from the schema, not from the SDK's code."""

import dataclasses

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from pinrank_client import RankRequest, _triton, schema, types
from pinrank_client._triton import (
    build_inputs,
    contract_mismatches,
    normalize_index,
    normalize_metadata,
)

NOW = 1_718_000_000_000


def sample(top_k=None):
    return RankRequest.from_arrays(
        1, [4, 5, 6], action_item_ids=[9], action_types=["save"], action_ts_ms=[NOW - 1], request_ts_ms=NOW, top_k=top_k
    ).to_arrays()


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_infer_inputs_follow_request_inputs(module):
    inputs = build_inputs(module, sample(top_k=2))
    assert [i.name() for i in inputs] == [s.name for s in schema.REQUEST_INPUTS]
    assert [i.datatype() for i in inputs] == [s.triton_dtype for s in schema.REQUEST_INPUTS]
    shapes = {i.name(): i.shape() for i in inputs}
    assert shapes["candidate_ids"] == [3] and shapes["user_id"] == [1] and shapes["action_ts_ms"] == [1]


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_requested_outputs_follow_response_outputs(module):
    assert [o.name() for o in _triton.requested_outputs(module)] == [s.name for s in schema.RESPONSE_OUTPUTS]


class Recorder:
    """A fake tritonclient module recording what the SDK asks for."""

    def __init__(self):
        self.made = []

    def InferInput(self, name, shape, datatype):  # noqa: N802 - mirrors tritonclient
        rec = self

        class Input:
            def set_data_from_numpy(self, arr):
                rec.made.append((name, tuple(shape), datatype, arr.dtype))

        return Input()


def test_names_and_dtypes_are_derived_from_the_schema(monkeypatch):
    # Change the contract's dtypes: the SDK must follow without code changes.
    widened = tuple(dataclasses.replace(s, dtype="int32") for s in schema.REQUEST_INPUTS)
    monkeypatch.setattr(schema, "REQUEST_INPUTS", widened)
    rec = Recorder()
    build_inputs(rec, sample())
    assert [m[0] for m in rec.made] == [s.name for s in widened if not s.optional]
    assert {m[2] for m in rec.made} == {"INT32"}
    assert {m[3] for m in rec.made} == {np.dtype(np.int32)}


def test_missing_required_input_is_reported():
    arrays = sample()
    del arrays["user_id"]
    with pytest.raises(Exception, match="missing input 'user_id'"):
        build_inputs(Recorder(), arrays)


def test_sdk_tensor_names_match_the_schema():
    assert set(types._ACTION_COLUMNS) <= {s.name for s in schema.REQUEST_INPUTS}
    assert set(types._INPUT_SPECS) == {s.name for s in schema.REQUEST_INPUTS}
    assert set(types._OUTPUT_SPECS) == {s.name for s in schema.RESPONSE_OUTPUTS}


def served(inputs=schema.REQUEST_INPUTS, outputs=schema.RESPONSE_OUTPUTS):
    def t(s):
        # gRPC's JSON gives int64 dims as strings
        return {"name": s.name, "datatype": s.triton_dtype, "shape": [str(d) for d in s.shape]}

    return normalize_metadata(
        {
            "name": "pinrank",
            "versions": ["1"],
            "platform": "ensemble",
            "inputs": [t(s) for s in inputs],
            "outputs": [t(s) for s in outputs],
        }
    )


def test_contract_check_passes_for_the_schema():
    meta = served()
    assert meta["inputs"][1]["shape"] == [-1]
    assert contract_mismatches(meta) == []


def test_contract_check_reports_differences():
    inputs = [s for s in schema.REQUEST_INPUTS if s.name != "top_k"]
    inputs[0] = dataclasses.replace(inputs[0], dtype="int32")
    outputs = list(schema.RESPONSE_OUTPUTS) + [schema.TensorSpec("debug", "float32", (-1,))]
    outputs[2] = dataclasses.replace(outputs[2], shape=(-1, 3))
    problems = contract_mismatches(served(inputs, outputs))
    assert "input 'top_k' is missing on the server" in problems
    assert "input 'user_id': server has INT32, schema says INT64" in problems
    assert f"output 'head_probs': server shape [-1, 3], schema says [-1, {schema.NUM_HEADS}]" in problems
    assert "server has output 'debug', which the schema lacks" in problems


def test_repository_index_normalised_for_both_protocols():
    row = {"name": "pinrank", "version": "1", "state": "READY"}
    expected = [{"name": "pinrank", "version": "1", "state": "READY", "reason": ""}]
    assert normalize_index({"models": [row]}) == expected  # gRPC
    assert normalize_index([row]) == expected  # HTTP
