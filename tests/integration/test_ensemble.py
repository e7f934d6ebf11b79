"""The served ensemble against the in-process eager pipeline, over gRPC and HTTP."""

from __future__ import annotations

import json
import urllib.request
import zlib

import numpy as np
import pytest
import request_cases  # tests/ is on sys.path via tests/conftest.py
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.backend.preprocess import Preprocessor
from pinrank.data.dataset import load_dataset
from pinrank.export.inprocess import InProcessRanker
from pinrank.models.ranker import load_serving_module
from pinrank_client import RankingClient, RankRequest
from pinrank_client._triton import build_inputs, read_outputs

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQ_TS = 1_769_990_400_000  # inside the synthetic eval period


@pytest.fixture(scope="module")
def reference(pipeline):
    """preprocess -> eager ranker -> postprocess on the exact artifacts the server loaded."""
    versions = sorted((pipeline.repository / "cpu" / "preprocess").glob("[0-9]*"), key=lambda p: int(p.name))
    return InProcessRanker(Preprocessor.from_dir(versions[-1] / "artifacts"), load_serving_module(pipeline.ranker))


@pytest.fixture(scope="module")
def catalogue(pipeline):
    ds = load_dataset(pipeline.data)
    return ds


def make_request(ds, rng, **kw):
    return request_cases.make_request(ds.item_ids, np.unique(ds.actions["user_id"]), rng, REQ_TS, **kw)


def infer_raw(module, url, req):
    """Plain tritonclient (no SDK validation), so the server's own checks are what's tested."""
    result = module.InferenceServerClient(url).infer(schema.ENSEMBLE_MODEL, build_inputs(module, req))
    return read_outputs(result)


CASES = request_cases.CASES


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_ensemble_matches_eager_pipeline(triton_server, reference, catalogue, protocol, case):
    rng = np.random.default_rng(zlib.crc32(f"{case}/{protocol}".encode()))
    req = make_request(catalogue, rng, **CASES[case])
    module, url = (grpcclient, triton_server.grpc_url) if protocol == "grpc" else (httpclient, triton_server.http_url)
    served = infer_raw(module, url, req)
    expected = reference.rank(req)
    k = int(req["top_k"][0]) if "top_k" in req else min(schema.DEFAULT_TOP_K, req["candidate_ids"].size)
    request_cases.assert_same_ranking(served, expected, k)


BAD = {
    "empty candidates": ({"candidate_ids": np.zeros(0, np.int64)}, "candidate_ids is empty"),
    "too many candidates": ({"candidate_ids": np.arange(schema.MAX_CANDIDATES + 1)}, "too many candidates"),
    "unequal action lengths": ({"action_types": np.ones(3, np.int64)}, "equal lengths"),
    "unknown action type": ({"action_types": np.full(50, 42, np.int64)}, "action_types holds 42"),
    "future actions": ({"action_ts_ms": np.full(50, REQ_TS + 86_400_000, np.int64)}, "after request_ts_ms"),
    # Triton's own shape check answers this one before preprocess runs.
    "two user ids": ({"user_id": np.array([1, 2], np.int64)}, "unexpected shape for input 'user_id'"),
    "too many actions": (
        {k: np.ones(schema.MAX_REQUEST_ACTIONS + 1, np.int64) for k in
         ("action_item_ids", "action_types", "action_surfaces")}
        | {"action_ts_ms": np.full(schema.MAX_REQUEST_ACTIONS + 1, REQ_TS - 1, np.int64)},
        "too many actions",
    ),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_rejected_clearly_and_server_stays_up(triton_server, catalogue, protocol, case):
    req = make_request(catalogue, np.random.default_rng(1))
    over, message = BAD[case]
    req.update(over)
    module, url = (grpcclient, triton_server.grpc_url) if protocol == "grpc" else (httpclient, triton_server.http_url)
    with pytest.raises(InferenceServerException) as err:
        infer_raw(module, url, req)
    assert message in str(err.value)
    assert str(err.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400")
    assert triton_server.is_ready()
    ok = infer_raw(module, url, make_request(catalogue, np.random.default_rng(2)))
    assert ok["item_ids"].size == 10


def test_sdk_ranks_through_the_server(triton_server, reference, catalogue):
    req = make_request(catalogue, np.random.default_rng(3), top_k=5)
    for url, protocol in ((triton_server.grpc_url, "grpc"), (triton_server.http_url, "http")):
        with RankingClient(url, protocol=protocol) as client:
            resp = client.rank_request(RankRequest.from_arrays(
                int(req["user_id"][0]), req["candidate_ids"], action_item_ids=req["action_item_ids"],
                action_types=req["action_types"], action_ts_ms=req["action_ts_ms"],
                action_surfaces=req["action_surfaces"], request_ts_ms=int(req["request_ts_ms"][0]), top_k=5))
        expected = reference.rank(req)
        assert [it.item_id for it in resp.items] == expected["item_ids"].tolist()
        assert np.allclose([it.utility for it in resp.items], expected["scores"], atol=1e-4)
        assert set(resp.items[0].head_probs) == set(schema.HEADS)
        assert resp.latency_ms > 0


def test_unknown_ids_are_counted_in_metrics(triton_server, catalogue):
    def counter(name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{triton_server.ports.metrics}/metrics").read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    before = counter("pinrank_unknown_items_total"), counter("pinrank_unknown_users_total")
    infer_raw(httpclient, triton_server.http_url,
              make_request(catalogue, np.random.default_rng(4), known_user=False, unknown_items=7))
    after = counter("pinrank_unknown_items_total"), counter("pinrank_unknown_users_total")
    assert after[0] - before[0] == 7
    assert after[1] - before[1] == 1


def test_export_report(pipeline):
    report = json.loads(pipeline.export_report.read_text())
    assert report["configs_valid"] is True
    ts = report["formats"]["torchscript"]
    assert ts["passed"] and max(ts["max_abs_diff"]["probs"].values()) <= 1e-4
    assert "skipped" in report["formats"]["tensorrt"]
    manifest = report["manifest"]
    assert len(manifest["source_checkpoint_sha256"]) == 64
    for profile in ("cpu", "gpu"):
        assert (pipeline.repository / profile / "pinrank" / "config.pbtxt").exists()
