"""Repository writer and parity gate, with a small scriptable ranker-shaped module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from tritonclient.grpc import model_config_pb2 as mc

from pinrank.backend import schema
from pinrank.backend.ranker_runtime import manifest_num_items
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank.export.configs import ProfileSettings
from pinrank.export.parity import ParityError, edge_cases
from pinrank.export.publish import republish, write_repository
from pinrank.export.torchscript import export_torchscript
from pinrank.repository.layout import existing_pipeline
from pinrank.repository.pbtxt import parse_pbtxt
from pinrank.serving.model_control import pin_repository

NUM_ITEMS = 50


class BagOfActions(nn.Module):
    """Implements the ranker interface (schema.RANKER_INPUTS -> probs [N, H])."""

    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Embedding(NUM_ITEMS + 1, 8)
        self.user = nn.Linear(schema.USER_EMB_DIM, 8)
        self.head = nn.Linear(8, schema.NUM_HEADS)

    def forward(self, cand_idx: Tensor, user_emb: Tensor, seq_item_idx: Tensor, seq_action: Tensor,
                seq_surface: Tensor, seq_age_h: Tensor, context: Tensor) -> Tensor:
        valid = (seq_action > 0).float().unsqueeze(-1)
        seq = (self.items(seq_item_idx) * valid).sum(0) / valid.sum().clamp(min=1.0)
        return torch.sigmoid(self.head(self.items(cand_idx) * (seq + self.user(user_emb)).unsqueeze(0)))


class Drifting(nn.Module):
    """Eager differs from what it scripts to: the gate must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = BagOfActions()

    def forward(self, cand_idx: Tensor, user_emb: Tensor, seq_item_idx: Tensor, seq_action: Tensor,
                seq_surface: Tensor, seq_age_h: Tensor, context: Tensor) -> Tensor:
        out = self.inner(cand_idx, user_emb, seq_item_idx, seq_action, seq_surface, seq_age_h, context)
        if not torch.jit.is_scripting():
            out = out + 0.01
        return out


@pytest.fixture()
def artifacts():
    emb = np.eye(2, schema.USER_EMB_DIM, dtype=np.float32)
    snap = UserSnapshot(np.array([1, 2]), emb, np.zeros(schema.USER_EMB_DIM, np.float32),
                        {"as_of_ms": 0, "version": "x"})
    return ItemVocab(np.arange(100, 100 + NUM_ITEMS)), snap


def test_edge_cases_cover_the_contract():
    cases = edge_cases(NUM_ITEMS)
    assert cases["one_candidate"]["cand_idx"].shape == (1,)
    assert cases["max_candidates"]["cand_idx"].shape == (schema.MAX_CANDIDATES,)
    assert not cases["empty_history"]["seq_action"].any()
    assert cases["full_history"]["seq_action"].all()
    assert (cases["unknown_ids"]["cand_idx"] == 0).any()
    for case in cases.values():
        for s in schema.RANKER_INPUTS:
            assert case[s.name].dtype == np.dtype(s.dtype)


def test_parity_gate_passes_and_publishes_versions(tmp_path, artifacts):
    torch.manual_seed(0)
    ts, report = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    assert report.passed and set(report.max_abs_diff) == set(edge_cases(NUM_ITEMS))
    repo = tmp_path / "repo"
    torchscript = ProfileSettings(cpu_runtime="torchscript")
    first = write_repository(repo, "cpu", ts, *artifacts, manifest={"k": 1, "num_items": NUM_ITEMS + 7},
                             settings=torchscript)
    second = write_repository(repo, "cpu", ts, *artifacts, settings=torchscript)
    assert (first.version, second.version) == (1, 2)
    for name in (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL):
        assert sorted(p.name for p in (repo / name).iterdir()) == ["1", "2", "config.pbtxt"]  # no staging left
        parse_pbtxt((repo / name / "config.pbtxt").read_text())
    v2 = repo / schema.PREPROCESS_MODEL / "2"
    assert (v2 / "model.py").exists() and (v2 / "artifacts" / "item_ids.npy").exists()
    assert (v2 / "_vendor" / "pinrank_client" / "validation.py").exists()
    assert (repo / schema.RANKER_MODEL / "2" / "ranker.pt").exists()
    assert (repo / schema.ENSEMBLE_MODEL / "1").is_dir()
    # The ranker checks indices against its tables: the vocabulary's size, even
    # when the caller's manifest says nothing (or something else) about it.
    for version in (first.version, second.version):
        ranker_dir = repo / schema.RANKER_MODEL / str(version)
        assert manifest_num_items(ranker_dir) == len(artifacts[0])
        assert (ranker_dir / "_vendor" / "pinrank" / "backend" / "step_inputs.py").exists()


