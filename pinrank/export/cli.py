"""`pinrank export`: checkpoint -> TorchScript / ONNX / TensorRT (each parity-gated) -> Triton repository."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy
import torch
from tqdm import tqdm

from pinrank.backend import schema
from pinrank.backend.hashing import sha256_of
from pinrank.backend.snapshot import SnapshotError, UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.export import onnx_format, tensorrt_engine  # modules: tests replace functions on them
from pinrank.export.configs import ProfileSettings, parse_instance_counts
from pinrank.export.parity import ParityError
from pinrank.export.publish import write_repository
from pinrank.export.torchscript import export_torchscript
from pinrank.models.ranker import load_serving_module
from pinrank.repository.layout import existing_pipeline
from pinrank.repository.pbtxt import parse_pbtxt

FORMATS = ("torchscript", "onnx", "tensorrt")
DEFAULT_FORMATS = ("torchscript", "onnx")


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("onnx", "onnxruntime", "tensorrt"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # ImportError, or a tensorrt install whose libraries fail to load
            versions[name] = "not installed"
    return versions


def configs_valid(repo: Path) -> bool:
    """Every config.pbtxt under `repo` parses as a Triton ModelConfig."""
    cfgs = list(repo.glob("*/config.pbtxt"))
    if not cfgs:
        return False
    for cfg in cfgs:
        try:
            parse_pbtxt(cfg.read_text())
        except Exception:
            return False
    return True


def _parse_formats(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable and comma-separated (`--formats onnx --formats tensorrt` or `--formats onnx,tensorrt`)."""
    names = [v.strip().lower() for item in value for v in item.split(",") if v.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names)) or DEFAULT_FORMATS


def _required_formats(formats: tuple[str, ...], targets: list[str], cpu_runtime: str, gpu_backend: str) -> set[str]:
    """What must be produced (a failing gate in any of these publishes nothing):
    the formats asked for, plus what the chosen runtimes serve."""
    required = set(formats)
    if "cpu" in targets:
        required.add("onnx" if cpu_runtime == "onnxruntime" else "torchscript")
    if "gpu" in targets:
        required.add("tensorrt" if gpu_backend == "tensorrt" else "torchscript")
    if "tensorrt" in required:
        required.add("onnx")  # engines are built from the ONNX graph
    return required


def _gate_summary(report_dict: dict[str, Any]) -> str:
    diffs = [v for cases in report_dict["max_abs_diff"].values() for v in cases.values()]
    return f"max |diff| {max(diffs):.2e} over {len(diffs)} output x edge cases"


@click.command("export")
@click.option("--ranker", "ranker_ckpt", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="Ranker checkpoint from `pinrank train ranker`.")
@click.option("--snapshot", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="User-embedding snapshot directory from `pinrank embed`.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Dataset directory (its item catalogue is the serving vocabulary).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True,
              help="Repositories are written to OUT/<target>.")
@click.option("--target", type=click.Choice(["cpu", "gpu", "all"]), default="all", show_default=True)
@click.option("--formats", "formats", multiple=True, callback=_parse_formats, metavar="FORMAT[,FORMAT]",
              help="Formats to export and gate: torchscript, onnx, tensorrt (repeat the option or separate "
                   "with commas)  [default: torchscript,onnx]. With a gpu target, TensorRT is also attempted, "
                   "without being required, whenever it is usable here (tensorrt importable and a CUDA GPU); "
                   "naming it where it is not usable is an error. The formats the chosen runtimes serve are "
                   "always produced, and ONNX whenever TensorRT is.")
@click.option("--cpu-runtime", type=click.Choice(["torchscript", "onnxruntime"]), default="onnxruntime",
              show_default=True, help="What runs the ranker in the cpu profile's Python backend. ONNX Runtime "
                                      "is the default: 4-6% faster than TorchScript at N=500-1000 on 1 thread "
                                      "and steadier at p90 (loadtest/bench_ranker_runtime.py, docs/benchmarks.md).")
