"""REES46 eCommerce reader: the multi-category store's CSV with a header (a
file, or a folder of monthly *.csv)."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pinrank.backend import schema
from pinrank.data.formats import columnar
from pinrank.data.formats.rawlog import RawLog
from pinrank.data.formats.rows import (
    UTC,
    BadRow,
    BadRows,
    csv_rows,
    expect_columns,
    input_files,
    parse_id,
    plausible_ts,
    utc_ms,
)

#: Plausible timestamps [lo, hi) in unix ms: the store's log covers Oct 2019..Apr 2020.
TS_RANGE: tuple[int, int] = (utc_ms(2019, 10, 1), utc_ms(2020, 5, 1))
#: Raw signal -> schema action.
REES46_ACTIONS = {"view": "click", "cart": "closeup", "purchase": "purchase"}
_REES46_ACTION_IDS = {raw: schema.ACTION_IDS[a] for raw, a in REES46_ACTIONS.items()}
_REES46_HEADER = (
    "event_time", "event_type", "product_id", "category_id", "category_code",
    "brand", "price", "user_id", "user_session",
)
_CSV = columnar.CsvLayout(_REES46_HEADER, read=("event_time", "event_type", "product_id", "category_id", "user_id"),
                          header=True)
#: event_time 'YYYY-MM-DD HH:MM:SS UTC': where its digits and other characters stand.
_TIME_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_TIME_OTHERS = np.array([4, 7, 10, 13, 16, 19, 20, 21, 22])
_TIME_OTHER_CHARS = np.frombuffer(b"-- :: UTC", dtype=np.uint8)
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _rees46_time(text: str, cache: dict[str, int]) -> int:
    ms = cache.get(text)
    if ms is None:
        if len(text) != 23 or not text.endswith(" UTC"):
            raise BadRow(f"unparsable event_time {text!r} (expected 'YYYY-MM-DD HH:MM:SS UTC')")
        try:
            when = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            raise BadRow(f"unparsable event_time {text!r} (expected 'YYYY-MM-DD HH:MM:SS UTC')") from None
        ms = cache[text] = int(when.timestamp()) * 1000
    return ms


def _rows(path: Path, log: RawLog, bad: BadRows, ts_range: tuple[int, int], cache: dict[str, int]) -> None:
    """The reference reader of one file: row by row with the csv module."""
    for line, f in csv_rows(path, _REES46_HEADER):
        try:
            expect_columns(f, 9)
            if f[1] not in REES46_ACTIONS:
                raise BadRow(f"unknown event_type {f[1]!r}; expected one of {sorted(REES46_ACTIONS)}")
            ts = plausible_ts(_rees46_time(f[0], cache), ts_range)
            item, cat, user = parse_id(f[2], "product_id"), parse_id(f[3], "category_id"), parse_id(f[7], "user_id")
            log.add(user, item, _REES46_ACTION_IDS[f[1]], ts, cat)
        except BadRow as exc:
            bad.report(path, line, str(exc))


def event_time_ms(arr: pa.Array) -> np.ndarray:
    """event_time values as _rees46_time reads them, for values spelt exactly
    'YYYY-MM-DD HH:MM:SS UTC' (ASCII digits, a real date, seconds < 60);
    columnar.NotClean otherwise: strptime's looser spellings (one-digit
    fields, extra spaces) go to the row reader."""
    text, off = columnar.utf8_values(arr)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not (np.diff(off) == 23).all():
        raise columnar.NotClean("event_time of another length")
    text = text.reshape(n, 23)
    if not (text[:, _TIME_OTHERS] == _TIME_OTHER_CHARS).all():
        raise columnar.NotClean("event_time not 'YYYY-MM-DD HH:MM:SS UTC'")
    d = text[:, _TIME_DIGITS].astype(np.int64) - ord("0")
    if d.min() < 0 or d.max() > 9:
        raise columnar.NotClean("event_time not 'YYYY-MM-DD HH:MM:SS UTC'")
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day, hour, minute, second = (d[:, j] * 10 + d[:, j + 1] for j in range(4, 14, 2))
    if year.min() < 1 or month.min() < 1 or month.max() > 12:
        raise columnar.NotClean("event_time not a date")
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    if (day < 1).any() or (day > _MONTH_DAYS[month - 1] + (leap & (month == 2))).any() or hour.max() > 23 \
            or minute.max() > 59 or second.max() > 59:
        raise columnar.NotClean("event_time not a date")
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
    return (days * 86_400 + hour * 3_600 + minute * 60 + second) * 1000


def _batch(batch: pa.RecordBatch, ts_range: tuple[int, int]) -> dict[str, np.ndarray]:
    """One batch as the RawLog columns; columnar.NotClean where _rows would find a bad row."""
    return {
        "action": columnar.codes(batch.column("event_type"), _REES46_ACTION_IDS),
        "ts_ms": columnar.within(event_time_ms(batch.column("event_time")), ts_range),
        "item": columnar.ids(batch.column("product_id")),
        "category": columnar.ids(batch.column("category_id")),
        "user": columnar.ids(batch.column("user_id")),
    }


def read_rees46(src: Path, bad: BadRows, ts_range: tuple[int, int], *, reader: str = "columnar",
                block_size: int | None = None) -> tuple[RawLog, dict[str, Any]]:
    """The log of `src` (file or folder) with each row's category_id as
    column "category", and meta (mapping, files read). `reader`: see
    columnar.READERS ("rows" is the reference)."""
    log = RawLog(extra=("category",))
    files = input_files(src, "*.csv")
    columnar.read_log(files, log, _CSV, partial(_batch, ts_range=ts_range),
                      partial(_rows, log=log, bad=bad, ts_range=ts_range, cache={}), reader=reader,
                      block_size=block_size)
    return log, {"mapping": REES46_ACTIONS, "files": [p.name for p in files]}
