"""The daily user-embedding snapshot: what serving reads instead of running
PinnerFormer online. numpy only (the preprocess model loads it).

A snapshot directory holds `user_ids.npy` (int64, sorted, unique),
`user_emb.npy` (float32 [U, USER_EMB_DIM], L2-normalised rows),
`cold_start.npy` (float32 [USER_EMB_DIM], used for unknown users) and
`meta.json` (`as_of_ms`: no action at or after it was used; `version`;
`source_checkpoint`; counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pinrank.backend import schema


class SnapshotError(ValueError):
    """A snapshot directory is missing or malformed."""


@dataclass
class UserSnapshot:
    user_ids: np.ndarray
    user_emb: np.ndarray
    cold_start: np.ndarray
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        if self.user_ids.ndim != 1 or (self.user_ids.size > 1 and not (np.diff(self.user_ids) > 0).all()):
            raise SnapshotError("user_ids must be sorted and unique")
        if self.user_emb.shape != (self.user_ids.size, schema.USER_EMB_DIM):
            raise SnapshotError(
                f"user_emb must be [{self.user_ids.size}, {schema.USER_EMB_DIM}], got {self.user_emb.shape}"
            )
        if self.cold_start.shape != (schema.USER_EMB_DIM,):
            raise SnapshotError(f"cold_start must be [{schema.USER_EMB_DIM}], got {self.cold_start.shape}")
        # A NaN row would reach the ranker and poison every score of that user.
        if not (np.isfinite(self.user_emb).all() and np.isfinite(self.cold_start).all()):
            raise SnapshotError("user_emb / cold_start hold NaN or inf")

    @property
    def as_of_ms(self) -> int:
        return int(self.meta["as_of_ms"])

    def lookup(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings [n, D] for `user_ids` and a bool mask of which were known."""
        ids = np.asarray(user_ids, dtype=np.int64)
        if self.user_ids.size == 0:
            return np.tile(self.cold_start, (ids.size, 1)), np.zeros(ids.size, dtype=bool)
        pos = np.minimum(np.searchsorted(self.user_ids, ids), self.user_ids.size - 1)
        known = self.user_ids[pos] == ids
        emb = np.where(known[:, None], self.user_emb[pos], self.cold_start[None, :])
        return emb.astype(np.float32, copy=False), known

    def save(self, path: str | Path) -> Path:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        np.save(root / "user_ids.npy", self.user_ids.astype(np.int64))
        np.save(root / "user_emb.npy", self.user_emb.astype(np.float32))
        np.save(root / "cold_start.npy", self.cold_start.astype(np.float32))
        (root / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        return root

    @classmethod
    def load(cls, path: str | Path) -> "UserSnapshot":
        root = Path(path)
        try:
            meta = json.loads((root / "meta.json").read_text())
            return cls(
                np.load(root / "user_ids.npy"),
                np.load(root / "user_emb.npy"),
                np.load(root / "cold_start.npy"),
                meta,
            )
        except FileNotFoundError as exc:
            raise SnapshotError(f"{root}: incomplete snapshot ({exc.filename} missing)") from exc
        except (ValueError, EOFError, OSError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{root}: malformed snapshot ({exc})") from exc
