"""The load runner end to end: a server from an untrained export, locust for a few seconds."""

from __future__ import annotations

import json

import pytest
from bench import main as bench
from click.testing import CliRunner
from run_loadtest import main as run_loadtest

from pinrank.cli import main as pinrank
from testkit.export_inputs import (
    make_export_inputs,  # tests/ is on sys.path via tests/conftest.py
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_runner_starts_a_server_and_reports(tmp_path):
    inputs = make_export_inputs(tmp_path / "inputs", num_items=300, num_users=60)
    exported = CliRunner().invoke(pinrank, ["export", *inputs.cli_args(), "--out", str(tmp_path / "repo"),
                                            "--target", "cpu", "--results", str(tmp_path / "export.json")])
    assert exported.exit_code == 0, exported.output
    out = tmp_path / "results"
    result = CliRunner().invoke(run_loadtest, [
        "--repository", str(tmp_path / "repo" / "cpu"), "--data", str(inputs.data), "--users", "2",
        "--sweep-duration", "5", "--duration", "0", "--pool-size", "50", "--warmup", "3",
        "--max-failure-ratio", "0", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "loadtest.json").read_text())
    for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "failures", "users", "duration_s"):
        assert key in report, key
    assert report["failures"] == 0 and report["requests"] > 0 and report["users"] == 2
    assert report["slo"]["passed"]
    assert (out / "loadtest.png").exists() and (out / "loadtest" / "u2.html").exists()


def test_bench_compares_both_layouts_and_writes_the_headline_keys(tmp_path):
    inputs = make_export_inputs(tmp_path / "inputs", num_items=300, num_users=60)
    exported = CliRunner().invoke(pinrank, ["export", *inputs.cli_args(), "--out", str(tmp_path / "repo"),
                                            "--target", "cpu", "--results", str(tmp_path / "export.json")])
    assert exported.exit_code == 0, exported.output
    out = tmp_path / "results" / "bench.json"
    result = CliRunner().invoke(bench, [
        "--repository", str(tmp_path / "repo" / "cpu"), "--ranker", str(inputs.ranker), "--data", str(inputs.data),
        "--candidates", "50", "--actions", "20", "--requests", "10", "--warmup", "2", "--skip", "fusion",
        "--configs", "1:1:1", "--single-instances", "1", "--throughput-users", "1", "--throughput-duration", "3",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    by_layout = report["triton_over_inprocess_p50_by_layout"]
    assert set(by_layout) == {"ensemble", "single"} and all(v > 0 for v in by_layout.values())
    assert report["triton_over_inprocess_p50"] == min(by_layout.values())
    assert 0 < report["preprocess_share"] < 1
    assert set(report["throughput"]["configs"]) == {"pre1-ranker1-post1", "single1"}
    assert report["throughput_rps"] > 0
