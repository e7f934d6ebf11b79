"""Eager ranker -> TorchScript, with the parity gate run before anything ships."""

from __future__ import annotations

from pathlib import Path

import torch

from pinrank.export.parity import ParityReport, check_parity, edge_cases


def to_torchscript(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script the serving module (keeps the dynamic candidate axis exact).

    Scripting, not tracing: tracing bakes in shapes and Python branches (and
    nn.TransformerEncoder's fast path fails its own trace check).
    """
    return torch.jit.script(module.eval())


def export_torchscript(
    module: torch.nn.Module, path: str | Path, num_items: int, tolerance: float = 1e-4
) -> tuple[Path, ParityReport]:
    """Write `path` only if TorchScript matches eager on every edge case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = to_torchscript(module)
    tmp = path.with_name(f".{path.name}.tmp")
    scripted.save(str(tmp))
    loaded = torch.jit.load(str(tmp), map_location="cpu").eval()
    report = check_parity(module.eval(), loaded, edge_cases(num_items), tolerance, fmt="torchscript")
    if not report.passed:
        tmp.unlink(missing_ok=True)
        report.raise_if_failed()
    tmp.replace(path)
    return path, report