def test_publishing_keeps_the_version_a_fleet_pinned(tmp_path, artifacts):
    """A switched fleet pins what it serves; v+1 arriving must not unpin it
    (a restarting server would load v+1 before the rollout's canary)."""
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    repo, settings = tmp_path / "repo", ProfileSettings(cpu_runtime="torchscript")
    write_repository(repo, "cpu", ts, *artifacts, settings=settings)
    pin_repository(repo, 1)
    write_repository(repo, "cpu", ts, *artifacts, settings=settings)
    for name in (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL):
        cfg = parse_pbtxt((repo / name / "config.pbtxt").read_text())
        assert list(cfg.version_policy.specific.versions) == [1]
    ensemble = parse_pbtxt((repo / schema.ENSEMBLE_MODEL / "config.pbtxt").read_text())
    assert [s.model_version for s in ensemble.ensemble_scheduling.step] == [1, 1, 1]
    # An unpinned repository (poll mode, first export) keeps following the latest version.
    write_repository(tmp_path / "fresh", "cpu", ts, *artifacts, settings=settings)
    write_repository(tmp_path / "fresh", "cpu", ts, *artifacts, settings=settings)
    cfg = parse_pbtxt((tmp_path / "fresh" / schema.RANKER_MODEL / "config.pbtxt").read_text())
    assert not cfg.version_policy.HasField("specific")


def test_default_cpu_runtime_needs_the_onnx_artifact(tmp_path, artifacts):
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    with pytest.raises(ValueError, match="needs ranker.onnx"):
        write_repository(tmp_path / "repo", "cpu", ts, *artifacts)
    assert not any((tmp_path / "repo").glob("*/[0-9]*"))  # nothing published


def test_gpu_profile_has_no_python_ranker(tmp_path, artifacts):
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    write_repository(tmp_path / "gpu", "gpu", ts, *artifacts)
    assert not (tmp_path / "gpu" / schema.RANKER_MODEL / "1" / "model.py").exists()
    cfg = parse_pbtxt((tmp_path / "gpu" / schema.RANKER_MODEL / "config.pbtxt").read_text())
    assert cfg.platform == "pytorch_libtorch"


def test_gpu_profile_python_backend_ships_model_py_and_a_cpu_variant(tmp_path, artifacts):
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    write_repository(tmp_path / "gpu", "gpu", ts, *artifacts, settings=ProfileSettings(gpu_backend="python"))
    ranker = tmp_path / "gpu" / schema.RANKER_MODEL
    assert (ranker / "1" / "model.py").exists() and (ranker / "1" / "ranker.pt").exists()
    assert (ranker / "1" / "_vendor" / "pinrank" / "backend" / "torchscript_ranker.py").exists()
    on_gpu = parse_pbtxt((ranker / "config.pbtxt").read_text())
    on_cpu = parse_pbtxt((ranker / "configs" / "cpu.pbtxt").read_text())
    assert on_gpu.backend == on_cpu.backend == "python"
    assert [g.kind for g in on_gpu.instance_group] == [mc.ModelInstanceGroup.Kind.KIND_GPU]
    assert [g.kind for g in on_cpu.instance_group] == [mc.ModelInstanceGroup.Kind.KIND_CPU]
    # Only the ranker moves to the GPU: the other steps have no variant and keep config.pbtxt.
    assert not any((tmp_path / "gpu" / m / "configs").exists()
                   for m in (schema.PREPROCESS_MODEL, schema.POSTPROCESS_MODEL, schema.ENSEMBLE_MODEL))


