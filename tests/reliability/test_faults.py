"""The fault-scenario helpers (fast) and `make reliability` end to end on
the real server with short phases (slow, triton)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.export.configs import ProfileSettings, ranker_config
from pinrank.repository.pbtxt import to_pbtxt
from pinrank.serving.model_control import pinned_config_json
from reliability import faults, hostile_phase
from reliability.run import run, verdict


def test_count_and_failures_by_window():
    out = [faults.Outcome(0.0, 0.1, "v1"), faults.Outcome(1.0, 1.1, "ServerUnavailableError"),
           faults.Outcome(2.0, 2.1, "v2"), faults.Outcome(2.5, 2.6, "other")]
    assert faults.count(out) == {"v1": 1, "ServerUnavailableError": 1, "v2": 1, "other": 1}
    assert faults.count(out, 1.0, 2.5) == {"ServerUnavailableError": 1, "v2": 1}
    assert faults.failures(faults.count(out)) == 1  # "other" is a wrong answer, not a failure


def test_rss_growth_ignores_warmup_and_needs_samples():
    flat = [(float(t), 100.0) for t in range(50)]
    assert faults.rss_growth_pct([(0.0, 10.0), *flat]) == pytest.approx(0.0)
    growing = [(float(t), 100.0 + t) for t in range(50)]
    assert faults.rss_growth_pct(growing) > 20
    with pytest.raises(ValueError, match="at least 10"):
        faults.rss_growth_pct(flat[:5])


def test_pinned_config_keeps_the_model_and_pins_one_version(tmp_path):
    (tmp_path / schema.RANKER_MODEL).mkdir()
    (tmp_path / schema.RANKER_MODEL / "config.pbtxt").write_text(to_pbtxt(ranker_config("cpu", ProfileSettings())))
    cfg = json.loads(pinned_config_json(tmp_path, schema.RANKER_MODEL, 3))
    assert cfg["name"] == schema.RANKER_MODEL
    assert cfg["version_policy"] == {"specific": {"versions": ["3"]}}  # int64 is a JSON string
    assert [i["name"] for i in cfg["input"]] == [s.name for s in schema.RANKER_INPUTS]


def test_classifier_labels_by_reference_scores():
    class Item:
        def __init__(self, score: float) -> None:
            self.utility = score

    class Response:
        def __init__(self, scores: list[float]) -> None:
            self.items = [Item(s) for s in scores]

    expected = {"v1": [{"scores": np.array([0.9, 0.5], np.float32)}]}
    classify = faults.classifier(expected)
    assert classify(0, Response([0.9, 0.5])) == "v1"
    assert classify(0, Response([0.8, 0.5])) == "other"
    expected["v2"] = [{"scores": np.array([0.8, 0.5], np.float32)}]
    assert classify(0, Response([0.8, 0.5])) == "v2"


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_reliability_end_to_end(tmp_path):
    report = run(tmp_path / "work", tmp_path / "reliability.json", soak_minutes=0.2, users=2, phase_s=1.5, reloads=5)
    assert json.loads((tmp_path / "reliability.json").read_text())["bad_inputs_total"] == report["bad_inputs_total"]
    assert report["bad_inputs_total"] >= 40
    assert verdict(report) == [], report
    # The hostile phase: every crash request sent, contained, the step models' refusals counted.
    assert report["crash_requests"] == len(hostile_phase.crash_requests()) == report["server_crashes_contained"]
    assert report["step_model_bad_inputs_rejected"] == report["step_model_bad_inputs"] > 0
    assert report["stub_processes_leaked"] == 0 and set(report["targets"]) and report["crash_recovery_s"] > 0
    assert report["swap"]["answers"]["after_swap"].get("v2", 0) > 0
    assert report["swap"]["answers"]["after_rollback"].get("v1", 0) > 0
    assert report["restart_recovery_s"] > 0 and report["soak"]["requests"] > 0
