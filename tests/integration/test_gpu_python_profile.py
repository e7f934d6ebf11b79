"""The gpu profile's Python-backend ranker (`pinrank export --gpu-backend
python`) through the real bundled server. Without a GPU, `pinrank serve
--model-config-name cpu` loads the same repository and model.py on KIND_CPU,
and its answers equal the cpu profile's; on a GPU (marker `gpu`) the
KIND_GPU config itself is served and checked the same way."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pinrank.cli import main
from pinrank.data.dataset import load_dataset
from pinrank.serving.tritonserver import gpu_present
from pinrank_client import RankingClient, RankRequest, schema
from testkit.serve_process import ServeProcess

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu_repository(pipeline, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("gpu_python")
    result = CliRunner().invoke(main, [
        "export", "--ranker", str(pipeline.ranker), "--snapshot", str(pipeline.snapshot), "--data",
        str(pipeline.data), "--out", str(out), "--target", "gpu", "--gpu-backend", "python",
        "--formats", "torchscript", "--results", str(out / "export.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "gpu"


def requests(pipeline, count: int = 12) -> list[RankRequest]:
    """Replayed moments of the log: a user's real history before a time, 50-400 candidates."""
    ds = load_dataset(pipeline.data)
    rng = np.random.default_rng(3)
    acts = ds.actions
    out = []
    for row in rng.choice(len(acts["user_id"]), size=count, replace=False):
        user, ts = int(acts["user_id"][row]), int(acts["ts_ms"][row])
        mine = np.flatnonzero((acts["user_id"] == user) & (acts["ts_ms"] <= ts))[-schema.REALTIME_SEQ_LEN:]
        n = int(rng.integers(50, 400))
        out.append(RankRequest.from_arrays(
            user, rng.choice(ds.item_ids, size=n, replace=False), action_item_ids=acts["item_id"][mine],
            action_types=acts["action"][mine], action_ts_ms=acts["ts_ms"][mine],
            action_surfaces=acts["surface"][mine], request_ts_ms=ts + 1000, top_k=n))
    return out


def scores(url: str, reqs: list[RankRequest], protocol: str) -> list[dict[int, float]]:
    with RankingClient(url, protocol=protocol, timeout_s=60) as client:
        return [{it.item_id: it.utility for it in client.rank_request(r).items} for r in reqs]


def assert_same_answers(got: list[dict[int, float]], want: list[dict[int, float]]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        # Both rankers passed the export's 1e-4 parity gate against the same eager model.
        np.testing.assert_allclose([g[k] for k in w], list(w.values()), rtol=0, atol=2e-4)


@pytest.mark.skipif(gpu_present(), reason="the no-GPU path; the gpu-marked test covers this machine")
def test_serving_the_gpu_profile_without_a_gpu_names_the_cpu_variant(gpu_repository):
    result = CliRunner().invoke(main, ["serve", "--repository", str(gpu_repository), "--health-port", "0"])
    assert result.exit_code != 0
    assert "no NVIDIA GPU" in result.output and "--model-config-name cpu" in result.output


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cpu_variant_serves_the_same_answers_as_the_cpu_profile(pipeline, triton_server, gpu_repository,
                                                                tmp_path, protocol):
    reqs = requests(pipeline)
    want = scores(triton_server.grpc_url if protocol == "grpc" else triton_server.http_url, reqs, protocol)
    with ServeProcess(gpu_repository, tmp_path, model_control=None,
                      extra_args=("--model-config-name", "cpu")) as serve:
        got = scores(serve.grpc_url if protocol == "grpc" else serve.http_url, reqs, protocol)
    assert_same_answers(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU")
def test_kind_gpu_serves_the_same_answers_as_the_cpu_profile(pipeline, triton_server, gpu_repository, tmp_path):
    reqs = requests(pipeline)
    want = scores(triton_server.grpc_url, reqs, "grpc")
    with ServeProcess(gpu_repository, tmp_path, model_control=None) as serve:
        assert_same_answers(scores(serve.grpc_url, reqs, "grpc"), want)
