"""The parsed log before assembly: int64 columns in file order, filled a row
at a time (the reference row readers) or a batch at a time (the columnar
readers), joined once when assembly asks for a column."""

from __future__ import annotations

from typing import Mapping

import numpy as np

#: Every log's columns: user and item ids, schema action id, unix ms.
COLUMNS: tuple[str, ...] = ("user", "item", "action", "ts_ms")
#: Rows the row readers collect as Python tuples before they become arrays:
#: a Python int costs ~36 bytes against 8 in an array, so a month of logs
#: must not stay in lists.
_ROWS_PER_CHUNK = 65_536


class RawLog:
    """Parsed raw rows: COLUMNS plus the reader's `extra` columns (e.g. the
    row's category), each a list of int64 chunks concatenated on first use."""

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.names: tuple[str, ...] = COLUMNS + extra
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        self._rows: list[tuple[int, ...]] = []
        self._size = 0

    def add(self, *values: int) -> None:
        """One row, its values in `names` order."""
        self._rows.append(values)
        if len(self._rows) >= _ROWS_PER_CHUNK:
            self._flush()

    def extend(self, columns: Mapping[str, np.ndarray]) -> None:
        """A batch of rows after those added so far: one array per name."""
        self._flush()  # rows added one at a time came first in the file
        sizes = {columns[name].shape[0] for name in self.names}
        if len(sizes) != 1:
            raise ValueError(f"columns of unequal length {sorted(sizes)}")
        for name in self.names:
            self._chunks[name].append(np.asarray(columns[name], dtype=np.int64))
        self._size += sizes.pop()

    def _flush(self) -> None:
        if not self._rows:
            return
        block = np.array(self._rows, dtype=np.int64).reshape(len(self._rows), len(self.names))
        for j, name in enumerate(self.names):
            self._chunks[name].append(np.ascontiguousarray(block[:, j]))
        self._size += len(self._rows)
        self._rows = []

    def __len__(self) -> int:
        return self._size + len(self._rows)

    def column(self, name: str) -> np.ndarray:
        """The whole column as one int64 array (later calls reuse it)."""
        self._flush()
        chunks = self._chunks[name]
        if len(chunks) != 1:
            chunks[:] = [np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)]
        return chunks[0]

    def first_per_item(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(item ids sorted, the `name` value of each item's first row in file order)."""
        item_ids, first = np.unique(self.column("item"), return_index=True)
        return item_ids, self.column(name)[first]