@click.option("--gpu-backend", type=click.Choice(["python", "libtorch", "tensorrt"]), default="libtorch",
              show_default=True,
              help="The gpu profile's ranker backend. python: ranker.pt in Triton's Python backend on the "
                   "instance's GPU, servable by the bundled server (`pinrank serve`; on a machine without a "
                   "GPU add --model-config-name cpu). libtorch / tensorrt: NVIDIA's Triton container's native "
                   "pytorch_libtorch (ranker.pt) or tensorrt_plan (model.plan; needs TensorRT and a GPU here, "
                   "of the architecture that will serve it).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=False, show_default=True,
              help="--gpu-backend python: capture one CUDA graph per candidate bucket (128, 256, 512, "
                   f"{schema.MAX_CANDIDATES}) at load and pad each request up to its bucket.")
@click.option("--instances", default="2:2:1", show_default=True, metavar="PRE:RANKER:POST",
              help="Instances of preprocess, ranker and postprocess. 2:2:1 serves 25-31% more than 1:1:1 "
                   "on 2 cores but adds ~0.5 ms to an idle server's latency (docs/benchmarks.md).")
@click.option("--pipeline", type=click.Choice(["ensemble", "single"]), default="ensemble", show_default=True,
              help="cpu profile layout: Triton's ensemble of preprocess -> ranker -> postprocess, or one "
                   "Python model running all three (same name and contract; ~1 ms less per request on CPU, "
                   "where every step is a Python stub; docs/benchmarks.md). The gpu profile is always the "
                   "ensemble.")
@click.option("--trt-precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Which TensorRT engine ships as model.plan; both are built and gated.")
@click.option("--trt-opt-candidates", type=click.IntRange(1, schema.MAX_CANDIDATES), default=500,
              show_default=True, help="Candidate count the TensorRT profile is tuned for "
                                      f"(it accepts 1..{schema.MAX_CANDIDATES}).")
@click.option("--results", type=click.Path(path_type=Path), default=Path("results/export.json"),
              show_default=True, help="Where to write the parity/config report.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Max |eager - exported| allowed for FP32 formats (TorchScript, ONNX, TensorRT FP32).")
@click.option("--fp16-tolerance", type=float, default=1e-2, show_default=True,
              help="Max |eager - exported| of the probabilities allowed for the TensorRT FP16 engine.")
