"""What every row reader shares: reading CSV records, parsing ids and
timestamps and bad-row accounting. The row readers are the reference: the
columnar readers (pinrank.data.formats.columnar) accept exactly the rows
these accept, and hand a file to them whenever a row is not clean."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pinrank.data.dataset import DatasetError

UTC = timezone.utc
_INT64_MAX = 2**63 - 1


def utc_ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


class BadRow(Exception):
    """One row cannot be used; the message says why (file and line added later)."""


@dataclass
class BadRows:
    """Either raises on the first bad row or counts them (skip_bad_rows)."""

    skip: bool
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def report(self, path: Path, line: int, why: str) -> None:
        msg = f"{path}:{line}: {why}"
        if not self.skip:
            raise DatasetError(f"{msg} (pass skip_bad_rows=True / --skip-bad-rows to drop bad rows)")
        self.count += 1
        if len(self.examples) < 10:
            self.examples.append(msg)

    def meta(self) -> dict[str, Any]:
        return {"count": self.count, "examples": self.examples, "skipped": self.skip}


def csv_rows(path: Path, header: tuple[str, ...] | None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty CSV record after the header."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            if header is not None:
                first = next(reader, None)
                if first is not None and first and first[0].startswith("\ufeff"):
                    first[0] = first[0][1:]
                if first is None or tuple(first) != header:
                    raise DatasetError(f"{path}:1: expected header {','.join(header)!r}, got {','.join(first or [])!r}")
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise DatasetError(f"{path}: unreadable CSV ({exc})") from exc


def parse_id(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRow(f"non-numeric {what} {text!r}") from None
    if not 0 <= value <= _INT64_MAX:
        raise BadRow(f"{what} {value} out of range")
    return value


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
    except (ValueError, OverflowError, OSError):  # past datetime's years 1..9999
        return str(ms)


def plausible_ts(ms: int, ts_range: tuple[int, int]) -> int:
    lo, hi = ts_range
    if not lo <= ms < hi:
        when = _iso(ms)
        raise BadRow(
            f"timestamp {ms} ms ({when}) outside the plausible range "
            f"{datetime.fromtimestamp(lo / 1000, UTC).date()}..{datetime.fromtimestamp(hi / 1000, UTC).date()}"
        )
    return ms


def unix_s_to_ms(text: str, ts_range: tuple[int, int]) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise BadRow(f"unparsable timestamp {text!r} (expected unix seconds)") from None
    return plausible_ts(seconds * 1000, ts_range)


def expect_columns(fields: list[str], n: int) -> None:
    if len(fields) != n:
        raise BadRow(f"expected {n} columns, got {len(fields)}")


def input_files(src: Path, pattern: str) -> list[Path]:
    """`src` itself if a file, else the files matching `pattern` in it."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DatasetError(f"{src}: no such file or directory")
    found = sorted(src.glob(pattern))
    if not found:
        raise DatasetError(f"{src}: no {pattern} files")
    return found
