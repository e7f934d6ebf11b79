"""The load runner's pure parts: locust CSV parsing, level choice, SLO gate, report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import click
import numpy as np
import pytest
from request_pool import build_pool
from run_loadtest import (
    LevelStats,
    best_level,
    first_failure,
    parse_instances,
    parse_users,
    plot,
    read_locust_stats,
    slo_violations,
    summary,
    with_instances,
)
from slo import MAX_FAILURE_RATIO_ENV, MAX_P99_ENV, gates_from_env

from pinrank.backend import schema
from pinrank.export.configs import profile_configs
from pinrank.repository.pbtxt import parse_pbtxt, to_pbtxt

# The header locust 2.x writes in <prefix>_stats.csv.
HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
          "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
          "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def write_stats(path: Path, rows: list[dict[str, object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, HEADER)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, 0) for k in HEADER})
    return path


def level(users: int, rps: float, failures: int = 0, p99: float = 50.0) -> LevelStats:
    return LevelStats(users=users, duration_s=10, requests=100, failures=failures, rps=rps, p50_ms=10,
                      p95_ms=30, p99_ms=p99, max_ms=80, mean_ms=12)


def test_reads_the_aggregated_row(tmp_path):
    stats = write_stats(tmp_path / "u4_stats.csv", [
        {"Type": "triton-http", "Name": "rank N=100-299", "Request Count": 40, "50%": 5, "99%": 9},
        {"Type": "", "Name": "Aggregated", "Request Count": 120, "Failure Count": 2, "Requests/s": 11.5,
         "50%": 12, "95%": 40, "99%": 70, "Max Response Time": 95.5, "Average Response Time": 15.25},
    ])
    lv = read_locust_stats(stats, users=4, duration_s=10)
    assert (lv.requests, lv.failures, lv.rps, lv.p50_ms, lv.p95_ms, lv.p99_ms) == (120, 2, 11.5, 12, 40, 70)
    assert lv.max_ms == 95.5 and lv.mean_ms == 15.25
    assert lv.failure_ratio == pytest.approx(2 / 120)


def test_na_percentiles_and_missing_aggregate(tmp_path):
    stats = write_stats(tmp_path / "a_stats.csv", [{"Name": "Aggregated", "50%": "N/A", "99%": "N/A"}])
    lv = read_locust_stats(stats, 1, 1)
    assert lv.requests == 0 and math.isnan(lv.p99_ms) and lv.failure_ratio == 1.0
    with pytest.raises(click.ClickException, match="no Aggregated row"):
        read_locust_stats(write_stats(tmp_path / "b_stats.csv", [{"Name": "rank"}]), 1, 1)


def test_best_level_prefers_clean_levels():
    assert best_level([level(1, 10), level(2, 30), level(4, 50, failures=1)]).users == 2
    assert best_level([level(1, 10, failures=3), level(2, 20, failures=1)]).users == 2


def test_slo_gate():
    ok = level(2, 30, p99=80)
    assert slo_violations(ok, None, None) == []
    assert slo_violations(ok, max_p99_ms=100, max_failure_ratio=0) == []
    bad = level(2, 30, failures=5, p99=120)
    v = slo_violations(bad, max_p99_ms=100, max_failure_ratio=0.01)
    assert len(v) == 2 and "p99 120.0 ms > 100 ms" in v[0] and "5/100" in v[1]
    nan_p99 = level(1, 0, p99=float("nan"))
    assert slo_violations(nan_p99, 100, None)  # no figure is not a pass


def test_parse_users():
    assert parse_users(None, None, "4, 1,2,2") == [1, 2, 4]  # type: ignore[arg-type]
    for bad in ("", "0,1", "a"):
        with pytest.raises(click.BadParameter):
            parse_users(None, None, bad)  # type: ignore[arg-type]


def test_summary_and_chart(tmp_path):
    rng = np.random.default_rng(0)
    actions = {"user_id": rng.integers(0, 5, 200), "item_id": rng.integers(0, 50, 200),
               "action": rng.integers(1, 3, 200), "surface": rng.integers(0, 2, 200),
               "ts_ms": 1_767_000_000_000 + rng.integers(0, 10**9, 200)}
    pool = build_pool(actions, np.arange(50), 30, seed=1)
    levels = [level(1, 10), level(2, 18)]
    report = summary(levels[1], levels, "http://x", pool)
    for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "failures", "users", "duration_s", "levels"):
        assert key in report
    assert report["users"] == 2 and report["requests_pool"]["size"] == 30
    json.dumps(report)
    assert plot(levels, tmp_path / "c.png").stat().st_size > 1000
    assert plot(levels[:1], tmp_path / "one.png", final=level(1, 12)).stat().st_size > 1000  # one level + final


def test_instances_option_and_repository_copy(tmp_path):
    assert parse_instances(None, None, "1:2:1,2:2:1") == [(1, 2, 1), (2, 2, 1)]  # type: ignore[arg-type]
    assert parse_instances(None, None, None) == []  # type: ignore[arg-type]
    for bad in ("1:2", "0:1:1", "a:b:c"):
        with pytest.raises(click.BadParameter):
            parse_instances(None, None, bad)  # type: ignore[arg-type]
    src = tmp_path / "src"
    for name, cfg in profile_configs("cpu").items():
        (src / name).mkdir(parents=True)
        (src / name / "config.pbtxt").write_text(to_pbtxt(cfg))
    dst = with_instances(src, tmp_path / "dst", {schema.RANKER_MODEL: 3, schema.PREPROCESS_MODEL: 3})
    count = lambda root, m: parse_pbtxt((root / m / "config.pbtxt").read_text()).instance_group[0].count  # noqa: E731
    assert count(dst, schema.RANKER_MODEL) == 3 and count(dst, schema.PREPROCESS_MODEL) == 3
    # Untouched models keep their counts, and the source repository is not modified.
    assert count(dst, schema.POSTPROCESS_MODEL) == count(src, schema.POSTPROCESS_MODEL)
    assert count(src, schema.RANKER_MODEL) == profile_configs("cpu")[schema.RANKER_MODEL].instance_group[0].count != 3


def test_task_errors_count_as_failed_requests(tmp_path):
    stats = write_stats(tmp_path / "u1_stats.csv", [
        {"Name": "Aggregated", "Request Count": 10, "Failure Count": 1, "50%": 5, "99%": 9}])
    (tmp_path / "u1_exceptions.csv").write_text(
        "Count,Message,Traceback,Nodes\n177,ConnectionResetError(104),tb,local\n3,ValueError(x),tb,local\n")
    lv = read_locust_stats(stats, users=1, duration_s=5)
    assert (lv.requests, lv.failures) == (190, 181)
    assert first_failure(tmp_path / "u1").startswith("ConnectionResetError")


def test_a_run_without_success_fails_whatever_the_gates():
    assert slo_violations(level(1, 0, failures=100), None, None) == ["no request succeeded (100/100 failed)"]
    nothing = LevelStats(users=1, duration_s=5, requests=0, failures=0, rps=0, p50_ms=float("nan"),
                         p95_ms=float("nan"), p99_ms=float("nan"), max_ms=float("nan"), mean_ms=float("nan"))
    assert "no request was sent" in slo_violations(nothing, None, None)[0]


def test_gates_from_the_environment():
    assert gates_from_env({}) == {"max_p99_ms": None, "max_failure_ratio": None}
    assert gates_from_env({MAX_P99_ENV: "250", MAX_FAILURE_RATIO_ENV: "0"}) == {"max_p99_ms": 250.0,
                                                                                "max_failure_ratio": 0.0}
    with pytest.raises(ValueError, match=MAX_P99_ENV):
        gates_from_env({MAX_P99_ENV: "fast"})
