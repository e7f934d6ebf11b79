"""What `pinrank export` reads (dataset, user snapshot, ranker checkpoint),
built in seconds without training: export and serving-parity tests check
that formats agree with eager, which random weights exercise as well as
trained ones (and no training run competes for the CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pf_data import START_MS, make_toy_dataset  # tests/ is on sys.path via tests/conftest.py
from pinrank import schema
from pinrank.data.dataset import save_dataset
from pinrank.models.ranker import Ranker, RankerConfig
from pinrank.snapshot import UserSnapshot
from pinrank.train.common import save_checkpoint


@dataclass(frozen=True)
class ExportInputs:
    data: Path
    snapshot: Path
    ranker: Path

    def cli_args(self) -> list[str]:
        return ["--ranker", str(self.ranker), "--snapshot", str(self.snapshot), "--data", str(self.data)]


def make_export_inputs(root: Path, *, mode: str = "fused", num_items: int = 120, num_users: int = 40,
                       seed: int = 0) -> ExportInputs:
    root.mkdir(parents=True, exist_ok=True)
    ds = make_toy_dataset(num_users=num_users, num_items=num_items, actions_per_user=20, seed=seed)
    save_dataset(ds, root / "data")
    torch.manual_seed(seed)
    cfg = RankerConfig(mode=mode)
    ranker = Ranker(cfg, item_emb=ds.item_emb).eval()
    save_checkpoint(root / "ranker.pt", kind="ranker", config={"ranker": cfg.to_dict(), "num_items": ds.num_items},
                    model=ranker)
    rng = np.random.default_rng(seed)
    users = np.unique(ds.actions["user_id"])
    emb = rng.normal(size=(users.size, schema.USER_EMB_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    UserSnapshot(users, emb, emb.mean(0), {"as_of_ms": START_MS, "version": "untrained"}).save(root / "snapshot")
    return ExportInputs(root / "data", root / "snapshot", root / "ranker.pt")
