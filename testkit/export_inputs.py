"""What `pinrank export` reads (dataset, user snapshot, ranker checkpoint),
built in seconds without training: export, serving-parity and reliability
checks test that formats agree with eager and that the service survives bad
input, which random weights exercise as well as trained ones (and no
training run competes for the CPU).

The one place these fixtures are written: tests, the reliability harness and
its runner all build them here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pinrank.backend import schema
from pinrank.backend.snapshot import UserSnapshot
from pinrank.data.dataset import Dataset, save_dataset
from pinrank.models.checkpoints import RANKER_KIND, ranker_config, save_checkpoint
from pinrank.models.ranker import Ranker, RankerConfig
from testkit.toy_data import START_MS, make_toy_dataset


@dataclass(frozen=True)
class ExportInputs:
    data: Path
    snapshot: Path
    ranker: Path

    def cli_args(self) -> list[str]:
        return ["--ranker", str(self.ranker), "--snapshot", str(self.snapshot), "--data", str(self.data)]


def write_untrained_ranker(path: Path, ds: Dataset, *, mode: str = "fused", seed: int = 0) -> Path:
    """A ranker checkpoint with seeded random weights over `ds`'s items."""
    torch.manual_seed(seed)
    cfg = RankerConfig(mode=mode)
    return save_checkpoint(path, kind=RANKER_KIND, config=ranker_config(cfg.to_dict(), ds.num_items),
                           model=Ranker(cfg, item_emb=ds.item_emb).eval())


def write_random_snapshot(path: Path, user_ids: np.ndarray, *, as_of_ms: int, seed: int = 0,
                          version: str = "untrained", base: np.ndarray | None = None, scale: float = 1.0) -> Path:
    """A user snapshot of random unit embeddings (or `base` moved by noise of `scale`)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(scale=scale, size=(user_ids.size, schema.USER_EMB_DIM)).astype(np.float32)
    emb = noise if base is None else base + noise
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    UserSnapshot(user_ids, emb, emb.mean(0), {"as_of_ms": int(as_of_ms), "version": version}).save(path)
    return path


def make_export_inputs(root: Path, *, mode: str = "fused", num_items: int = 120, num_users: int = 40,
                       seed: int = 0) -> ExportInputs:
    """A toy dataset, an untrained ranker and a random snapshot under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    ds = make_toy_dataset(num_users=num_users, num_items=num_items, actions_per_user=20, seed=seed)
    save_dataset(ds, root / "data")
    write_untrained_ranker(root / "ranker.pt", ds, mode=mode, seed=seed)
    write_random_snapshot(root / "snapshot", np.unique(ds.actions["user_id"]), as_of_ms=START_MS, seed=seed)
    return ExportInputs(root / "data", root / "snapshot", root / "ranker.pt")


def export_args(inputs: ExportInputs, out: Path, *, target: str = "cpu", results: Path | None = None,
                extra: Sequence[str] = ()) -> list[str]:
    """`pinrank export` arguments publishing `inputs` into `out`."""
    args = ["export", *inputs.cli_args(), "--out", str(out), "--target", target]
    if results is not None:
        args += ["--results", str(results)]
    return [*args, *extra]
