"""The parity gate: an exported ranker must match eager on the edge cases
serving will see, or nothing is published."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pinrank import schema

_HOUR_MS = 3_600_000
_NOW_MS = 1_767_225_600_000  # 2026-01-01, a fixed clock keeps cases reproducible


class ParityError(RuntimeError):
    """An exported artifact disagrees with the eager model beyond tolerance."""


def _case(rng: np.random.Generator, num_items: int, n: int, length: int, *, max_age_h: float = 24 * 30,
          unknown: bool = False) -> dict[str, np.ndarray]:
    L = schema.REALTIME_SEQ_LEN
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


def edge_cases(num_items: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Ranker inputs for: 1 candidate, the maximum, empty and full history,
    every action inside the training mask window, unknown ids."""
    rng = np.random.default_rng(seed)
    L = schema.REALTIME_SEQ_LEN
    return {
        "one_candidate": _case(rng, num_items, 1, 10),
        "max_candidates": _case(rng, num_items, schema.MAX_CANDIDATES, L),
        "empty_history": _case(rng, num_items, 50, 0),
        "full_history": _case(rng, num_items, 50, L),
        "all_in_mask_window": _case(rng, num_items, 50, L, max_age_h=0.5),
        "unknown_ids": _case(rng, num_items, 50, 20, unknown=True),
    }


@dataclass
class ParityReport:
    format: str
    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(np.isfinite(v) and v <= self.tolerance for v in self.max_abs_diff.values())

    def raise_if_failed(self) -> None:
        if not self.passed:
            bad = {k: v for k, v in self.max_abs_diff.items() if not (np.isfinite(v) and v <= self.tolerance)}
            raise ParityError(f"{self.format} differs from eager beyond {self.tolerance:g}: {bad}")

    def to_dict(self) -> dict:
        return {"format": self.format, "tolerance": self.tolerance, "passed": self.passed,
                "max_abs_diff": self.max_abs_diff}


def check_parity(eager: Callable[..., torch.Tensor], exported: Callable[..., torch.Tensor],
                 cases: dict[str, dict[str, np.ndarray]], tolerance: float, fmt: str) -> ParityReport:
    """Max |eager - exported| of the `probs` output per case (NaN counts as failure)."""
    report = ParityReport(fmt, tolerance)
    names = [s.name for s in schema.RANKER_INPUTS]
    with torch.inference_mode():
        for case, arrays in cases.items():
            args = [torch.from_numpy(arrays[n]) for n in names]
            a = eager(*args).numpy()
            b = np.asarray(exported(*args))
            report.max_abs_diff[case] = (
                float(np.abs(a - b).max()) if a.shape == b.shape and np.isfinite(b).all() else float("inf")
            )
    return report
