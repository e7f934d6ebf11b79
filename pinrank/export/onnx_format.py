"""Eager ranker -> ONNX, with the parity gate run in ONNX Runtime before anything ships.

The TorchScript-based exporter (`dynamo=False`, opset 17: the first with a
native LayerNormalization, which TensorRT maps to its normalization layer
instead of an fp16-fragile chain of reductions).

Axes. The candidate axis N is dynamic, as in the contract. The serving
contract fixes the sequence at L = schema.REALTIME_SEQ_LEN (preprocessing
pads to it, the Triton config says so), but the graph keeps L dynamic as
long as ONNX Runtime matches eager at shorter lengths too: tracing bakes in
Python branches on shapes, so a length the trace never saw can silently take
the wrong one. `export_onnx` probes shorter lengths (longest first), records
the shortest it verified (the realtime encoder's first-k readout slices a
fixed number of tokens, so `early`/`fused` rankers stop at L = first_k) and
falls back to a fixed L when even the first probe fails.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pinrank.backend import schema
from pinrank.export.parity import (
    ParityError,
    ParityReport,
    Tolerance,
    check_parity,
    edge_cases,
)

#: ONNX opset of every exported graph.
OPSET = 17
#: Sequence lengths below the contract's L probed for a dynamic L axis, longest first.
SHORT_SEQ_LENS: tuple[int, ...] = (50, 20, 10, 5, 1)
#: Cases re-run at each probed length (the maximum N adds time, not coverage of L).
_PROBE_CASES = ("one_candidate", "empty_history", "full_history", "unknown_ids")


def input_names() -> list[str]:
    return [s.name for s in schema.RANKER_INPUTS]


def output_names() -> list[str]:
    return [s.name for s in schema.RANKER_OUTPUTS]


def sequence_inputs() -> list[str]:
    """Inputs whose only axis is the realtime sequence (schema.REALTIME_SEQ_LEN)."""
    return [s.name for s in schema.RANKER_INPUTS if s.shape == (schema.REALTIME_SEQ_LEN,)]


def dynamic_axes(seq_dynamic: bool = True) -> dict[str, dict[int, str]]:
    """torch.onnx `dynamic_axes` from the schema: -1 dims are the candidate
    axis `N`; the sequence inputs' axis is `L` when `seq_dynamic`."""
    axes: dict[str, dict[int, str]] = {}
    seq = set(sequence_inputs()) if seq_dynamic else set()
    for s in schema.RANKER_INPUTS + schema.RANKER_OUTPUTS:
        named = {i: "N" for i, d in enumerate(s.shape) if d == -1}
        if s.name in seq:
            named[0] = "L"
        if named:
            axes[s.name] = named
    return axes


class HalfPrecision(nn.Module):
    """Computes in fp16 behind the contract's fp32 inputs and outputs.

    TensorRT 11 builds only strongly typed networks (BuilderFlag.FP16 is
    gone), so an fp16 engine needs an fp16 graph; exporting the half model
    from torch needs no ONNX float16 converter. Integer inputs pass as is.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).half().eval()

    def forward(self, cand_idx: torch.Tensor, user_emb: torch.Tensor, seq_item_idx: torch.Tensor,
                seq_action: torch.Tensor, seq_surface: torch.Tensor, seq_age_h: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        out = self.inner(cand_idx, user_emb.half(), seq_item_idx, seq_action, seq_surface, seq_age_h.half(),
                         context.half())
        return out.float()


def _example_inputs(num_items: int) -> tuple[torch.Tensor, ...]:
    # Several candidates and a partly filled history: N = 1 would let the
    # tracer specialise broadcasting, an empty history the masking.
    case = edge_cases(num_items)["unknown_ids"]
    return tuple(torch.from_numpy(case[n]) for n in input_names())


def to_onnx(module: nn.Module, path: str | Path, num_items: int, *, seq_dynamic: bool = True,
            fp16: bool = False) -> Path:
    """Export without any check (use `export_onnx` for the gated artifact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = HalfPrecision(module) if fp16 else module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer's shape warnings are what the length probe checks for real.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, _example_inputs(num_items), str(path), dynamo=False, opset_version=OPSET,
            input_names=input_names(), output_names=output_names(), dynamic_axes=dynamic_axes(seq_dynamic),
            do_constant_folding=True,
        )
    return path


class OnnxRunner:
    """An ONNX Runtime CPU session called like the eager module (tensors in
    schema.RANKER_INPUTS order) -> outputs in schema.RANKER_OUTPUTS order."""

    def __init__(self, model: str | Path | bytes, threads: int = 1, quiet: bool = False) -> None:
        so = ort.SessionOptions()
        # One request per call and one instance per core: no intra-op pool, no spinning.
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if quiet:  # probing lengths expects failures; they come back as exceptions anyway
            so.log_severity_level = 4
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        got = [i.name for i in self.session.get_inputs()]
        if sorted(got) != sorted(input_names()):
            raise ValueError(f"ONNX graph inputs {got} are not the contract's {input_names()}")
        self.names = input_names()

    def __call__(self, *args: Any) -> list[np.ndarray]:
        feed = {n: (a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)) for n, a in zip(self.names, args)}
        return self.session.run(output_names(), feed)


