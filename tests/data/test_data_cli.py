"""`pinrank data ...` through click's CliRunner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pinrank.data.cli import data
from pinrank.data.dataset import load_dataset

SMALL_ARGS = ["--users", "60", "--items", "200", "--topics", "5", "--days", "6", "--eval-days", "2", "--quiet"]


def run(*args: str):
    return CliRunner().invoke(data, list(args))


def _clean_error(result) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


@pytest.mark.parametrize("cmd", [[], ["synth"], ["import"], ["validate"]])
def test_help(cmd):
    result = run(*cmd, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    assert len(result.output.splitlines()) > 4


def test_synth_then_validate(tmp_path):
    out = tmp_path / "syn"
    result = run("synth", "--out", str(out), "--seed", "5", *SMALL_ARGS)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "actions" in result.output
    ds = load_dataset(out)
    assert ds.meta["seed"] == 5 and ds.meta["config"]["users"] == 60 and ds.num_items == 200
    result = run("validate", str(out))
    assert result.exit_code == 0, result.output
    for word in ("users:", "items:", "actions:", "impressions:", "time span:", "train", "eval"):
        assert word in result.output


def test_synth_bad_config_is_a_clean_error(tmp_path):
    _clean_error(run("synth", "--out", str(tmp_path / "x"), "--days", "3", "--eval-days", "3"))


def test_validate_bad_paths(tmp_path):
    _clean_error(run("validate", str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    _clean_error(run("validate", str(tmp_path / "empty")))


def test_import_bad_path_and_bad_rows(tmp_path):
    _clean_error(run("import", "--format", "movielens", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")))
    src = tmp_path / "ub.csv"
    src.write_text("1,100,7,pv,1511600000\n1,100,7,like,1511600100\n2,200,8,buy,1511600300\n")
    result = run("import", "--format", "taobao", "--src", str(src), "--out", str(tmp_path / "tb"))
    _clean_error(result)
    assert "ub.csv:2" in result.output and "--skip-bad-rows" in result.output
    result = run("import", "--format", "taobao", "--src", str(src), "--out", str(tmp_path / "tb"), "--skip-bad-rows")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad rows" in result.output
    assert load_dataset(tmp_path / "tb").meta["bad_rows"]["count"] == 1
    assert run("validate", str(tmp_path / "tb")).exit_code == 0


def test_import_unknown_format(tmp_path):
    result = run("import", "--format", "csv", "--src", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output


def test_import_real_movielens(tmp_path, shared_data):
    src = shared_data("ml-latest-small")
    result = run("import", "--format", "movielens", "--src", str(src), "--out", str(tmp_path / "ml"))
    assert result.exit_code == 0, result.output
    result = run("validate", str(tmp_path / "ml"))
    assert result.exit_code == 0 and "source: movielens" in result.output


def test_import_per_user_split_then_validate(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    # ML-1M layout, no movies.dat: every movie's topic is "(unknown)".
    rows = [f"{u}::{10 + i}::{1 + (u + i) % 5}::{978300760 + 60 * i}" for u in (1, 2, 3) for i in range(5)]
    (src / "ratings.dat").write_text("\n".join(rows) + "\n")
    result = run("import", "--format", "movielens", "--src", str(src), "--out", str(tmp_path / "o"),
                 "--split", "per-user", "--negatives", "2")
    assert result.exit_code == 0, result.output
    result = run("validate", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert "split per user (3 user cuts, first 0.8 of each user's actions): train 12 actions, eval 3" in result.output
    result = run("import", "--format", "movielens", "--src", str(src), "--out", str(tmp_path / "o"),
                 "--split", "by-day")
    assert result.exit_code == 2 and "Invalid value for '--split'" in result.output


def test_import_help_documents_variants_and_split():
    out = run("import", "--help").output
    for word in ("ratings.csv", "ratings.dat", "u.data", "u.item", "--split", "per-user"):
        assert word in out


def test_import_wrong_layout_is_a_clean_error(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("1,10,4,978300760\n" * 1000)
    result = run("import", "--format", "movielens", "--src", str(tmp_path / "ml"), "--out", str(tmp_path / "o"))
    _clean_error(result)
    assert "u.data:1: expected" in result.output
