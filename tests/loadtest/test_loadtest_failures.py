"""The load test fails loudly when nothing succeeds: a wrong port (Triton's gRPC
port given as the HTTP URL), through the runner and through a plain locust run,
and locust's exit code applies the same SLO gate as the runner."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_loadtest import main as run_loadtest
from slo import MAX_FAILURE_RATIO_ENV, MAX_P99_ENV

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def plain_locust(host: str, data: Path, out: Path, seconds: int = 3, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
           "-u", "1", "-r", "1", "-t", f"{seconds}s", "--host", host, "--csv", str(out), "--only-summary"]
    clean = {k: v for k, v in os.environ.items() if k not in (MAX_P99_ENV, MAX_FAILURE_RATIO_ENV)}
    return subprocess.run(cmd, cwd=ROOT, env={**clean, "PINRANK_DATA": str(data), **env}, capture_output=True,
                          text=True, timeout=120)


def aggregated(stats_csv: Path) -> dict[str, str]:
    with open(stats_csv, newline="") as f:
        return next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")


def test_runner_refuses_the_grpc_port(pipeline, triton_server, tmp_path):
    result = CliRunner().invoke(run_loadtest, [
        "--url", triton_server.grpc_url, "--data", str(pipeline.data), "--users", "1", "--sweep-duration", "2",
        "--duration", "0", "--pool-size", "20", "--warmup", "0", "--out-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "does not answer as a pinrank server over HTTP" in result.output, result.output
    assert not (tmp_path / "loadtest.json").exists()  # no report of a run that measured nothing


def test_plain_locust_counts_every_exception_and_exits_1_when_nothing_succeeds(pipeline, triton_server, tmp_path):
    run = plain_locust(f"http://{triton_server.grpc_url}", pipeline.data, tmp_path / "wrong")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "SLO gate failed: no request succeeded" in run.stderr, run.stderr[-3000:]
    row = aggregated(tmp_path / "wrong_stats.csv")
    assert int(row["Request Count"]) > 0 and row["Failure Count"] == row["Request Count"]


def test_plain_locust_applies_the_gates(pipeline, triton_server, tmp_path):
    url = f"http://{triton_server.http_url}"
    ok = plain_locust(url, pipeline.data, tmp_path / "ok", **{MAX_FAILURE_RATIO_ENV: "0"})
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert int(aggregated(tmp_path / "ok_stats.csv")["Failure Count"]) == 0
    strict = plain_locust(url, pipeline.data, tmp_path / "strict", **{MAX_P99_ENV: "0.001"})
    assert strict.returncode == 1 and "SLO gate failed: p99" in strict.stderr, strict.stderr[-3000:]
