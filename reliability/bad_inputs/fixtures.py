"""The fixtures: a tiny dataset, snapshot, untrained ranker and its export,
the valid inputs the file cases corrupt."""

from __future__ import annotations

import shutil
from functools import cached_property
from pathlib import Path

import numpy as np

from pinrank.backend import schema
from pinrank.data.dataset import load_dataset
from pinrank.data.synthetic import SyntheticConfig, generate
from reliability.bad_inputs.cli_runners import run_pinrank
from testkit.export_inputs import write_random_snapshot, write_untrained_ranker


class Fixtures:
    """Valid inputs the file cases corrupt, built once per workdir (seconds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @cached_property
    def dataset(self) -> Path:
        path = self.root / "data"
        if not (path / "meta.json").exists():
            cfg = SyntheticConfig(users=40, items=150, topics=4, days=6, eval_days=2, seed=0)
            generate(cfg, path, progress=False)
        return path

    @cached_property
    def snapshot(self) -> Path:
        path = self.root / "snapshot"
        if not (path / "meta.json").exists():
            ds = load_dataset(self.dataset)
            write_random_snapshot(path, np.unique(ds.actions["user_id"]), as_of_ms=ds.train_end_ms)
        return path

    @cached_property
    def ranker(self) -> Path:
        path = self.root / "ranker.pt"
        if not path.exists():
            write_untrained_ranker(path, load_dataset(self.dataset))
        return path

    @cached_property
    def repository(self) -> Path:
        """An exported cpu repository (untrained ranker): what `pinrank serve` takes."""
        out = self.root / "repo"
        if not (out / "cpu" / schema.ENSEMBLE_MODEL / "config.pbtxt").exists():
            code, text = run_pinrank(["export", "--ranker", self.ranker, "--snapshot", self.snapshot,
                                      "--data", self.dataset, "--out", out, "--target", "cpu",
                                      "--results", self.root / "export.json"])
            if code != 0:
                raise RuntimeError(f"could not export the fixture repository:\n{text}")
        return out / "cpu"

    def repository_copy(self, dest: Path) -> Path:
        shutil.copytree(self.repository, dest, symlinks=True)
        return dest
