"""Request traces: tritonserver's options, reading Triton's trace files, and
`pinrank trace` on the traces of a real `pinrank serve --trace-file`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pinrank.cli import main
from pinrank.serving.trace import TraceError, read_spans, request_timings, trace_args, trace_files
from pinrank.serving.tritonserver import Ports, TritonServer
from pinrank_client import RankingClient
from testkit.serve_process import ServeProcess

MS = 1_000_000


def stamps(trace_id: int, **at_ms: float) -> list[dict]:
    return [{"id": trace_id, "timestamps": [{"name": name, "ns": int(ms * MS)}]} for name, ms in at_ms.items()]


def write_request(path: Path, root: int, t0: float) -> None:
    """One ensemble request as Triton 2.51 writes it: three steps, then the ensemble."""
    records: list[dict] = []
    for offset, (sid, model) in enumerate(((root + 1, "preprocess"), (root + 2, "ranker"), (root + 3, "postprocess"))):
        s = t0 + 10 * offset
        records += [{"id": sid, "model_name": model, "model_version": 1, "parent_id": root},
                    *stamps(sid, REQUEST_START=s, QUEUE_START=s + 0.1, COMPUTE_START=s + 0.5,
                            COMPUTE_INPUT_END=s + 1, COMPUTE_OUTPUT_START=s + 7, COMPUTE_END=s + 8,
                            REQUEST_END=s + 8.2)]
    records += [{"id": root, "model_name": "pinrank", "model_version": 1},
                *stamps(root, REQUEST_START=t0 - 1, REQUEST_END=t0 + 29)]
    path.write_text(json.dumps(records))


def test_server_options():
    args = trace_args(Path("/tmp/t.json"), 10)
    assert "--trace-config=triton,file=/tmp/t.json" in args and "--trace-config=rate=10" in args
    assert "--trace-config=level=TIMESTAMPS" in args and "--trace-config=triton,log-frequency=1" in args
    with pytest.raises(ValueError):
        trace_args(Path("/tmp/t.json"), 0)
    cmd = TritonServer(Path("/tmp/r"), Ports(1, 2, 3), admin_key="k" * 32, log_verbose=1,
                       trace_file=Path("/tmp/t.json"), trace_rate=3).command()
    assert "--log-verbose=1" in cmd and "--trace-config=rate=3" in cmd
    assert not any(a.startswith(("--log-verbose", "--trace-config")) for a in
                   TritonServer(Path("/tmp/r"), Ports(1, 2, 3), admin_key="k" * 32).command())


def test_per_step_timings_of_each_request(tmp_path):
    write_request(tmp_path / "t.json.1", root=5, t0=2000)
    write_request(tmp_path / "t.json.0", root=1, t0=1000)
    files = trace_files(tmp_path / "t.json")
    assert [f.name for f in files] == ["t.json.0", "t.json.1"]
    first, second = request_timings(read_spans(files))
    assert (first.trace_id, second.trace_id) == (1, 5)
    assert first.model == "pinrank" and first.total_ms == pytest.approx(30)
    assert [s.model for s in first.steps] == ["preprocess", "ranker", "postprocess"]
    pre = first.steps[0]
    assert (pre.start_ms, pre.queue_ms, pre.input_ms, pre.infer_ms, pre.output_ms, pre.compute_ms) == pytest.approx(
        (1.0, 0.4, 0.5, 6.0, 1.0, 7.5))
    assert [s.start_ms for s in first.steps] == pytest.approx([1.0, 11.0, 21.0])


def test_unreadable_traces_say_what_is_wrong(tmp_path):
    with pytest.raises(TraceError, match="no trace file"):
        trace_files(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TraceError, match="not a Triton trace file"):
        read_spans([tmp_path / "bad.json"])
    (tmp_path / "noid.json").write_text('[{"model_name": "x"}]')
    with pytest.raises(TraceError, match="without an integer id"):
        read_spans([tmp_path / "noid.json"])
    result = CliRunner().invoke(main, ["trace", str(tmp_path / "bad.json")])
    assert result.exit_code == 1 and "not a Triton trace file" in result.output


@pytest.mark.triton
@pytest.mark.slow
def test_serve_traces_requests_and_pinrank_trace_prints_their_steps(pipeline, tmp_path):
    trace = tmp_path / "trace.json"
    with ServeProcess(pipeline.repository / "cpu", tmp_path / "serve", model_control=None,
                      extra_args=("--trace-file", str(trace), "--log-verbose", "1")) as serve:
        with RankingClient(serve.grpc_url, protocol="grpc") as client:
            for _ in range(3):
                client.rank(user_id=1, candidate_ids=[3, 1, 2, 5, 8], top_k=2)
        assert "trace   every 1 request(s)" in serve.log_text()
    result = CliRunner().invoke(main, ["trace", str(trace), "--last", "2"])
    assert result.exit_code == 0, result.output
    # the health view's canary requests are traced too
    assert int(result.output.split(" traced request(s)")[0]) >= 3 and result.output.count("\nrequest ") == 2
    for step in ("preprocess", "ranker", "postprocess"):
        assert step in result.output
    timings = json.loads(CliRunner().invoke(main, ["trace", str(trace), "--json"]).output)
    assert all(t["total_ms"] > 0 and len(t["steps"]) == 3 for t in timings)
    # --log-verbose 1: Triton logs each request's scheduling (infer_request.cc)
    assert "infer_request.cc" in (tmp_path / "serve" / "tritonserver.log").read_text()
