"""Taobao UserBehavior reader: headerless CSV `user_id,item_id,category_id,
behavior_type,timestamp` (a file, or a folder of *.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pinrank.backend import schema
from pinrank.data.formats.rows import (
    BadRow,
    BadRows,
    RawLog,
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


def read_taobao(src: Path, bad: BadRows,
                ts_range: tuple[int, int]) -> tuple[RawLog, dict[int, int], dict[str, Any]]:
    """The log of `src` (file or folder), each item's first category, and meta (mapping, files read)."""
    log = RawLog()
    category: dict[int, int] = {}
    files = input_files(src, "*.csv")
    for path in files:
        for line, f in csv_rows(path, None):
            try:
                expect_columns(f, 5)
                user, item, cat = parse_id(f[0], "user_id"), parse_id(f[1], "item_id"), parse_id(f[2], "category_id")
                if f[3] not in TAOBAO_ACTIONS:
                    raise BadRow(f"unknown behavior_type {f[3]!r}; expected one of {sorted(TAOBAO_ACTIONS)}")
                log.add(user, item, _TAOBAO_ACTION_IDS[f[3]], unix_s_to_ms(f[4], ts_range))
                category.setdefault(item, cat)
            except BadRow as exc:
                bad.report(path, line, str(exc))
    return log, category, {"mapping": TAOBAO_ACTIONS, "files": [p.name for p in files]}
