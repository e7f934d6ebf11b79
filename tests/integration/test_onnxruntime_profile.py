"""The cpu profile exported with `--cpu-runtime onnxruntime`, served by the real
tritonserver in both layouts (`--pipeline ensemble|single`): the ranker runs
ranker.onnx in ONNX Runtime inside the Python backend, and what is served
must match the eager pipeline within 1e-4.

Export inputs are untrained (tests/export_inputs.py): parity, not quality,
is under test, and no training run is needed."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import request_cases  # tests/ is on sys.path via tests/conftest.py
import tritonclient.http as httpclient
from click.testing import CliRunner
from request_cases import make_request
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.backend.preprocess import Preprocessor
from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.export.inprocess import InProcessRanker
from pinrank.models.ranker import load_serving_module
from pinrank.repository.pbtxt import parse_pbtxt
from pinrank.serving.tritonserver import running_server
from pinrank_client._triton import build_inputs, read_outputs
from testkit.export_inputs import make_export_inputs
from testkit.toy_data import START_MS

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQ_TS = START_MS + 50 * MS_PER_DAY  # inside the toy dataset's span


@pytest.fixture(scope="module", params=["ensemble", "single"])
def ort_profile(tmp_path_factory, request):
    root = tmp_path_factory.mktemp(f"ort_profile_{request.param}")
    inputs = make_export_inputs(root / "inputs", num_items=300, num_users=60)
    args = ["export", *inputs.cli_args(), "--out", str(root / "repo"), "--target", "cpu",
            "--cpu-runtime", "onnxruntime", "--pipeline", request.param, "--results", str(root / "export.json")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, inputs


@pytest.fixture(scope="module")
def ort_server(ort_profile):
    root, _ = ort_profile
    with running_server(root / "repo" / "cpu", log_path=root / "tritonserver.log") as server:
        yield server


@pytest.fixture(scope="module")
def reference(ort_profile):
    """preprocess -> eager ranker -> postprocess on the artifacts the server loaded."""
    root, inputs = ort_profile
    return InProcessRanker(Preprocessor.from_dir(_artifacts_model(root) / "1" / "artifacts"),
                           load_serving_module(inputs.ranker))


def _artifacts_model(root):
    """Where the vocabulary, snapshot and ranker files live: the step models, or the single model."""
    single = not (root / "repo" / "cpu" / schema.PREPROCESS_MODEL).exists()
    return root / "repo" / "cpu" / (schema.ENSEMBLE_MODEL if single else schema.PREPROCESS_MODEL)


def test_the_ranker_runs_onnxruntime(ort_profile):
    root, _ = ort_profile
    model = _artifacts_model(root)
    if model.name == schema.PREPROCESS_MODEL:
        model = model.parent / schema.RANKER_MODEL
    cfg = parse_pbtxt((model / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.parameters["RUNTIME"].string_value == "onnxruntime"
    version = model / "1"
    assert (version / "ranker.onnx").stat().st_size > 0
    assert "load_exported_ranker" in (version / "model.py").read_text()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["ranker_runtime"] == "onnxruntime" and "onnx" in manifest["formats"]
    assert manifest["parity"]["onnx"]["passed"]


def _request(rng: np.random.Generator, preprocessor, **kw) -> dict[str, np.ndarray]:
    return make_request(preprocessor.vocab.item_ids, preprocessor.snapshot.user_ids, rng, REQ_TS, **kw)


CASES = {k: v for k, v in request_cases.CASES.items() if k != "default_top_k"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnxruntime_ensemble_matches_eager(ort_server, reference, case):
    req = _request(np.random.default_rng(zlib.crc32(case.encode())), reference.pre, **CASES[case])
    client = httpclient.InferenceServerClient(ort_server.http_url)
    served = read_outputs(client.infer(schema.ENSEMBLE_MODEL, build_inputs(httpclient, req)))
    expected = reference.rank(req)
    request_cases.assert_same_ranking(served, expected, int(req["top_k"][0]))


def test_bad_request_gets_a_clear_error_and_the_server_stays_ready(ort_server, reference):
    req = _request(np.random.default_rng(1), reference.pre)
    req["action_types"] = req["action_types"][:-1]  # lengths disagree
    client = httpclient.InferenceServerClient(ort_server.http_url)
    with pytest.raises(InferenceServerException, match="action arrays must have equal lengths"):
        client.infer(schema.ENSEMBLE_MODEL, build_inputs(httpclient, req))
    assert client.is_server_ready() and client.is_model_ready(schema.ENSEMBLE_MODEL)
