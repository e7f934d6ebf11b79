"""ONNX -> TensorRT engine (FP32 and FP16), parity-gated on the GPU it was built for.

Written for the TensorRT Python API of 10.x and 11.x:
- networks are created STRONGLY_TYPED: required for reduced precision in
  11.x (BuilderFlag.FP16 was removed) and accepted by 10.x, so one code path
  serves both. Precision therefore lives in the graph: the FP32 engine is
  built from the FP32 ONNX file, the FP16 engine from the half-precision
  graph `onnx_format.export_onnx(..., fp16=True)` writes (fp32 I/O);
- TF32 is cleared (TensorRT enables it by default), so FP32 means IEEE FP32
  and the 1e-4 gate measures the export, not the tensor cores;
- one optimisation profile derived from the schema: the candidate axis runs
  1 .. OPT_CANDIDATES .. schema.MAX_CANDIDATES, the sequence axis is pinned
  to schema.REALTIME_SEQ_LEN (preprocessing always pads to it; a pinned
  axis lets TensorRT pick kernels for exactly that shape);
- I/O keep the contract's dtypes (int64 ids: TensorRT >= 10 takes INT64 I/O).

Plans are specific to the GPU architecture and TensorRT version that built
them: the export manifest records both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from pinrank.backend import schema
from pinrank.export.parity import (
    ParityReport,
    Tolerance,
    check_parity,
    edge_cases,
    fp32_strict,
)

#: The candidate count TensorRT tunes kernels for (the design's target request is 500).
OPT_CANDIDATES = 500
#: Builder scratch memory; the ranker needs far less, the cap only bounds tactic search.
WORKSPACE_BYTES = 1 << 30
#: Lowest TensorRT major version this module is written for.
MIN_TENSORRT_MAJOR = 10

Shape = tuple[int, ...]


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build/load the engine; the message says why."""


def _tensorrt() -> Any:
    """The tensorrt module, imported on first use: the only import of it."""
    import tensorrt  # noqa: PLC0415 - optional (gpu extra); fails to load without a GPU driver

    return tensorrt


def tensorrt_available() -> str | None:
    """None when engines can be built and run here, otherwise the reason why not."""
    try:
        trt = _tensorrt()
    except ImportError as exc:
        return (f"TensorRT is not importable ({exc}); install the `gpu` extra "
                "(`pip install -e .[gpu]`) on a machine with an NVIDIA GPU")
    except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) raises other errors
        return f"TensorRT failed to import: {type(exc).__name__}: {exc}"
    version = getattr(trt, "__version__", "0")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT_MAJOR:
        return f"TensorRT {version} is too old: the engine builder needs >= {MIN_TENSORRT_MAJOR}"
    if not torch.cuda.is_available():
        return ("no CUDA GPU visible to torch: engines are built and parity-checked on the GPU "
                "they will serve on (torch is also what holds the engine's buffers)")
    return None


@dataclass(frozen=True)
class ProfileShape:
    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_shapes(opt_candidates: int = OPT_CANDIDATES,
                   max_candidates: int = schema.MAX_CANDIDATES) -> dict[str, ProfileShape]:
    """Optimisation-profile shapes for every ranker input, from schema.RANKER_INPUTS.

    -1 dims are the candidate axis: 1 / `opt_candidates` / `max_candidates`;
    fixed dims (the sequence length, embedding widths) are min = opt = max.
    """
    if not 1 <= opt_candidates <= max_candidates:
        raise ValueError(f"need 1 <= opt_candidates ({opt_candidates}) <= max_candidates ({max_candidates})")

    def dims(shape: Shape, n: int) -> Shape:
        return tuple(n if d == -1 else d for d in shape)

    return {
        s.name: ProfileShape(dims(s.shape, 1), dims(s.shape, opt_candidates), dims(s.shape, max_candidates))
        for s in schema.RANKER_INPUTS
    }


