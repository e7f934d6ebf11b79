"""The parity gate: an exported ranker must match eager on the edge cases
serving will see, or nothing is published.

Standalone on purpose (only numpy, torch and pinrank.backend.schema):
export/gpu_smoke.py imports it on a bare GPU box (torch + numpy + the checkout).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch

from pinrank.backend import schema

_NOW_MS = 1_767_225_600_000  # 2026-01-01, a fixed clock keeps cases reproducible

#: One tolerance for every output, or one per output name (schema.RANKER_OUTPUTS).
Tolerance = Union[float, Mapping[str, float]]


class ParityError(RuntimeError):
    """An exported artifact disagrees with the eager model beyond tolerance."""


def output_names() -> list[str]:
    return [s.name for s in schema.RANKER_OUTPUTS]


def _case(rng: np.random.Generator, num_items: int, n: int, length: int, *, max_age_h: float = 24 * 30,
          unknown: bool = False, seq_len: int = schema.REALTIME_SEQ_LEN) -> dict[str, np.ndarray]:
    L = seq_len
    length = min(length, L)
    cand = rng.integers(1, num_items + 1, size=n).astype(np.int64)
    seq_item = np.zeros(L, np.int64)
    seq_action = np.zeros(L, np.int64)
    seq_surface = np.zeros(L, np.int64)
    seq_age = np.zeros(L, np.float32)
    seq_item[:length] = rng.integers(1, num_items + 1, size=length)
    seq_action[:length] = rng.integers(1, schema.NUM_ACTION_IDS, size=length)
    seq_surface[:length] = rng.integers(0, schema.NUM_SURFACE_IDS, size=length)
    seq_age[:length] = np.sort(rng.uniform(0, max_age_h, size=length)).astype(np.float32)
    if unknown:
        cand[::2] = 0
        seq_item[: length : 2] = 0
    user = rng.normal(size=schema.USER_EMB_DIM).astype(np.float32)
    user /= np.linalg.norm(user)
    ctx = rng.uniform(-1, 1, size=schema.CONTEXT_DIM).astype(np.float32)
    return {"cand_idx": cand, "user_emb": user, "seq_item_idx": seq_item, "seq_action": seq_action,
            "seq_surface": seq_surface, "seq_age_h": seq_age, "context": ctx}


def edge_cases(num_items: int, seed: int = 0, seq_len: int = schema.REALTIME_SEQ_LEN
               ) -> dict[str, dict[str, np.ndarray]]:
    """Ranker inputs for: 1 candidate, the maximum, empty and full history,
    every action inside the training mask window, unknown ids.

    `seq_len` other than schema.REALTIME_SEQ_LEN probes a graph's dynamic
    sequence axis; serving always sends the schema's length.
    """
    rng = np.random.default_rng(seed)
    L = seq_len
    return {
        "one_candidate": _case(rng, num_items, 1, 10, seq_len=L),
        "max_candidates": _case(rng, num_items, schema.MAX_CANDIDATES, L, seq_len=L),
        "empty_history": _case(rng, num_items, 50, 0, seq_len=L),
        "full_history": _case(rng, num_items, 50, L, seq_len=L),
        "all_in_mask_window": _case(rng, num_items, 50, L, max_age_h=0.5, seq_len=L),
        "unknown_ids": _case(rng, num_items, 50, 20, unknown=True, seq_len=L),
    }


@dataclass
class ParityReport:
    """Max |eager - exported| per output and case.

    `max_abs_diff` (case -> worst over outputs) is what the gate prints;
    `per_output` (output -> case -> diff) is what results/export.json keeps.
    """

    format: str
    tolerance: Tolerance
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)

    def tolerance_for(self, output: str) -> float:
        if isinstance(self.tolerance, Mapping):
            if output not in self.tolerance:
                raise KeyError(f"{self.format}: no tolerance given for output {output!r}")
            return float(self.tolerance[output])
        return float(self.tolerance)

    def failures(self) -> dict[str, float]:
        """`output/case` (or `case` for reports without per-output detail) -> diff, beyond tolerance."""
        if self.per_output:
            return {f"{o}/{c}": v for o, cases in self.per_output.items() for c, v in cases.items()
                    if not (np.isfinite(v) and v <= self.tolerance_for(o))}
        tol = min(self.tolerance.values()) if isinstance(self.tolerance, Mapping) else float(self.tolerance)
        return {c: v for c, v in self.max_abs_diff.items() if not (np.isfinite(v) and v <= tol)}

    @property
    def passed(self) -> bool:
        return not self.failures()

    def raise_if_failed(self) -> None:
        bad = self.failures()
        if bad:
            raise ParityError(f"{self.format} differs from eager beyond {self._tolerance_text()}: {bad}")

    def _tolerance_text(self) -> str:
        if isinstance(self.tolerance, Mapping):
            return ", ".join(f"{k} {v:g}" for k, v in self.tolerance.items())
        return f"{float(self.tolerance):g}"

    def tolerances(self) -> dict[str, float]:
        names = list(self.per_output) or output_names()
        return {o: self.tolerance_for(o) for o in names}

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: max_abs_diff.<output>.<case>, tolerance.<output>."""
        per_output = self.per_output or {output_names()[0]: dict(self.max_abs_diff)}
        return {"format": self.format, "tolerance": self.tolerances(), "passed": self.passed,
                "max_abs_diff": per_output}


def _as_outputs(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A model's return value (tensor, array, sequence or name->value) -> name -> array."""

    def arr(x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    if isinstance(result, Mapping):
        return {n: arr(result[n]) for n in names if n in result}
    if isinstance(result, (list, tuple)):
        return {n: arr(x) for n, x in zip(names, result)}
    return {names[0]: arr(result)}


def _diff(a: np.ndarray, b: np.ndarray | None) -> float:
    """NaN/inf anywhere in the export, or a shape mismatch, counts as failure."""
    if b is None or a.shape != b.shape or not np.isfinite(b).all():
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def check_parity(eager: Callable[..., Any], exported: Callable[..., Any],
                 cases: dict[str, dict[str, np.ndarray]], tolerance: Tolerance, fmt: str) -> ParityReport:
    """Max |eager - exported| of every schema.RANKER_OUTPUTS output per case.

    Both callables take torch tensors in schema.RANKER_INPUTS order and return
    a tensor/array (one output), a sequence in RANKER_OUTPUTS order, or a
    name -> value mapping. `tolerance` is a float or {output name: float}.
    """
    report = ParityReport(fmt, tolerance)
    names = [s.name for s in schema.RANKER_INPUTS]
    outs = output_names()
    for o in outs:
        report.tolerance_for(o)  # a missing per-output tolerance fails before any work
        report.per_output[o] = {}
    with torch.inference_mode():
        for case, arrays in cases.items():
            args = [torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names]
            a = _as_outputs(eager(*args), outs)
            b = _as_outputs(exported(*args), outs)
            for o in outs:
                report.per_output[o][case] = _diff(a[o], b.get(o))
            report.max_abs_diff[case] = max(report.per_output[o][case] for o in outs)
    return report


@contextlib.contextmanager
def fp32_strict() -> Iterator[None]:
    """IEEE FP32 in torch on CUDA while checking FP32 parity (TF32 off), restored after.

    Ampere+ GPUs round matmul inputs to TF32 (10-bit mantissa) by default in
    cuDNN and, depending on the torch version, cuBLAS: enough to fail a 1e-4
    gate on its own. A no-op on CPU.
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def disable_tf32() -> None:
    """Turn TF32 off for the rest of the process (scripts like export/gpu_smoke.py)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
