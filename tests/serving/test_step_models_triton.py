"""Issue 16 rows 6 and 7 against the real tritonserver: each step model,
called directly, refuses bad input with a 400 naming the input, and valid
requests are still served afterwards.

The server serves an untrained export of the reliability fixtures (a tiny
synthetic dataset; built in seconds, no training).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.backend.ranker_runtime import manifest_num_items
from pinrank.backend.step_inputs import MAX_ABS_USER_EMB, MAX_AGE_H
from pinrank.serving.tritonserver import running_server
from reliability.bad_inputs.fixtures import Fixtures
from reliability.step_models import (
    bad_postprocess_inputs,
    bad_ranker_feeds,
    infer_binary,
    postprocess_inputs,
    ranker_feed,
)

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("step_models")
    repository = Fixtures(root / "fixtures").repository
    num_items = manifest_num_items(repository / schema.RANKER_MODEL / "1")
    with running_server(repository, log_path=root / "tritonserver.log") as srv:
        yield srv, num_items


def _infer(url: str, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return infer_binary(url, model, arrays)


def _refused(url: str, model: str, arrays: dict[str, np.ndarray]) -> str:
    """The error message of a request that must get a 400."""
    with pytest.raises(InferenceServerException) as info:
        _infer(url, model, arrays)
    assert str(info.value.status()) == "400", info.value
    return info.value.message()


def _json_infer(url: str, model: str, inputs: list[dict]) -> tuple[int, dict]:
    body = json.dumps({"inputs": inputs}).encode()
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _request_inputs() -> list[dict]:
    """A valid ensemble/preprocess request as JSON inputs."""
    def one(name: str, data: list[int]) -> dict:
        return {"name": name, "datatype": "INT64", "shape": [len(data)], "data": data}

    return [one("user_id", [5]), one("candidate_ids", [1, 2, 3]), one("action_item_ids", []),
            one("action_types", []), one("action_surfaces", []), one("action_ts_ms", []),
            one("request_ts_ms", [1_700_000_000_000])]


def test_ranker_refuses_each_bad_feed_naming_the_input_and_still_serves(server):
    srv, num_items = server
    unclear = []
    for case, feed, expected in bad_ranker_feeds(num_items):
        message = _refused(srv.http_url, schema.RANKER_MODEL, feed)
        if f"ranker: {expected}" not in message:
            unclear.append(f"{case}: {message}")
    assert not unclear, "\n".join(unclear)
    probs = _infer(srv.http_url, schema.RANKER_MODEL, ranker_feed())["probs"]
    assert probs.shape == (8, schema.NUM_HEADS) and np.isfinite(probs).all()
    # The edges of every accepted range are served, with finite probabilities.
    edge = {**ranker_feed(), "cand_idx": np.full(1, num_items),
            "user_emb": np.resize(np.float32([MAX_ABS_USER_EMB, -MAX_ABS_USER_EMB]), schema.USER_EMB_DIM),
            "seq_item_idx": np.full(schema.REALTIME_SEQ_LEN, num_items), "seq_age_h": np.full(
                schema.REALTIME_SEQ_LEN, MAX_AGE_H, np.float32), "context": np.ones(schema.CONTEXT_DIM, np.float32)}
    edge["seq_action"][:] = schema.NUM_ACTION_IDS - 1
    probs = _infer(srv.http_url, schema.RANKER_MODEL, edge)["probs"]
    assert probs.shape == (1, schema.NUM_HEADS) and np.isfinite(probs).all()
    assert srv.is_ready()


def test_postprocess_refuses_each_bad_input_naming_it_and_still_serves(server):
    srv, _ = server
    unclear = []
    for case, arrays, expected in bad_postprocess_inputs():
        message = _refused(srv.http_url, schema.POSTPROCESS_MODEL, arrays)
        if f"postprocess: {expected}" not in message:
            unclear.append(f"{case}: {message}")
    assert not unclear, "\n".join(unclear)
    out = _infer(srv.http_url, schema.POSTPROCESS_MODEL, postprocess_inputs(6, 3))
    assert out["item_ids"].shape == (3,) and np.all(np.diff(out["scores"]) <= 0)
    assert srv.is_ready()


def test_the_ensemble_still_serves_after_the_step_models_refused(server):
    srv, _ = server
    for _case, feed, _expected in bad_ranker_feeds(server[1])[:3]:
        _refused(srv.http_url, schema.RANKER_MODEL, feed)
    status, body = _json_infer(srv.http_url, schema.ENSEMBLE_MODEL, _request_inputs())
    assert status == 200, body
    assert {o["name"] for o in body["outputs"]} == {s.name for s in schema.RESPONSE_OUTPUTS}


def test_a_name_with_a_nul_is_truncated_by_triton_before_any_model_sees_it(server):
    """Where row 7 happens: Triton 2.51's frontend cuts an input name at NUL
    before the core sees it. Sent next to the real `user_id`, the core itself
    reports a duplicate `user_id`; our models only ever see the cut name."""
    srv, _ = server
    inputs = _request_inputs()
    status, body = _json_infer(srv.http_url, schema.PREPROCESS_MODEL,
                               [{**inputs[0], "name": "user_id\u0000zzz"}] + inputs)
    assert status == 400
    assert "input 'user_id' already exists" in body["error"]


@pytest.mark.xfail(strict=True, reason="upstream: Triton 2.51 truncates input names at NUL in its HTTP/gRPC "
                                       "frontends, so every model receives plain 'user_id' (docs/security.md)")
def test_a_name_with_a_nul_is_refused(server):
    srv, _ = server
    inputs = _request_inputs()
    renamed = [{**inputs[0], "name": "user_id\u0000zzz"}] + inputs[1:]
    status, body = _json_infer(srv.http_url, schema.ENSEMBLE_MODEL, renamed)
    assert status == 400, body
