"""REES46 eCommerce reader: the multi-category store's CSV with a header (a
file, or a folder of monthly *.csv)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pinrank.backend import schema
from pinrank.data.formats.rows import (
    UTC,
    BadRow,
    BadRows,
    RawLog,
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


def read_rees46(src: Path, bad: BadRows,
                ts_range: tuple[int, int]) -> tuple[RawLog, dict[int, int], dict[str, Any]]:
    """The log of `src` (file or folder), each item's first category, and meta (mapping, files read)."""
    log = RawLog()
    category: dict[int, int] = {}
    cache: dict[str, int] = {}
    files = input_files(src, "*.csv")
    for path in files:
        for line, f in csv_rows(path, _REES46_HEADER):
            try:
                expect_columns(f, 9)
                if f[1] not in REES46_ACTIONS:
                    raise BadRow(f"unknown event_type {f[1]!r}; expected one of {sorted(REES46_ACTIONS)}")
                ts = plausible_ts(_rees46_time(f[0], cache), ts_range)
                item, cat, user = parse_id(f[2], "product_id"), parse_id(f[3], "category_id"), parse_id(f[7], "user_id")
                log.add(user, item, _REES46_ACTION_IDS[f[1]], ts)
                category.setdefault(item, cat)
            except BadRow as exc:
                bad.report(path, line, str(exc))
    return log, category, {"mapping": REES46_ACTIONS, "files": [p.name for p in files]}