@dataclass
class SeqAxis:
    """What the exported graph does with the sequence axis."""

    dynamic: bool
    verified: list[int] = field(default_factory=list)  # lengths where ORT matched eager
    failed: dict[int, str] = field(default_factory=dict)  # first failing shorter length -> why

    @property
    def min_verified(self) -> int:
        return min(self.verified) if self.verified else schema.REALTIME_SEQ_LEN

    def to_dict(self) -> dict[str, Any]:
        return {"dynamic": self.dynamic, "contract_len": schema.REALTIME_SEQ_LEN,
                "verified_lens": sorted(self.verified), "min_verified_len": self.min_verified,
                "failed": {str(k): v for k, v in self.failed.items()}}


@dataclass
class OnnxExport:
    path: Path
    report: ParityReport
    seq_axis: SeqAxis
    fp16: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.report.to_dict(), "opset": OPSET, "precision": "fp16" if self.fp16 else "fp32",
                "dynamic_axes": {k: {str(i): n for i, n in v.items()} for k, v in
                                 dynamic_axes(self.seq_axis.dynamic).items()},
                "seq_axis": self.seq_axis.to_dict()}


def probe_seq_lengths(module: nn.Module, runner: OnnxRunner, num_items: int, tolerance: Tolerance,
                      lengths: Sequence[int] | None = None) -> SeqAxis:
    """Run a dynamic-L graph at shorter lengths (default SHORT_SEQ_LENS,
    longest first) until one fails; the graph is kept dynamic only if the
    first one passes."""
    axis = SeqAxis(dynamic=True, verified=[schema.REALTIME_SEQ_LEN])
    for length in SHORT_SEQ_LENS if lengths is None else lengths:
        cases = {k: v for k, v in edge_cases(num_items, seq_len=length).items() if k in _PROBE_CASES}
        try:
            report = check_parity(module, runner, cases, tolerance, fmt=f"onnx L={length}")
        except Exception as exc:  # ORT shape errors: the traced graph cannot run this length
            axis.failed[length] = _short(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            break
        if not report.passed:
            axis.failed[length] = f"differs from eager: {report.failures()}"
            break
        axis.verified.append(length)
    axis.dynamic = len(axis.verified) > 1
    return axis


def _short(msg: str, keep: int = 140) -> str:
    """ORT messages put the useful part (the shapes) last, after a source path."""
    return msg if len(msg) <= 2 * keep else f"{msg[:keep]} ... {msg[-keep:]}"


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_onnx(module: nn.Module, path: str | Path, num_items: int, tolerance: Tolerance = 1e-4, *,
                fp16: bool = False, probe_seq: bool | None = None) -> OnnxExport:
    """Write `path` only if ONNX Runtime matches eager on every edge case.

    `fp16`: the half-precision graph TensorRT builds its fp16 engine from
    (fp32 I/O); its L axis is fixed, since only TensorRT reads it and its
    optimisation profile pins L anyway. `probe_seq` defaults to not `fp16`.
    Raises ParityError (nothing written) when the gate fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    probe_seq = (not fp16) if probe_seq is None else probe_seq
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = "onnx_fp16" if fp16 else "onnx"
    try:
        to_onnx(module, tmp, num_items, seq_dynamic=probe_seq, fp16=fp16)
        axis = SeqAxis(dynamic=False, verified=[schema.REALTIME_SEQ_LEN])
        runner = OnnxRunner(tmp.read_bytes(), quiet=True)
        if probe_seq:
            axis = probe_seq_lengths(module, runner, num_items, tolerance)
            if not axis.dynamic:
                # Why it is fixed stays in axis.failed (and the export report).
                to_onnx(module, tmp, num_items, seq_dynamic=False, fp16=fp16)
                runner = OnnxRunner(tmp.read_bytes(), quiet=True)
        try:
            report = check_parity(module, runner, edge_cases(num_items), tolerance, fmt=fmt)
        except Exception as exc:  # a case ONNX Runtime cannot run fails the gate like a wrong answer
            raise ParityError(f"{fmt}: ONNX Runtime failed on an edge case: {_short(str(exc))}") from exc
        report.raise_if_failed()
        _set_metadata(tmp, {
            "pinrank.schema_version": str(schema.SCHEMA_VERSION),
            "pinrank.precision": "fp16" if fp16 else "fp32",
            "pinrank.seq_len": str(schema.REALTIME_SEQ_LEN),
            "pinrank.seq_len_min_verified": str(axis.min_verified),
        })
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxExport(path, report, axis, fp16)
