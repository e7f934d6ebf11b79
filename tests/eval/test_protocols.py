"""The protocols end to end on a toy log with tiny budgets, and the `pinrank eval` CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pinrank.data.dataset import save_dataset
from pinrank.eval.cli import eval_group
from pinrank.eval.protocols import leave_one_out_report, window_report
from testkit.toy_data import make_toy_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy():
    return make_toy_dataset(num_users=80, num_items=150, actions_per_user=30)


def test_leave_one_out_report_has_every_model_and_baseline(toy):
    r = leave_one_out_report(toy, minutes=0.05, extra_objectives=("dense_all_action",), evals=2, progress=False)
    assert r["objective"] == "sasrec" and r["recipe"] == "next_item"
    for m in (r["test"], r["validation"], r["baselines"]["sasrec"]["test"], r["baselines"]["popularity"]["test"],
              r["variants"]["next_item:dense_all_action"]["test"]):
        assert 0.0 <= m["ndcg_at_10"] <= m["hr_at_10"] <= 1.0
        assert m["hr_at_10"] <= m["sampled_hr_at_10"]  # 100 negatives are easier than the catalogue
        assert m["users"] == r["settings"]["users"] > 0
    assert r["training"]["steps"] > 0 and r["training"]["validation_curve"]
    assert r["training"]["negatives"] == "full"


def test_window_report_has_every_objective_and_baseline(toy):
    r = window_report(toy, minutes=0.05, extra_objectives=("next_action",), progress=False)
    assert r["objective"] == "dense_all_action"
    for m in (r["test"], r["variants"]["long_term:next_action"]["test"], r["baselines"]["popularity"]["test"],
              r["baselines"]["history_mean"]["test"]):
        assert 0.0 <= m["recall_at_10"] <= 1.0 and 0.0 < m["p90_coverage_at_10"] <= 1.0
    # Popularity gives everyone (nearly) the same list; a personal model covers more of the catalogue.
    assert r["baselines"]["popularity"]["test"]["p90_coverage_at_10"] < r["test"]["p90_coverage_at_10"]


def test_cli_writes_the_report_and_rejects_a_bad_dataset(toy, tmp_path):
    data = save_dataset(toy, tmp_path / "toy")
    out = tmp_path / "loo.json"
    res = CliRunner().invoke(eval_group, ["loo", "--data", str(data), "--out", str(out), "--minutes", "0.05",
                                          "--no-sasrec", "--evals", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert set(report) >= {"test", "validation", "settings"} and "hr_at_10" in report["test"]
    assert "HR@10" in res.output
    (tmp_path / "bad").mkdir()
    res = CliRunner().invoke(eval_group, ["window", "--data", str(tmp_path / "bad"), "--out", str(out)])
    assert res.exit_code != 0 and "bad dataset" in res.output
