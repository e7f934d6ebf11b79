"""ONNX export: the gate in ONNX Runtime, the axes, the fp16 graph, the files
shipped and the CLI's report. Small random rankers; no training."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from pinrank.backend import schema
from pinrank.cli import main
from pinrank.export import onnx_format
from pinrank.export.cli import export
from pinrank.export.configs import ProfileSettings
from pinrank.export.onnx_format import OnnxRunner, dynamic_axes, export_onnx
from pinrank.export.parity import ParityError, ParityReport, check_parity, edge_cases
from pinrank.export.tensorrt_engine import onnx_is_half_precision
from pinrank.models.ranker import Ranker, RankerConfig, RankerServing
from pinrank.repository.pbtxt import parse_pbtxt
from testkit.export_inputs import (
    make_export_inputs,  # tests/ is on sys.path via tests/conftest.py
)

NUM_ITEMS = 40


def _serving(mode: str = "fused", seed: int = 0, **kw) -> RankerServing:
    torch.manual_seed(seed)
    emb = np.random.default_rng(seed).normal(size=(NUM_ITEMS, schema.ITEM_EMB_DIM)).astype(np.float32)
    return RankerServing(Ranker(RankerConfig(mode=mode, **kw), item_emb=emb).eval()).eval()


def test_dynamic_axes_follow_the_schema():
    axes = dynamic_axes()
    assert axes["cand_idx"] == {0: "N"} and axes["probs"] == {0: "N"}
    for name in ("seq_item_idx", "seq_action", "seq_surface", "seq_age_h"):
        assert axes[name] == {0: "L"}
    assert "user_emb" not in axes and "context" not in axes
    assert "seq_action" not in dynamic_axes(seq_dynamic=False)


@pytest.mark.parametrize("mode", [pytest.param("early", marks=pytest.mark.slow), "fused", "avgpool"])
def test_export_passes_the_gate_and_keeps_the_contract(tmp_path, mode):
    res = export_onnx(_serving(mode), tmp_path / "ranker.onnx", NUM_ITEMS)
    assert res.report.passed and max(res.report.max_abs_diff.values()) <= 1e-4
    assert set(res.report.per_output["probs"]) == set(edge_cases(NUM_ITEMS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranker.onnx"]  # no temp file left
    sess = OnnxRunner(tmp_path / "ranker.onnx").session
    assert [i.name for i in sess.get_inputs()] == [s.name for s in schema.RANKER_INPUTS]
    assert [o.name for o in sess.get_outputs()] == ["probs"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["pinrank.precision"] == "fp32" and meta["pinrank.seq_len"] == str(schema.REALTIME_SEQ_LEN)


def test_sequence_axis_is_dynamic_down_to_the_verified_length(tmp_path):
    """fused/early read the first_k newest tokens with a fixed-width slice the
    tracer bakes in: shorter L must match eager down to first_k, and the probe
    must record where it stops rather than claim every length."""
    first_k = 10
    module = _serving("fused", first_k=first_k)
    res = export_onnx(module, tmp_path / "ranker.onnx", NUM_ITEMS)
    axis = res.seq_axis
    assert axis.dynamic and axis.min_verified == first_k
    assert min(axis.failed) < first_k  # the first shorter probe fails, and says why
    runner = OnnxRunner(tmp_path / "ranker.onnx")
    for length in (first_k, 37, schema.REALTIME_SEQ_LEN):
        report = check_parity(module, runner, edge_cases(NUM_ITEMS, seq_len=length), 1e-4, fmt=f"L={length}")
        assert report.passed, (length, report.max_abs_diff)


def test_avgpool_runs_at_every_length(tmp_path):
    res = export_onnx(_serving("avgpool"), tmp_path / "ranker.onnx", NUM_ITEMS)
    assert res.seq_axis.dynamic and res.seq_axis.min_verified == 1 and not res.seq_axis.failed


def test_fixed_length_when_the_first_probe_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_format, "SHORT_SEQ_LENS", (5,))  # below first_k: ORT cannot reshape
    res = export_onnx(_serving("fused"), tmp_path / "ranker.onnx", NUM_ITEMS)
    assert not res.seq_axis.dynamic and 5 in res.seq_axis.failed
    assert res.report.passed
    sess = OnnxRunner(tmp_path / "ranker.onnx").session
    seq = next(i for i in sess.get_inputs() if i.name == "seq_action")
    assert seq.shape == [schema.REALTIME_SEQ_LEN]
    assert res.to_dict()["seq_axis"]["dynamic"] is False


def test_empty_history_and_unknown_ids_stay_finite(tmp_path):
    """Fully masked attention rows use finite negatives: no NaN through ONNX either."""
    export_onnx(_serving("fused"), tmp_path / "ranker.onnx", NUM_ITEMS)
    runner = OnnxRunner(tmp_path / "ranker.onnx")
    cases = edge_cases(NUM_ITEMS)
    for name in ("empty_history", "unknown_ids", "all_in_mask_window"):
        (probs,) = runner(*[cases[name][s.name] for s in schema.RANKER_INPUTS])
        assert np.isfinite(probs).all() and probs.shape == (cases[name]["cand_idx"].size, schema.NUM_HEADS)


def test_fp16_graph_computes_in_half_with_fp32_io(tmp_path):
    res = export_onnx(_serving("fused"), tmp_path / "half.onnx", NUM_ITEMS, {"probs": 1e-2}, fp16=True)
    assert res.report.passed and res.fp16 and not res.seq_axis.dynamic
    model = onnx.load(str(tmp_path / "half.onnx"))
    float_io = [v for v in list(model.graph.input) + list(model.graph.output)
                if v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in float_io)
    assert onnx_is_half_precision(tmp_path / "half.onnx")
    assert not onnx_is_half_precision(export_onnx(_serving(), tmp_path / "full.onnx", NUM_ITEMS).path)


class _Drifting(torch.nn.Module):
    """Eager adds an offset that tracing does not see: the gate must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _serving("avgpool")

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.inner(*args)
        return out if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() else out + 0.01


