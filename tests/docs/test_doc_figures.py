"""The measured figures in the docs come from data: every table between
`<!-- figures:NAME -->` markers is exactly what docs/figures/render.py makes
of its docs/figures/*.json record, every record names the command that
measured it, every other table in the result docs says where its numbers
come from, and the test count claimed for `make test` is near what the suite
holds now."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "figures" / "render.py"
FIGURES = sorted((ROOT / "docs" / "figures").glob("*.json"))
#: The docs whose tables are measurements (the others hold configuration and commands).
RESULT_DOCS = ("docs/benchmarks.md", "docs/results.md", "docs/reliability.md")

_spec = importlib.util.spec_from_file_location("docs_figures_render", SCRIPT)
render = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = render  # dataclasses look their module up while the class is built
_spec.loader.exec_module(render)


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z0-9][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def test_every_marked_table_is_what_its_figures_file_renders():
    rendered, problems, _ = render.render_docs(ROOT)
    assert problems == []
    stale = [doc for doc, (now, new) in rendered.items() if now != new]
    assert stale == [], f"run `.venv/bin/python docs/figures/render.py` (or --check for the diff): {stale}"


def test_the_check_command_passes_on_the_checkout():
    result = run_script("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_with_a_diff_when_a_doc_number_drifts(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    doc = tmp_path / "docs" / "reliability.md"
    text = doc.read_text()
    region = re.search(r"<!-- figures:reliability -->.*?<!-- /figures:reliability -->", text, re.DOTALL)[0]
    assert "| `server_ready_after_all` | true |" in region
    doc.write_text(text.replace("| `server_ready_after_all` | true |", "| `server_ready_after_all` | maybe |"))
    result = run_script("--check", "--root", tmp_path)
    assert result.returncode == 1
    assert "-| `server_ready_after_all` | maybe |" in result.stdout
    assert "+| `server_ready_after_all` | true |" in result.stdout
    assert run_script("--root", tmp_path).returncode == 0  # rendering repairs it
    assert run_script("--check", "--root", tmp_path).returncode == 0


@pytest.mark.parametrize("path", FIGURES, ids=lambda p: p.name)
def test_every_figures_file_names_the_command_that_produced_it(path):
    figures = json.loads(path.read_text())
    for key in ("command", "date", "source", "data"):
        assert figures.get(key), f"{path.name}: no {key!r}"
    commands = [figures["command"]] + [r["command"] for r in figures["data"].get("runs", [])]
    for command in commands:
        for target in re.findall(r"\bmake ([a-z0-9-]+)", command):
            assert target in make_targets(), f"{path.name}: `make {target}` is not a Makefile target"
        for script in re.findall(r"[\w./-]+\.py\b", command):
            assert (ROOT / script).is_file(), f"{path.name}: {script} does not exist"
    assert path.stem in render.EXTRACTORS or path.stem == "two_commands", \
        f"{path.name}: `render.py --from-results` cannot refresh it (no extractor)"


def test_every_figures_file_feeds_a_table():
    used = {t.figures for t in render.TABLES}
    assert {p.stem for p in FIGURES} <= used


def _tables(lines: list[str]) -> list[int]:
    """Line index of each Markdown table's header row."""
    return [i for i in range(len(lines) - 1)
            if lines[i].startswith("|") and re.match(r"^\|(-+\|)+$", lines[i + 1]) and
            (i == 0 or not lines[i - 1].startswith("|"))]


@pytest.mark.parametrize("doc", RESULT_DOCS)
def test_every_table_of_figures_says_where_its_numbers_come_from(doc):
    """Generated from a figures file, or marked hand-written with the command
    that measures it: no table of numbers from nowhere."""
    lines = (ROOT / doc).read_text().splitlines()
    generated, inside = set(), False
    for i, line in enumerate(lines):
        inside = line.startswith("<!-- figures:") or (inside and not line.startswith("<!-- /figures:"))
        if inside:
            generated.add(i)
    unsourced = []
    for i in sorted(set(_tables(lines)) - generated):
        above = []
        for line in reversed(lines[:i]):
            if line.startswith(("#", "|", "<!-- /figures:")):
                break  # a heading or the table before: the comment would belong to another table
            above.append(line)
        if not any(a.startswith(render.HANDWRITTEN) for a in above):
            unsourced.append(f"{doc}:{i + 1}: {lines[i]}")
    assert unsourced == [], "put the table in a figures region or mark it `<!-- hand-written: COMMAND ... -->`"


