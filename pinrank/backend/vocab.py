"""Raw item id -> dense index, numpy only (used in training and in the
preprocess model). Index 0 is out-of-vocabulary, so index = position + 1 in
the sorted id array; embedding tables built from it have num_items + 1 rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ItemVocab:
    """Sorted-id vocabulary; lookups are one vectorised searchsorted."""

    def __init__(self, item_ids: np.ndarray) -> None:
        ids = np.asarray(item_ids, dtype=np.int64)
        if ids.ndim != 1 or (ids.size > 1 and not (np.diff(ids) > 0).all()):
            raise ValueError("item_ids must be a sorted, unique 1-D array")
        self.item_ids = ids

    def __len__(self) -> int:
        return int(self.item_ids.size)

    @property
    def table_size(self) -> int:
        """Rows an embedding table needs (OOV row included)."""
        return len(self) + 1

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Indices of `ids` (int64), 0 where an id is unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        pos_clipped = np.minimum(pos, len(self) - 1)
        found = (pos < len(self)) & (self.item_ids[pos_clipped] == ids)
        return np.where(found, pos_clipped + 1, 0).astype(np.int64)

    def save(self, path: str | Path) -> None:
        np.save(Path(path), self.item_ids)

    @classmethod
    def load(cls, path: str | Path) -> "ItemVocab":
        """Raises ValueError naming `path` when it is missing, not an integer
        .npy array (pickled object arrays are refused), or unsorted."""
        path = Path(path)
        try:
            ids = np.load(path)  # allow_pickle=False: a vocabulary never needs code
        except FileNotFoundError:
            raise ValueError(f"{path}: item vocabulary missing") from None
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable .npy item vocabulary ({exc})") from None
        if ids.dtype.kind not in "iu":
            raise ValueError(f"{path}: item ids must be integers, got dtype {ids.dtype}")
        try:
            return cls(ids)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
