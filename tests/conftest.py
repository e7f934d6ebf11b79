"""Session fixtures: a tiny end-to-end pipeline (data -> train -> embed ->
export, through the real CLI) and a real tritonserver serving its output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pinrank.cli import main
from pinrank.serving.tritonserver import running_server

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class Pipeline:
    root: Path
    data: Path
    pinnerformer: Path
    snapshot: Path
    ranker: Path
    repository: Path
    export_report: Path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test models are tiny: extra threads gain nothing, and on a 2-core box
    OpenMP threads spin against each other (a 10x slowdown was seen)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(args: list[str]) -> str:
    """Run `pinrank ARGS` in-process; fail the test with its output on error."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"pinrank {' '.join(map(str, args))} failed:\n{result.output}"
    return result.output


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Small but real: every stage the demo runs, sized to take well under a minute."""
    root = tmp_path_factory.mktemp("pipeline")
    p = Pipeline(root, root / "data", root / "pf.pt", root / "snapshot", root / "ranker.pt",
                 root / "model_repository", root / "export.json")
    run_cli(["data", "synth", "--out", p.data, "--users", 300, "--items", 800, "--days", 21,
             "--eval-days", 4, "--quiet"])
    # The first half of the training period for PinnerFormer, the rest for the ranker (no leak).
    run_cli(["train", "pinnerformer", "--data", p.data, "--out", p.pinnerformer, "--steps", 15,
             "--batch-size", 32, "--train-cut", 0.5, "--no-progress"])
    run_cli(["embed", "--checkpoint", p.pinnerformer, "--data", p.data, "--out", p.snapshot])
    run_cli(["train", "ranker", "--data", p.data, "--pinnerformer", p.pinnerformer, "--out", p.ranker,
             "--steps", 30, "--no-progress"])
    run_cli(["export", "--ranker", p.ranker, "--snapshot", p.snapshot, "--data", p.data,
             "--out", p.repository, "--target", "all", "--results", p.export_report])
    return p


@pytest.fixture(scope="session")
def triton_server(pipeline: Pipeline):
    """The real bundled tritonserver on free localhost ports, serving the cpu profile."""
    with running_server(pipeline.repository / "cpu", log_path=pipeline.root / "tritonserver.log") as server:
        yield server