def test_failing_parity_gate_writes_nothing(tmp_path):
    with pytest.raises(ParityError, match="differs from eager"):
        export_torchscript(Drifting(), tmp_path / "ranker.pt", NUM_ITEMS)
    assert list(tmp_path.iterdir()) == []


def test_vendored_modules_import_without_the_installed_packages(tmp_path, artifacts):
    """The copy in _vendor/ is what NVIDIA's container will import: it must be complete."""
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    write_repository(tmp_path / "repo", "cpu", ts, *artifacts, settings=ProfileSettings(cpu_runtime="torchscript"))
    vendor = tmp_path / "repo" / schema.PREPROCESS_MODEL / "1" / "_vendor"
    site_packages = str(Path(np.__file__).resolve().parent.parent)
    # -S: no .pth processing, so the editable installs of pinrank are invisible.
    code = (
        f"import sys; sys.path[:0] = [{str(vendor)!r}, {site_packages!r}];"
        "import pinrank.backend.preprocess as p, pinrank.backend.postprocess;"
        f"assert p.__file__.startswith({str(vendor)!r}), p.__file__;"
        "p.Preprocessor.from_dir(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-S", "-c", code, str(vendor.parent / "artifacts")], check=True,
                   env={"PYTHONPATH": ""}, capture_output=True)


def test_single_pipeline_publishes_one_model_and_refuses_mixing(tmp_path, artifacts):
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    single = ProfileSettings(cpu_runtime="torchscript", pipeline="single")
    repo = tmp_path / "single"
    assert write_repository(repo, "cpu", ts, *artifacts, settings=single).version == 1
    assert write_repository(repo, "cpu", ts, *artifacts, settings=single).version == 2
    assert sorted(p.name for p in repo.iterdir()) == [schema.ENSEMBLE_MODEL]
    v2 = repo / schema.ENSEMBLE_MODEL / "2"
    for name in ("model.py", "ranker.pt", "artifacts/item_ids.npy", "_vendor/pinrank/backend/ranker_runtime.py"):
        assert (v2 / name).exists(), name
    assert existing_pipeline(repo) == "single"
    with pytest.raises(ValueError, match="holds the single pipeline"):
        write_repository(repo, "cpu", ts, *artifacts, settings=ProfileSettings(cpu_runtime="torchscript"))
    assert not (repo / schema.PREPROCESS_MODEL).exists()


def test_republish_switches_layout_from_the_shipped_artifacts(tmp_path, artifacts):
    ts, _ = export_torchscript(BagOfActions(), tmp_path / "ranker.pt", NUM_ITEMS)
    ens = tmp_path / "ens"
    write_repository(ens, "cpu", ts, *artifacts, manifest={"formats": ["torchscript"]},
                     settings=ProfileSettings(cpu_runtime="torchscript"))
    pv = republish(ens, tmp_path / "one", ProfileSettings(cpu_runtime="torchscript", pipeline="single"))
    assert existing_pipeline(pv.repository) == "single"
    version = pv.repository / schema.ENSEMBLE_MODEL / "1"
    assert (version / "ranker.pt").read_bytes() == (ens / schema.RANKER_MODEL / "1" / "ranker.pt").read_bytes()
    assert np.array_equal(np.load(version / "artifacts" / "item_ids.npy"), artifacts[0].item_ids)
    back = republish(pv.repository, tmp_path / "ens2", ProfileSettings(cpu_runtime="torchscript"))
    assert existing_pipeline(back.repository) == "ensemble"
    with pytest.raises(ValueError, match="no pinrank repository"):
        republish(tmp_path / "nothing", tmp_path / "x", ProfileSettings())
