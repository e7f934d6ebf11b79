"""`make eval-ranker` runner on the small real pipeline data: one row per variant, schema-complete."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pinrank.backend import schema
from pinrank.train.ranker_ablation import VARIANTS, main


@pytest.mark.slow
def test_runner_writes_every_variant_with_quality_and_cost(pipeline, tmp_path):
    out = tmp_path / "ranker.json"
    res = CliRunner().invoke(main, ["--data", str(pipeline.data), "--pinnerformer", str(pipeline.pinnerformer),
                                    "--out", str(out), "--work", str(tmp_path / "w"), "--steps", "2",
                                    "--threads", "1", "--cost-repeats", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert list(report["variants"]) == list(VARIANTS)
    for name, row in report["variants"].items():
        for key in ("auc", "hit_at_3", "hit_at_3_own_head"):
            assert set(row[key]) == set(schema.HEADS), (name, key)
            assert all(0.0 <= v <= 1.0 for v in row[key].values()), (name, key)
        assert row["gflop_per_request"] > 0 and row["ms_per_request"] > 0
        assert set(row["cost_by_n"]) == {"100", "500", "1000"}
    v = report["variants"]
    assert v["full_early"]["gflop_per_request"] > 10 * v["full_fused"]["gflop_per_request"]
    assert v["no_realtime"]["gflop_per_request"] < v["avgpool_realtime"]["gflop_per_request"]
    assert "| full_early |" in out.with_suffix(".md").read_text()


def test_runner_rejects_unknown_variant_and_missing_checkpoint(tmp_path):
    res = CliRunner().invoke(main, ["--data", str(tmp_path), "--pinnerformer", str(tmp_path / "none.pt"),
                                    "--variants", "nope"])
    assert res.exit_code == 2