def export(ranker_ckpt: Path, snapshot: Path, data: Path, out: Path, target: str, formats: tuple[str, ...],
           cpu_runtime: str, gpu_backend: str, cuda_graphs: bool, instances: str, pipeline: str,
           trt_precision: str, trt_opt_candidates: int, results: Path,
           tolerance: float, fp16_tolerance: float) -> None:
    """Export the ranker, check each format's parity with eager on edge cases
    (1 and MAX candidates, empty/full history, everything inside the mask
    window, unknown ids) and publish a new version of the ensemble into
    OUT/cpu and/or OUT/gpu. A failing gate in any required format publishes
    nothing; results go to --results and each version's manifest.json."""
    try:
        pre_n, ranker_n, post_n = parse_instance_counts(instances)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--instances") from None
    if cuda_graphs and gpu_backend != "python":
        raise click.BadParameter(f"CUDA graphs are for --gpu-backend python, not {gpu_backend}",
                                 param_hint="--cuda-graphs")
    targets = ["cpu", "gpu"] if target == "all" else [target]
    for t in targets:
        present, wanted = existing_pipeline(out / t), (pipeline if t == "cpu" else "ensemble")
        if present is not None and present != wanted:
            raise click.ClickException(f"{out / t} holds the {present} pipeline, not {wanted}: publish into an "
                                       "empty --out (or delete that directory). Nothing was published.")
    required = _required_formats(formats, targets, cpu_runtime, gpu_backend)
    # Checked before anything slow: TensorRT asked for (or served) where it cannot run is a usage error.
    trt_reason = tensorrt_engine.tensorrt_available()
    if "tensorrt" in required and trt_reason is not None:
        why = "--formats tensorrt" if "tensorrt" in formats else "--gpu-backend tensorrt"
        raise click.ClickException(
            f"{why} needs TensorRT, which is unusable here: {trt_reason}. Nothing was published.")
    # Unasked, TensorRT is tried only where a plan could ship: engines take minutes to build.
    auto_trt = trt_reason is None and "gpu" in targets
    attempt = [f for f in FORMATS if f in required or (f == "tensorrt" and auto_trt)]
    if "tensorrt" in attempt and "onnx" not in attempt:
        attempt.insert(attempt.index("tensorrt"), "onnx")
    skipped = {"tensorrt": trt_reason or "not requested and no gpu target (--target)"}

    try:
        ds = load_dataset(data)
        snap = UserSnapshot.load(snapshot)
        module = load_serving_module(ranker_ckpt)
    except (DatasetError, SnapshotError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    vocab = ItemVocab(ds.item_ids)
    table_rows = getattr(module, "num_items", None)
    if table_rows is not None and int(table_rows) != len(vocab):
        raise click.ClickException(
            f"ranker was trained on {int(table_rows)} items but {data} has {len(vocab)}: export with its own dataset"
        )
    (out / ".build").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="export-", dir=out / ".build"))
    started = time.time()
    try:
        produced, entries, parity, extra = _export_formats(
            module, len(vocab), staging, attempt, required, tolerance, fp16_tolerance, trt_precision,
            trt_opt_candidates,
        )
        for f in FORMATS:
            if f not in entries:
                entries[f] = {"skipped": skipped.get(f, "not requested (--formats)")}
        manifest = {
            "source_checkpoint": str(ranker_ckpt),
            "source_checkpoint_sha256": sha256_of(ranker_ckpt),
            "snapshot_version": snap.meta.get("version"),
            "snapshot_as_of_ms": snap.meta.get("as_of_ms"),
            "num_items": len(vocab),
            "schema_version": schema.SCHEMA_VERSION,
            "formats": [f for f in FORMATS if f in produced],
            "artifact_sha256": {path.name: sha256_of(path) for path in produced.values()},
            "libraries": _library_versions(),
            "parity": parity,
            **extra,
            "created_unix": int(started),
        }
        settings = ProfileSettings(cpu_runtime=cpu_runtime, gpu_backend=gpu_backend, cuda_graphs=cuda_graphs,
                                   preprocess_instances=pre_n,
                                   ranker_instances=ranker_n, postprocess_instances=post_n)
        published = {}
        for t in targets:
            pv = write_repository(
                out / t, t, produced.get("torchscript"), vocab, snap, manifest=manifest,
                settings=dataclasses.replace(settings, pipeline=pipeline if t == "cpu" else "ensemble"),
                ranker_onnx=produced.get("onnx"), ranker_plan=produced.get("tensorrt"),
            )
            published[t] = {"repository": str(pv.repository), "version": pv.version}
            runtime = cpu_runtime if t == "cpu" else gpu_backend
            click.echo(f"published {t} profile version {pv.version} ({runtime}) -> {pv.repository}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "formats": entries,
        "configs_valid": all(configs_valid(out / t) for t in targets),
        "published": published,
        "manifest": manifest,
        "seconds": round(time.time() - started, 2),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=2, sort_keys=True))
    click.echo(f"wrote {results}")