def test_failing_gate_writes_nothing(tmp_path):
    with pytest.raises(ParityError, match="onnx differs from eager"):
        export_onnx(_Drifting(), tmp_path / "ranker.onnx", NUM_ITEMS)
    assert list(tmp_path.iterdir()) == []


def test_per_output_tolerances():
    report = ParityReport("x", {"probs": 1e-2}, per_output={"probs": {"a": 5e-3, "b": 2e-3}})
    assert report.passed and report.to_dict()["tolerance"] == {"probs": 1e-2}
    report.per_output["probs"]["c"] = float("nan")
    assert not report.passed and list(report.failures()) == ["probs/c"]
    with pytest.raises(ParityError, match="probs 0.01"):
        report.raise_if_failed()
    with pytest.raises(KeyError, match="no tolerance"):
        check_parity(lambda *a: 0, lambda *a: 0, {}, {"other": 1.0}, "x")


# --- the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_export_inputs(tmp_path_factory.mktemp("export_inputs"))


def _export(args: list) -> "object":
    return CliRunner().invoke(main, ["export", *[str(a) for a in args]])


def test_cli_default_formats_ship_onnx_next_to_torchscript(tmp_path, inputs):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "export.json",
                 "--target", "cpu", "--cpu-runtime", "onnxruntime"])
    assert r.exit_code == 0, r.output
    version = tmp_path / "repo" / "cpu" / schema.RANKER_MODEL / "1"
    assert sorted(p.name for p in version.iterdir() if p.is_file()) == [
        "manifest.json", "model.py", "ranker.onnx", "ranker.pt"]
    cfg = parse_pbtxt((version.parent / "config.pbtxt").read_text())
    assert cfg.parameters["RUNTIME"].string_value == "onnxruntime"
    report = json.loads((tmp_path / "export.json").read_text())
    for fmt in ("torchscript", "onnx"):
        entry = report["formats"][fmt]
        assert entry["passed"] and set(entry["max_abs_diff"]["probs"]) == set(edge_cases(NUM_ITEMS))
        assert max(entry["max_abs_diff"]["probs"].values()) <= 1e-4
    assert "skipped" in report["formats"]["tensorrt"]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["formats"] == ["torchscript", "onnx"] and manifest["ranker_runtime"] == "onnxruntime"
    assert set(manifest["parity"]) == {"torchscript", "onnx"} and manifest["onnx"]["opset"] == onnx_format.OPSET
    assert set(manifest["artifact_sha256"]) == {"ranker.pt", "ranker.onnx"}
    assert {"torch", "onnx", "onnxruntime", "tensorrt"} <= set(manifest["libraries"])
    cfg = parse_pbtxt((tmp_path / "repo" / "cpu" / schema.RANKER_MODEL / "config.pbtxt").read_text())
    assert cfg.backend == "python"
    assert not list((tmp_path / "repo" / ".build").iterdir())  # staging cleaned up


def test_cli_onnx_only_still_produces_what_the_runtime_serves(tmp_path, inputs):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "export.json",
                 "--target", "cpu", "--formats", "onnx", "--cpu-runtime", "torchscript"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["formats"]["torchscript"]["passed"]  # the chosen cpu runtime serves ranker.pt


def test_cli_rejects_unknown_formats(tmp_path, inputs):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--formats", "onnx,tflite"])
    assert r.exit_code != 0 and "tflite" in r.output and not (tmp_path / "repo").exists()


def test_cli_failing_required_gate_publishes_nothing(tmp_path, inputs, monkeypatch):
    def fail(*args, **kwargs):
        raise ParityError("onnx differs from eager beyond 0.0001: {'probs/max_candidates': 0.5}")

    monkeypatch.setattr(onnx_format, "export_onnx", fail)
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "export.json"])
    assert r.exit_code != 0 and "onnx: parity gate failed, nothing published" in r.output
    assert not (tmp_path / "repo" / "cpu").exists() and not (tmp_path / "export.json").exists()


def test_cli_instances_reach_every_profile_and_default_to_profile_settings(tmp_path, inputs):
    d = ProfileSettings()
    default = next(p.default for p in export.params if p.name == "instances")
    assert default == f"{d.preprocess_instances}:{d.ranker_instances}:{d.postprocess_instances}"
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "e.json",
                 "--instances", "1:3:1"])
    assert r.exit_code == 0, r.output
    for profile in ("cpu", "gpu"):
        counts = [parse_pbtxt((tmp_path / "repo" / profile / m / "config.pbtxt").read_text()).instance_group[0].count
                  for m in (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL)]
        assert counts == [1, 3, 1]


@pytest.mark.parametrize("bad", ["1:2", "0:1:1", "a:b:c", ""])
def test_cli_rejects_bad_instances_before_publishing(tmp_path, inputs, bad):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--instances", bad])
    assert r.exit_code == 2 and "PRE:RANKER:POST" in r.output and not (tmp_path / "repo").exists()
