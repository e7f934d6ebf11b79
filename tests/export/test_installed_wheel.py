"""`pinrank export` from the built wheel, away from the checkout: the Triton
model.py sources ship as package data and the harnesses stay out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from testkit.export_inputs import export_args, make_export_inputs

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From the tracked files only: no stale build/ or generated files leak into it.
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    # Offline when the venv has the build backend; else pip fetches it (PyPI).
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out), str(source)],
                   check=True, timeout=300)
    (found,) = out.glob("pinrank-*.whl")
    return found


def test_wheel_holds_the_product_and_not_the_harnesses(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for source in ("preprocess.py", "ranker.py", "postprocess.py", "single_model.py"):
        assert f"pinrank/repository/python_models/{source}" in names
    assert "pinrank/eval/protocols.py" in names and "pinrank/backend/featurize.py" in names
    tops = {name.split("/")[0] for name in names}
    assert not tops & {"reliability", "testkit", "loadtest", "tests", "export"}, tops


def test_export_runs_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    inputs = make_export_inputs(tmp_path / "inputs", num_items=40, num_users=12)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # The installed copy first; the checkout is not on the path (cwd is elsewhere).
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import pinrank.export.publish as p; print(p.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True, timeout=120)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    args = export_args(inputs, tmp_path / "repo", results=tmp_path / "export.json")
    run = subprocess.run([sys.executable, "-m", "pinrank.cli", *args], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    version = tmp_path / "repo" / "cpu" / "preprocess" / "1"
    shipped = (site / "pinrank" / "repository" / "python_models" / "preprocess.py").read_text()
    assert (version / "model.py").read_text() == shipped
    assert (version / "_vendor" / "pinrank" / "backend" / "featurize.py").is_file()
    assert json.loads((tmp_path / "export.json").read_text())
