"""Triton's perf_analyzer as a cross-check: installed from the tritonclient
2.51.0 wheel, it measures a default `pinrank serve` (no admin key) on
replayed requests over both protocols, with per-step server statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from perf_analyzer import PerfAnalyzerError, cross_check, input_data, parse_csv
from request_pool import pool_from_dataset

from pinrank.backend import schema
from testkit.serve_process import ServeProcess


def test_input_data_replays_each_request_with_its_own_shapes(pipeline):
    pool = pool_from_dataset(pipeline.data, 5)
    doc = json.loads(json.dumps(input_data(pool, 3, top_k=7)))
    assert len(doc["data"]) == 3
    for i, step in enumerate(doc["data"]):
        arrays = pool.arrays(i, 7)
        assert set(step) == set(arrays) == {spec.name for spec in schema.REQUEST_INPUTS}
        for name, arr in arrays.items():
            assert step[name]["shape"] == list(arr.shape)
            np.testing.assert_array_equal(np.asarray(step[name]["content"], np.int64).reshape(arr.shape), arr)


@pytest.mark.parametrize("text", ["", "Concurrency,Inferences/Second\n1,2\n", "a,b\nx,y\n"])
def test_unexpected_output_is_an_error_not_a_figure(text):
    with pytest.raises(PerfAnalyzerError):
        parse_csv(text)


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_the_served_ensemble(pipeline, tmp_path, protocol):
    pool = pool_from_dataset(pipeline.data, 20)
    with ServeProcess(pipeline.repository / "cpu", tmp_path / "serve", model_control=None) as serve:
        url = serve.grpc_url if protocol == "grpc" else serve.http_url
        report = cross_check(url, pool, [1, 2], tmp_path / "pa", protocol=protocol, requests=20,
                             measurement_ms=1000)
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for lv in report["levels"]:
        assert lv["throughput_rps"] > 0 and 0 < lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"]
        # The ensemble's composing models, as perf_analyzer read them from the statistics API.
        assert set(lv["steps"]) == {schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL}
        assert all(step["request_ms"] > 0 for step in lv["steps"].values())