def onnx_is_half_precision(onnx_path: str | Path) -> bool:
    """Whether the graph computes in fp16 (any float16 initializer)."""
    model = onnx.load(str(onnx_path))
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def build_engine(onnx_path: str | Path, engine_path: str | Path, fp16: bool, *,
                 opt_candidates: int = OPT_CANDIDATES, workspace_bytes: int = WORKSPACE_BYTES) -> Path:
    """Build a serialized engine (a Triton `model.plan`) from `onnx_path`.

    `fp16` states the precision the graph must have: strongly typed networks
    run each layer in the graph's types, so an fp16 engine comes from the
    half-precision ONNX file and an fp32 one from the fp32 file; a mismatch
    is an error rather than a silently wrong engine. Writes atomically.
    """
    reason = tensorrt_available()
    if reason is not None:
        raise EngineBuildError(reason)
    trt = _tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if onnx_is_half_precision(onnx_path) != fp16:
        want = "half-precision (export_onnx(..., fp16=True))" if fp16 else "fp32"
        raise EngineBuildError(f"{onnx_path}: an {'fp16' if fp16 else 'fp32'} engine needs a {want} graph")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")

    shapes = profile_shapes(opt_candidates)
    got = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if got != sorted(shapes):
        raise EngineBuildError(f"{onnx_path}: inputs {got} are not the contract's {sorted(shapes)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d == -1 for d in tensor.shape):  # static inputs need (and take) no profile entry
            p = shapes[tensor.name]
            profile.set_shape(tensor.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
        tmp.replace(engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    return engine_path


def _torch_dtype(trt_dtype: Any) -> Any:
    trt = _tensorrt()
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if trt_dtype not in table:
        raise EngineBuildError(f"engine tensor type {trt_dtype} has no torch equivalent here")
    return table[trt_dtype]


class EngineRunner:
    """Runs a serialized engine like the eager module: tensors in
    schema.RANKER_INPUTS order in, numpy arrays in RANKER_OUTPUTS order out.

    Buffers are torch CUDA tensors (no pycuda/cuda-python), bound by name with
    set_tensor_address and run with execute_async_v3 on a private stream.
    """

    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        reason = tensorrt_available()
        if reason is not None:
            raise EngineBuildError(reason)
        trt = _tensorrt()
        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise EngineBuildError(
                    f"{engine_path}: TensorRT could not load this plan (built by another TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [s.name for s in schema.RANKER_INPUTS]
        self.outputs = [s.name for s in schema.RANKER_OUTPUTS]
        if sorted(n for n in names if is_input[n]) != sorted(self.inputs) or \
                sorted(n for n in names if not is_input[n]) != sorted(self.outputs):
            raise EngineBuildError(f"{engine_path}: I/O tensors {names} are not the contract's "
                                   f"{self.inputs} -> {self.outputs}")
        self.dtypes = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, *args: Any) -> list[np.ndarray]:
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            keep = []  # the bound buffers must outlive the asynchronous run
            for name, a in zip(self.inputs, args):
                t = torch.as_tensor(a).to(self.device, self.dtypes[name]).contiguous()
                try:
                    ok = self.context.set_input_shape(name, tuple(t.shape))
                except Exception as exc:  # some TensorRT versions raise instead of returning False
                    raise ValueError(f"{name}: shape {tuple(t.shape)} is outside the engine's profile") from exc
                if not ok:
                    raise ValueError(f"{name}: shape {tuple(t.shape)} is outside the engine's profile")
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"{name}: output shape {shape} unresolved after setting input shapes")
                out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outs[name] = out
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
            self.stream.synchronize()
            return [outs[n].float().cpu().numpy() for n in self.outputs]


@dataclass
class EngineExport:
    path: Path
    report: ParityReport
    fp16: bool
    opt_candidates: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.report.to_dict(), "precision": "fp16" if self.fp16 else "fp32",
                "profile": {k: v.to_dict() for k, v in profile_shapes(self.opt_candidates).items()}}


def export_engine(module: Any, onnx_path: str | Path, engine_path: str | Path, num_items: int, *,
                  fp16: bool, tolerance: Tolerance, opt_candidates: int = OPT_CANDIDATES) -> EngineExport:
    """Build an engine and keep it only if it matches eager (on CPU, IEEE FP32)
    on every edge case; raises ParityError (nothing written) otherwise."""
    engine_path = Path(engine_path)
    tmp = engine_path.with_name(f".{engine_path.name}.candidate")
    try:
        build_engine(onnx_path, tmp, fp16, opt_candidates=opt_candidates)
        runner = EngineRunner(tmp)
        with fp32_strict():
            report = check_parity(module.eval(), runner, edge_cases(num_items), tolerance,
                                  fmt="tensorrt_fp16" if fp16 else "tensorrt_fp32")
        report.raise_if_failed()
        tmp.replace(engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    return EngineExport(engine_path, report, fp16, opt_candidates)


def gpu_info() -> dict[str, Any]:
    """The GPU engines are built for (plans only run on this architecture)."""
    if not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda}
