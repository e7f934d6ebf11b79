"""Training plumbing shared by both models: seeding, curves, reports
(checkpoints: pinrank.models.checkpoints)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator for samplers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def plot_curves(history: dict[str, list[float]], path: str | Path, title: str) -> Path:
    """Write a PNG with one panel per metric series against the training step
    (`history["step"]`, the step each point was logged at; histories saved
    before it was recorded fall back to the logged point's index, labelled so)."""
    import matplotlib  # noqa: PLC0415 - plots are optional output; Agg must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after matplotlib.use("Agg") above

    steps = history.get("step", [])
    names = [k for k, v in history.items() if v and k != "step"]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.4))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        series = history[name]
        if len(steps) == len(series):
            ax.plot(steps, series)
            ax.set_xlabel("training step")
        else:
            ax.plot(series)
            ax.set_xlabel("logged point")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))
    return path


def write_report(out: str | Path, report: dict[str, Any], markdown: str) -> str:
    """Write an evaluation report as OUT (JSON) and OUT with .md; return a one-line summary."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown)
    return f"wrote {out} and {out.with_suffix('.md')} ({report.get('total_seconds', 0):.0f} s)"