def _export_formats(module: Any, num_items: int, staging: Path, attempt: list[str], required: set[str],
                    tolerance: float, fp16_tolerance: float, trt_precision: str, opt_candidates: int
                    ) -> tuple[dict[str, Path], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Export and gate each format in `attempt` (in order).

    Returns (format -> shipped file, results entry per format, manifest
    parity per gate, extra manifest keys). A failure in a `required` format
    raises ClickException; in an optional one (TensorRT attempted because it
    is usable) it is recorded and the format is not shipped.
    """
    produced: dict[str, Path] = {}
    entries: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    def failed(fmt: str, exc: Exception) -> None:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if fmt in required:
            what = "parity gate failed" if isinstance(exc, ParityError) else "export failed"
            raise click.ClickException(f"{fmt}: {what}, nothing published: {msg}")
        entries[fmt] = {"passed": False, "error": msg}
        click.echo(f"warning: optional {fmt} export failed and is not shipped: {msg}", err=True)

    for fmt in tqdm(attempt, desc="export + parity gate", unit="format"):
        if fmt == "torchscript":
            try:
                path, report = export_torchscript(module, staging / "ranker.pt", num_items, tolerance)
            except ParityError as exc:
                failed(fmt, exc)
                continue
            produced[fmt], parity[fmt] = path, report.to_dict()
            entries[fmt] = {"max_abs_diff": parity[fmt]["max_abs_diff"], "passed": report.passed,
                            "tolerance": parity[fmt]["tolerance"]}
            click.echo(f"TorchScript parity: {_gate_summary(parity[fmt])}")
        elif fmt == "onnx":
            try:
                res = onnx_format.export_onnx(module, staging / "ranker.onnx", num_items, tolerance)
            except Exception as exc:  # the exporter itself raises on ops it cannot translate
                failed(fmt, exc if isinstance(exc, ParityError) else RuntimeError(f"{type(exc).__name__}: {exc}"))
                continue
            produced[fmt], parity[fmt] = res.path, res.to_dict()
            entries[fmt] = {k: parity[fmt][k] for k in ("max_abs_diff", "passed", "tolerance", "opset", "seq_axis")}
            extra["onnx"] = {"opset": parity[fmt]["opset"], "dynamic_axes": parity[fmt]["dynamic_axes"],
                             "seq_axis": parity[fmt]["seq_axis"]}
            axis = res.seq_axis
            seq = (f"L dynamic, verified {axis.min_verified}..{schema.REALTIME_SEQ_LEN}" if axis.dynamic
                   else f"L fixed at {schema.REALTIME_SEQ_LEN}")
            click.echo(f"ONNX parity (ONNX Runtime CPU): {_gate_summary(parity[fmt])}; {seq}")
        elif fmt == "tensorrt":
            if "onnx" not in produced:
                failed(fmt, RuntimeError("no gated ONNX graph to build engines from"))
                continue
            fp16_tol = {o: fp16_tolerance for o in onnx_format.output_names()}
            try:
                fp32 = tensorrt_engine.export_engine(module, produced["onnx"], staging / "model_fp32.plan", num_items,
                                                     fp16=False, tolerance=tolerance, opt_candidates=opt_candidates)
                half = onnx_format.export_onnx(module, staging / "ranker_fp16.onnx", num_items, fp16_tol, fp16=True)
                fp16 = tensorrt_engine.export_engine(module, half.path, staging / "model_fp16.plan", num_items,
                                                     fp16=True, tolerance=fp16_tol, opt_candidates=opt_candidates)
            except Exception as exc:  # an optional attempt must not take the other formats down
                failed(fmt, exc if isinstance(exc, (ParityError, tensorrt_engine.EngineBuildError))
                       else RuntimeError(f"{type(exc).__name__}: {exc}"))
                continue
            shipped = fp16 if trt_precision == "fp16" else fp32
            plan = staging / "model.plan"
            shutil.copyfile(shipped.path, plan)
            produced[fmt] = plan
            parity["tensorrt_fp32"], parity["tensorrt_fp16"] = fp32.to_dict(), fp16.to_dict()
            parity["onnx_fp16"] = half.to_dict()
            entries[fmt] = {
                "fp32": {k: parity["tensorrt_fp32"][k] for k in ("max_abs_diff", "passed", "tolerance")},
                "fp16": {k: parity["tensorrt_fp16"][k] for k in ("max_abs_diff", "passed", "tolerance")},
                "passed": fp32.report.passed and fp16.report.passed,
                "shipped": trt_precision,
                "profile": parity["tensorrt_fp32"]["profile"],
            }
            extra["tensorrt"] = {"shipped_precision": trt_precision, "profile": entries[fmt]["profile"],
                                 "gpu": tensorrt_engine.gpu_info()}
            for name, r in (("fp32", parity["tensorrt_fp32"]), ("fp16", parity["tensorrt_fp16"])):
                click.echo(f"TensorRT {name} parity: {_gate_summary(r)}")
    return produced, entries, parity, extra
