"""Standard Triton tools against a default `pinrank serve` (no admin key):
tritonclient's generic calls and PyTriton's ModelClient work, reading the
model config as they do first, while the APIs that change the server stay
behind the key (docs/security.md)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pytriton.client import ModelClient
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from testkit.serve_process import ServeProcess
from testkit.toy_data import START_MS

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQUEST = {
    "user_id": np.array([1], np.int64),
    "candidate_ids": np.array([7, 14, 21, 28], np.int64),
    "action_item_ids": np.array([7], np.int64),
    "action_types": np.array([schema.ACTION_IDS["click"]], np.int64),
    "action_surfaces": np.array([0], np.int64),
    "action_ts_ms": np.array([START_MS + 1_000], np.int64),
    "request_ts_ms": np.array([START_MS + 60_000], np.int64),
    "top_k": np.array([2], np.int64),
}


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory: pytest.TempPathFactory):
    # model_control=None: the CLI's default, as a user starts it.
    with ServeProcess(pipeline.repository / "cpu", tmp_path_factory.mktemp("tools"), model_control=None) as serve:
        yield serve


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_generic_tritonclient_calls_work_without_the_key(served, protocol):
    module, url = (httpclient, served.http_url) if protocol == "http" else (grpcclient, served.grpc_url)
    client = module.InferenceServerClient(url)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("pinrank")
        assert client.get_server_metadata()
        config = client.get_model_config("pinrank")  # what perf_analyzer and PyTriton read first
        config = config if protocol == "http" else {"platform": config.config.platform}
        assert config["platform"] == "ensemble"
        assert client.get_model_metadata("pinrank") and client.get_inference_statistics("pinrank")
        inputs = []
        for name, arr in REQUEST.items():
            inp = module.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = client.infer("pinrank", inputs)
        assert result.as_numpy("item_ids").shape == (2,)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_closed_apis_stay_closed(served, protocol):
    module, url = (httpclient, served.http_url) if protocol == "http" else (grpcclient, served.grpc_url)
    client = module.InferenceServerClient(url)
    try:
        for call in (lambda: client.get_model_repository_index(), lambda: client.unload_model("ranker"),
                     lambda: client.get_system_shared_memory_status(), lambda: client.get_trace_settings(),
                     lambda: client.update_log_settings({"log_verbose_level": 1})):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        assert client.is_model_ready("ranker")
    finally:
        client.close()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_pytriton_model_client_ranks(served, scheme):
    url = f"http://{served.http_url}" if scheme == "http" else f"grpc://{served.grpc_url}"
    with ModelClient(url, "pinrank", init_timeout_s=60, inference_timeout_s=60) as client:
        out = client.infer_sample(**REQUEST)
    assert out["item_ids"].shape == (2,) and set(out["item_ids"]) <= set(REQUEST["candidate_ids"])
    assert np.all(np.diff(out["scores"]) <= 0)
