"""Taobao UserBehavior reader: headerless CSV `user_id,item_id,category_id,
behavior_type,timestamp` (a file, or a folder of *.csv)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pinrank.backend import schema
from pinrank.data.formats import columnar
from pinrank.data.formats.rawlog import RawLog
from pinrank.data.formats.rows import (
    BadRow,
    BadRows,
    csv_rows,
    expect_columns,
    input_files,
    parse_id,
    unix_s_to_ms,
    utc_ms,
)

#: Plausible timestamps [lo, hi) in unix ms: UserBehavior covers
#: 2017-11-25..2017-12-03 China time (UTC+8).
TS_RANGE: tuple[int, int] = (utc_ms(2017, 11, 24, 16), utc_ms(2017, 12, 3, 16))
#: Raw signal -> schema action.
TAOBAO_ACTIONS = {"pv": "click", "fav": "save", "cart": "closeup", "buy": "purchase"}
_TAOBAO_ACTION_IDS = {raw: schema.ACTION_IDS[a] for raw, a in TAOBAO_ACTIONS.items()}
_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
_CSV = columnar.CsvLayout(_COLUMNS, read=_COLUMNS, header=False)


def _rows(path: Path, log: RawLog, bad: BadRows, ts_range: tuple[int, int]) -> None:
    """The reference reader of one file: row by row with the csv module."""
    for line, f in csv_rows(path, None):
        try:
            expect_columns(f, 5)
            user, item, cat = parse_id(f[0], "user_id"), parse_id(f[1], "item_id"), parse_id(f[2], "category_id")
            if f[3] not in TAOBAO_ACTIONS:
                raise BadRow(f"unknown behavior_type {f[3]!r}; expected one of {sorted(TAOBAO_ACTIONS)}")
            log.add(user, item, _TAOBAO_ACTION_IDS[f[3]], unix_s_to_ms(f[4], ts_range), cat)
        except BadRow as exc:
            bad.report(path, line, str(exc))


def _batch(batch: pa.RecordBatch, ts_range: tuple[int, int]) -> dict[str, np.ndarray]:
    """One batch as the RawLog columns; columnar.NotClean where _rows would find a bad row."""
    return {
        "user": columnar.ids(batch.column("user_id")),
        "item": columnar.ids(batch.column("item_id")),
        "category": columnar.ids(batch.column("category_id")),
        "action": columnar.codes(batch.column("behavior_type"), _TAOBAO_ACTION_IDS),
        "ts_ms": columnar.unix_ms(batch.column("timestamp"), ts_range),
    }


def read_taobao(src: Path, bad: BadRows, ts_range: tuple[int, int], *, reader: str = "columnar",
                block_size: int | None = None) -> tuple[RawLog, dict[str, Any]]:
    """The log of `src` (file or folder) with each row's category_id as
    column "category", and meta (mapping, files read). `reader`: see
    columnar.READERS ("rows" is the reference)."""
    log = RawLog(extra=("category",))
    files = input_files(src, "*.csv")
    columnar.read_log(files, log, _CSV, partial(_batch, ts_range=ts_range),
                      partial(_rows, log=log, bad=bad, ts_range=ts_range), reader=reader, block_size=block_size)
    return log, {"mapping": TAOBAO_ACTIONS, "files": [p.name for p in files]}