def _bench_results() -> dict:
    """The shape loadtest/bench.py writes (values made up: this checks the
    plumbing, never a doc)."""
    lat = {k: {"p50_ms": 2.0 + i, "p90_ms": 3.0 + i, "p99_ms": 4.0 + i, "mean_ms": 2.5 + i}
           for i, k in enumerate(render.LATENCY_PATHS)}
    step = {"requests": 10, "success_ms": 1.0, "queue_ms": 0.1, "compute_input_ms": 0.0, "compute_infer_ms": 0.8,
            "compute_output_ms": 0.0, "share_of_end_to_end": 0.2}
    level = {"users": 2, "duration_s": 15.0, "requests": 3000, "failures": 0, "rps": 200.0, "p50_ms": 6.0,
             "p95_ms": 9.0, "p99_ms": 11.0, "max_ms": 20.0, "mean_ms": 6.5, "failure_ratio": 0.0}
    return {
        "date": "2030-01-02T03:04:05+00:00", "machine": "x86_64, 2 CPUs, Linux", "repository": "r", "ranker": "k",
        "candidates": 500, "actions": 100, "requests": 200, "served_runtime": "onnxruntime", "latency": lat,
        "triton_over_inprocess_p50": 1.25, "triton_over_inprocess_p50_best_layout": "single",
        "triton_over_inprocess_p50_by_layout": {"ensemble": 1.5, "single": 1.25},
        "time_breakdown": {"pinrank": step, "preprocess": step, "ranker": step, "postprocess": step,
                           "outside_models_ms": 0.5, "outside_models_share": 0.1},
        "in_process_steps_mean_ms": {"preprocess": 0.2, "ranker": 0.7, "postprocess": 0.1},
        "preprocess_share": 0.2, "postprocess_share": 0.2,
        "fusion": {"by_n": {"500": {"early": {"ms": 300.0, "gflop": 15.0}, "fused": {"ms": 3.0, "gflop": 0.3},
                                    "speedup": 100.0, "flop_ratio": 50.0}}, "fused_speedup_n500": 100.0},
        "fused_speedup_n500": 100.0,
        "throughput": {"configs": {"pre1-ranker1-post1": {"levels": [level], "best": level},
                                   "single2": {"levels": [level], "best": level}},
                       "best_config": "single2", "throughput_rps": 200.0, "throughput_users": 2},
        "throughput_rps": 200.0, "wall_s": 270.0,
    }


def test_from_results_replaces_the_hand_written_bench_tables(tmp_path):
    """After `make bench`, one command turns the hand-written tables into generated ones."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "docs" / "figures" / "bench.json").unlink(missing_ok=True)
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench.json").write_text(json.dumps(_bench_results()))
    # An older run's file left in results/ must not replace a newer record.
    demo = json.loads((ROOT / "docs" / "figures" / "demo.json").read_text())
    (results / "demo.json").write_text(json.dumps(demo["data"]))
    os.utime(results / "demo.json", (0, 0))
    demo_before = (tmp_path / "docs" / "figures" / "demo.json").read_text()
    result = run_script("--from-results", results, "--artifacts", tmp_path / "none", "--root", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refreshed docs/figures/bench.json\n" in result.stdout
    assert (tmp_path / "docs" / "figures" / "demo.json").read_text() == demo_before
    figures = json.loads((tmp_path / "docs" / "figures" / "bench.json").read_text())
    assert (figures["command"], figures["date"]) == ("make bench", "2030-01-02T03:04:05+00:00")
    assert "repository" not in figures["data"]  # local paths are trimmed
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    for name in ("bench-headline", "bench-latency", "bench-breakdown", "bench-fusion", "bench-throughput"):
        body = re.search(rf"<!-- figures:{name} -->\n(.*?)<!-- /figures:{name} -->", text, re.DOTALL)[1]
        assert body.startswith("Measured by `make bench`, 2030-01-02 03:04 UTC, x86_64, 2 CPUs"), name
        assert render.HANDWRITTEN not in body
    assert "| Triton single model, HTTP | 7.00 | 8.00 | 9.00 | 1.75 |" in text  # p50 7.0 over in-process ORT 4.0
    assert "| **single model x2** | 200 (6 / 11) | 0 |" in text
    assert run_script("--check", "--root", tmp_path).returncode == 0


def test_test_count_claim_is_near_what_pytest_collects():
    """docs/benchmarks.md says what `make test` printed ("N passed"); a suite
    that grew or shrank by more than a quarter makes that claim stale."""
    claims = [int(n.replace(",", "")) for n in
              re.findall(r"(\d[\d,]*) passed", (ROOT / "docs" / "benchmarks.md").read_text())]
    assert claims, "docs/benchmarks.md no longer states a test count"
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    collected = re.search(r"^(\d+) tests? collected", result.stdout, re.MULTILINE)
    assert collected, result.stdout[-2000:] + result.stderr[-2000:]
    for claim in claims:
        assert abs(claim - int(collected[1])) <= 0.25 * int(collected[1]), \
            f"docs/benchmarks.md claims {claim} passed; pytest collects {collected[1]} now"
