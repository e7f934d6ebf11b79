"""TensorRT engines: what can be checked without a GPU (profile shapes from the
schema, the availability reason, the CLI's handling of an absent or a failing
TensorRT, the tensorrt_plan config), and a GPU test that builds real engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pinrank.backend import schema
from pinrank.cli import main
from pinrank.export import tensorrt_engine
from pinrank.export.configs import ProfileSettings, profile_configs
from pinrank.export.onnx_format import export_onnx
from pinrank.export.parity import ParityError, ParityReport, edge_cases, fp32_strict
from pinrank.export.tensorrt_engine import (
    EngineExport,
    onnx_is_half_precision,
    profile_shapes,
    tensorrt_available,
)
from pinrank.models.ranker import Ranker, RankerConfig, RankerServing
from pinrank.repository.pbtxt import parse_pbtxt
from testkit.export_inputs import (
    make_export_inputs,  # tests/ is on sys.path via tests/conftest.py
)


def test_profile_shapes_come_from_the_schema():
    shapes = profile_shapes()
    assert set(shapes) == {s.name for s in schema.RANKER_INPUTS}
    cand = shapes["cand_idx"]
    assert (cand.min, cand.opt, cand.max) == ((1,), (tensorrt_engine.OPT_CANDIDATES,), (schema.MAX_CANDIDATES,))
    for name in ("seq_item_idx", "seq_action", "seq_surface", "seq_age_h"):
        s = shapes[name]
        assert s.min == s.opt == s.max == (schema.REALTIME_SEQ_LEN,)
    assert shapes["user_emb"].min == shapes["user_emb"].max == (schema.USER_EMB_DIM,)
    assert profile_shapes(opt_candidates=7)["cand_idx"].opt == (7,)
    with pytest.raises(ValueError, match="opt_candidates"):
        profile_shapes(opt_candidates=schema.MAX_CANDIDATES + 1)


def test_availability_gives_a_reason_when_unusable():
    reason = tensorrt_available()
    try:
        import tensorrt  # noqa: PLC0415, F401 - optional (gpu extra): whether it imports is what is tested

        has_trt = True
    except ImportError:
        has_trt = False
    if has_trt and torch.cuda.is_available():
        assert reason is None
    else:
        assert isinstance(reason, str)
        assert ("not importable" in reason and "gpu" in reason) if not has_trt else "CUDA" in reason


def test_build_engine_without_tensorrt_says_why(tmp_path):
    if tensorrt_available() is None:
        pytest.skip("TensorRT is usable here: the GPU test covers building")
    with pytest.raises(tensorrt_engine.EngineBuildError) as err:
        tensorrt_engine.build_engine(tmp_path / "x.onnx", tmp_path / "x.plan", fp16=False)
    assert str(err.value) == tensorrt_available()
    assert not (tmp_path / "x.plan").exists()


def test_fp32_strict_turns_tf32_off_and_restores_it():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with fp32_strict():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tensorrt_plan_config():
    cfg = profile_configs("gpu", ProfileSettings(gpu_backend="tensorrt"))[schema.RANKER_MODEL]
    assert (cfg.platform, cfg.backend, cfg.default_model_filename) == ("tensorrt_plan", "tensorrt", "model.plan")
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert [i.name for i in cfg.input] == [s.name for s in schema.RANKER_INPUTS]
    assert list(next(i for i in cfg.input if i.name == "seq_action").dims) == [schema.REALTIME_SEQ_LEN]
    assert list(next(i for i in cfg.input if i.name == "cand_idx").dims) == [-1]
    assert "INFERENCE_MODE" not in cfg.parameters  # a libtorch-only parameter
    assert parse_pbtxt(str(cfg)) == cfg
    libtorch = profile_configs("gpu")[schema.RANKER_MODEL]
    assert libtorch.platform == "pytorch_libtorch"
    with pytest.raises(ValueError, match="gpu_backend"):
        ProfileSettings(gpu_backend="onnx")


# --- the CLI, with TensorRT absent, failing, or faked ------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_export_inputs(tmp_path_factory.mktemp("export_inputs"))


def _export(args: list):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["export", *[str(a) for a in args]])


@pytest.fixture()
def no_tensorrt(monkeypatch):
    monkeypatch.setattr(tensorrt_engine, "tensorrt_available", lambda: "TensorRT is not importable (test)")


def test_cli_explicit_tensorrt_where_unusable_fails_cleanly(tmp_path, inputs, no_tensorrt):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "e.json",
                 "--formats", "torchscript,onnx,tensorrt"])
    assert r.exit_code != 0 and "--formats tensorrt needs TensorRT" in r.output
    assert "not importable (test)" in r.output and "Nothing was published" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "repo").exists() and not (tmp_path / "e.json").exists()


def test_cli_gpu_backend_tensorrt_where_unusable_fails_cleanly(tmp_path, inputs, no_tensorrt):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--gpu-backend", "tensorrt"])
    assert r.exit_code != 0 and "--gpu-backend tensorrt needs TensorRT" in r.output
    assert not (tmp_path / "repo").exists()


def test_cli_records_why_tensorrt_was_skipped(tmp_path, inputs, no_tensorrt):
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "e.json",
                 "--target", "cpu", "--formats", "torchscript", "--cpu-runtime", "torchscript"])
    assert r.exit_code == 0, r.output
    formats = json.loads((tmp_path / "e.json").read_text())["formats"]
    assert formats["tensorrt"] == {"skipped": "TensorRT is not importable (test)"}
    assert formats["onnx"] == {"skipped": "not requested (--formats)"}


def _fake_engines(monkeypatch, fp16_diff: float = 3e-3) -> list[tuple[bool, object]]:
    """Stand-in for build + gate on a GPU: writes a plan, reports given diffs."""
    calls = []

    def fake_export_engine(module, onnx_path, engine_path, num_items, *, fp16, tolerance, opt_candidates=500):
        assert onnx_is_half_precision(onnx_path) == fp16  # each engine gets the graph of its precision
        calls.append((fp16, tolerance))
        diff = fp16_diff if fp16 else 2e-6
        report = ParityReport("tensorrt_fp16" if fp16 else "tensorrt_fp32", tolerance,
                              per_output={"probs": {c: diff for c in edge_cases(num_items)}})
        report.max_abs_diff = {c: diff for c in edge_cases(num_items)}
        report.raise_if_failed()
        Path(engine_path).write_bytes(b"fp16 plan" if fp16 else b"fp32 plan")
        return EngineExport(Path(engine_path), report, fp16, opt_candidates)

    monkeypatch.setattr(tensorrt_engine, "tensorrt_available", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "export_engine", fake_export_engine)
    monkeypatch.setattr(tensorrt_engine, "gpu_info", lambda: {"name": "Fake GPU", "compute_capability": "9.0"})
    return calls


def test_cli_with_tensorrt_usable_builds_both_precisions_and_ships_the_plan(tmp_path, inputs, monkeypatch):
    calls = _fake_engines(monkeypatch)
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "e.json",
                 "--gpu-backend", "tensorrt"])
    assert r.exit_code == 0, r.output
    assert [fp16 for fp16, _ in calls] == [False, True]
    assert calls[0][1] == 1e-4 and calls[1][1] == {"probs": 1e-2}  # fp16: looser, per output
    report = json.loads((tmp_path / "e.json").read_text())
    trt = report["formats"]["tensorrt"]
    assert trt["passed"] and trt["shipped"] == "fp16"
    for precision in ("fp32", "fp16"):
        assert set(trt[precision]["max_abs_diff"]["probs"]) == set(edge_cases(1))
    assert trt["profile"]["cand_idx"] == {"min": [1], "opt": [500], "max": [schema.MAX_CANDIDATES]}
    gpu_ranker = tmp_path / "repo" / "gpu" / schema.RANKER_MODEL
    assert (gpu_ranker / "1" / "model.plan").read_bytes() == b"fp16 plan"
    assert parse_pbtxt((gpu_ranker / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    assert not (tmp_path / "repo" / "cpu" / schema.RANKER_MODEL / "1" / "model.plan").exists()
    manifest = json.loads((gpu_ranker / "1" / "manifest.json").read_text())
    assert manifest["formats"] == ["torchscript", "onnx", "tensorrt"]
    assert manifest["tensorrt"]["gpu"]["compute_capability"] == "9.0"
    assert {"tensorrt_fp32", "tensorrt_fp16", "onnx_fp16"} <= set(manifest["parity"])
    assert manifest["ranker_runtime"] == "tensorrt"


def test_cli_failing_fp16_gate(tmp_path, inputs, monkeypatch):
    _fake_engines(monkeypatch, fp16_diff=0.2)
    # Requested: nothing is published.
    r = _export([*inputs.cli_args(), "--out", tmp_path / "req", "--results", tmp_path / "req.json",
                 "--formats", "torchscript,onnx,tensorrt"])
    assert r.exit_code != 0 and "tensorrt: parity gate failed, nothing published" in r.output
    assert not (tmp_path / "req" / "cpu").exists() and not (tmp_path / "req" / "gpu").exists()
    # Only attempted because it is usable: recorded, not shipped, the rest is published.
    r = _export([*inputs.cli_args(), "--out", tmp_path / "opt", "--results", tmp_path / "opt.json"])
    assert r.exit_code == 0, r.output
    trt = json.loads((tmp_path / "opt.json").read_text())["formats"]["tensorrt"]
    assert trt["passed"] is False and "differs from eager" in trt["error"]
    assert not (tmp_path / "opt" / "gpu" / schema.RANKER_MODEL / "1" / "model.plan").exists()


def test_cli_does_not_build_unasked_engines_for_a_cpu_only_export(tmp_path, inputs, monkeypatch):
    calls = _fake_engines(monkeypatch)
    r = _export([*inputs.cli_args(), "--out", tmp_path / "repo", "--results", tmp_path / "e.json", "--target", "cpu"])
    assert r.exit_code == 0, r.output
    assert calls == []
    assert "no gpu target" in json.loads((tmp_path / "e.json").read_text())["formats"]["tensorrt"]["skipped"]


# --- real engines ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_builds_and_matches_eager_on_the_gpu(tmp_path, fp16):
    reason = tensorrt_available()
    if reason is not None:
        pytest.skip(reason)
    num_items = 40
    torch.manual_seed(0)
    emb = np.random.default_rng(0).normal(size=(num_items, schema.ITEM_EMB_DIM)).astype(np.float32)
    module = RankerServing(Ranker(RankerConfig(mode="fused"), item_emb=emb).eval()).eval()
    tol = {"probs": 1e-2} if fp16 else 1e-4
    graph = export_onnx(module, tmp_path / "ranker.onnx", num_items, tol, fp16=fp16)
    try:
        res = tensorrt_engine.export_engine(module, graph.path, tmp_path / "model.plan", num_items, fp16=fp16,
                                            tolerance=tol)
    except ParityError as exc:
        pytest.fail(str(exc))
    assert res.report.passed and res.path.stat().st_size > 0
    runner = tensorrt_engine.EngineRunner(res.path)
    case = edge_cases(num_items)["max_candidates"]
    (probs,) = runner(*[torch.from_numpy(case[s.name]) for s in schema.RANKER_INPUTS])
    assert probs.shape == (schema.MAX_CANDIDATES, schema.NUM_HEADS) and np.isfinite(probs).all()
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner(*[torch.from_numpy(np.resize(case[s.name], schema.MAX_CANDIDATES + 1)) if s.name == "cand_idx"
                 else torch.from_numpy(case[s.name]) for s in schema.RANKER_INPUTS])
