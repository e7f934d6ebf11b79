"""docs/deploy.md's daily-loop section: its sizing table is what
deploy/daily/sizing.py renders from the committed record
deploy/daily/sizing.json, so a number in the guide cannot drift from the
measurement, and that record holds what the guide says it measured and
assumed. (tests/deploy/test_docs.py checks the guide's command lines.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.daily import sizing

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
RECORD = ROOT / "deploy" / "daily" / "sizing.json"


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_the_sizing_table_is_the_records(record):
    region = sizing.DOCS_REGION.search(DOC.read_text())
    assert region, "docs/deploy.md lost its <!-- daily-sizing --> region"
    assert region.group(2) == sizing.markdown(record) + "\n", \
        "run `.venv/bin/python -m deploy.daily.sizing --render deploy/daily/sizing.json --docs docs/deploy.md`"


def test_the_record_says_what_was_measured_and_what_assumed(record):
    assert record["command"] == "make daily-sizing" and record["date"]
    assert set(record["assumptions"]) == set(sizing.ASSUMPTIONS) == set(record["assumption_notes"])
    measured = record["measured"]
    for key in ("cpu_seconds_per_user", "cpu_seconds_per_user_at_cap", "flops_per_user_at_cap"):
        assert measured["quick"][key] > 0, key
    assert measured["snapshot"]["bytes_per_user"] > 0 and measured["embed_process"]["wall_seconds"] > 0
    # The estimate is the arithmetic of the two, not numbers typed in.
    assert record["estimate"] == sizing.estimate(measured, record["assumptions"])


def test_the_guide_states_every_assumption(record):
    text = DOC.read_text()
    a = record["assumptions"]
    for needed in (f"{a['users'] // 1_000_000} million users", f"{a['active_fraction']:.0%} of users active",
                   f"{a['threads_per_shard']} threads per shard", f"{a['shard_minutes']:.0f} minutes per shard",
                   f"{a['actions_per_user']} actions per user", f"{a['gpu_tflops']:.0f} TFLOP/s",
                   f"{a['kept_runs']} runs and {a['kept_versions']} repository versions kept"):
        assert needed in text, needed


def test_the_region_check_can_fail(record, tmp_path):
    doc = tmp_path / "deploy.md"
    doc.write_text(DOC.read_text().replace("| 264 B |", "| 265 B |"))
    assert sizing.DOCS_REGION.search(doc.read_text()).group(2) != sizing.markdown(record) + "\n"
    assert sizing.rewrite_docs(doc, record) and sizing.DOCS_REGION.search(doc.read_text()).group(2) == \
        sizing.markdown(record) + "\n"
