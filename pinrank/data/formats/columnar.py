"""Columnar reading of the large CSV logs (Taobao, REES46, MovieLens
ratings.csv), the fast path of the format readers.

pyarrow streams a file in blocks of BLOCK_SIZE bytes, converting only the
columns a reader needs, and each batch goes through vectorised checks that
accept exactly the rows the row readers (pinrank.data.formats.rows) accept,
with the same values. Whatever the checks cannot vouch for sends the whole
file to the format's row reader instead: a bad row, a pyarrow parse error
(a wrong column count), or bytes the csv module reads differently from
pyarrow (_ScreenedFile). The row reader then names file:line and counts
skipped rows exactly as it always did; clean files, the common case, never
take it.

Columns are read as strings and converted here, not typed by pyarrow: its
integer parser also takes hex ("0x10" -> 16), which int() rejects.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pinrank.data.dataset import DatasetError
from pinrank.data.formats.rawlog import RawLog

#: Bytes pyarrow parses per batch: large enough that per-batch overhead is
#: noise, small enough that a batch's columns stay a few tens of MB.
BLOCK_SIZE = 16 << 20
#: How a format reader reads: the columnar fast path (falling back to the
#: rows per file as above) or the reference row reader alone.
READERS: tuple[str, ...] = ("columnar", "rows")
_BOM = codecs.BOM_UTF8

#: A batch's columns (pyarrow strings) -> the RawLog columns (int64 arrays).
Convert = Callable[[pa.RecordBatch], Mapping[str, np.ndarray]]


class NotClean(Exception):
    """The file holds something only its row reader may judge."""


@dataclass(frozen=True)
class CsvLayout:
    """A comma-separated file: all its columns in order, the ones converted,
    and whether its first line is the header (then it must match byte for
    byte, apart from a UTF-8 byte-order mark)."""

    columns: tuple[str, ...]
    read: tuple[str, ...]
    header: bool


def check_reader(reader: str) -> str:
    if reader not in READERS:
        raise DatasetError(f"unknown reader {reader!r}; expected one of {list(READERS)}")
    return reader


class _ScreenedFile(io.RawIOBase):
    """A file's bytes on their way to pyarrow, screened for what its columns
    cannot show but the row reader (csv module over UTF-8 text) would see:
    bytes that are not UTF-8 (the row reader fails the file), quotes (quoted
    newlines and stray quotes are where the csv module and pyarrow split
    records differently), NUL bytes, a line reaching the csv module's field
    size limit, and a byte-order mark in a headerless file (pyarrow drops
    it; the csv module keeps it in the first field). `problem` says which."""

    def __init__(self, path: Path, bom_ok: bool) -> None:
        super().__init__()
        self._file = open(path, "rb")  # closed by close()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._max_line = csv.field_size_limit()
        self._open_line = 0  # bytes of the line still open at the end of the last block
        self.problem: str | None = None
        if not bom_ok and self._file.read(len(_BOM)) == _BOM:
            self.problem = "byte-order mark in a headerless file"
        self._file.seek(0)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()
        super().close()

    def first_line(self, limit: int) -> bytes:
        """The first line (at most `limit` bytes of it) without its BOM and line end; rewinds."""
        line = self._file.readline(limit + len(_BOM) + 2)
        self._file.seek(0)
        return line.removeprefix(_BOM).removesuffix(b"\n").removesuffix(b"\r")

    def read(self, size: int = -1) -> bytes:
        block = self._file.read(size)
        if self.problem is None:
            self.problem = self._screen(block)
        return block

    def finish(self) -> str | None:
        """Screen what pyarrow left unread (nothing, normally); the problem, if any."""
        while self.problem is None and self.read(BLOCK_SIZE):
            pass
        return self.problem

    def _screen(self, block: bytes) -> str | None:
        try:
            if not block:  # the end of the file
                self._utf8.decode(b"", final=True)  # a sequence cut by the end of file
                return "over-long line" if self._open_line >= self._max_line else None
            # Pending bytes of a sequence split across blocks must meet their tail.
            if not block.isascii() or self._utf8.getstate()[0]:
                self._utf8.decode(block)
        except UnicodeDecodeError:
            return "not UTF-8"
        if b'"' in block or b"\0" in block:
            return "quote or NUL byte"
        return None if self._lines_fit(block) else "over-long line"

    def _lines_fit(self, block: bytes) -> bool:
        """Whether every line ended in `block` stays under the field size
        limit. Between the block's first and last newline it is enough that
        each stretch of half the limit, stepped from the first, holds a
        newline: a few finds per block instead of one per line."""
        first = block.find(b"\n")
        if first < 0:
            self._open_line += len(block)
            return self._open_line < self._max_line
        if self._open_line + first >= self._max_line:
            return False
        last = block.rfind(b"\n")
        half = max(1, self._max_line // 2)
        for start in range(first, last, half):
            if block.find(b"\n", start + 1, start + 1 + half) < 0:
                return False
        self._open_line = len(block) - last - 1
        return True


def read_file(path: Path, layout: CsvLayout, convert: Convert,
              block_size: int | None = None) -> list[Mapping[str, np.ndarray]] | None:
    """The `convert`ed batches of `path` in file order, or None when the file
    must go to the row reader."""
    header = ",".join(layout.columns).encode()
    if not path.is_file():
        return None  # the row reader says what is wrong
    try:
        with _ScreenedFile(path, bom_ok=layout.header) as raw:
            if raw.problem or (layout.header and raw.first_line(len(header)) != header):
                return None
            batches = []
            with pcsv.open_csv(raw, read_options=pcsv.ReadOptions(
                    column_names=list(layout.columns), skip_rows=int(layout.header),
                    block_size=block_size or BLOCK_SIZE), convert_options=pcsv.ConvertOptions(
                    include_columns=list(layout.read), column_types={c: pa.string() for c in layout.read},
                    # No value is null: an empty field is a bad value, as in the row reader.
                    null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
                    check_utf8=False)) as reader:  # check_utf8: the screen checks every byte of the file
                for batch in reader:
                    if raw.problem:
                        return None
                    if batch.num_rows:
                        batches.append(convert(batch))
            if raw.finish():
                return None
    except (NotClean, pa.ArrowInvalid):
        return None
    return batches


def read_log(files: list[Path], log: RawLog, layout: CsvLayout, convert: Convert,
             read_rows: Callable[[Path], None], *, reader: str, block_size: int | None = None) -> None:
    """Each file into `log` in order: columnar where clean (reader
    "columnar"), else by `read_rows`, the format's reference row reader."""
    for path in files:
        batches = read_file(path, layout, convert, block_size) if check_reader(reader) == "columnar" else None
        if batches is None:
            read_rows(path)
            continue
        for columns in batches:
            log.extend(columns)


def utf8_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string column's bytes, and each value's [start, end) offsets in them."""
    if arr.null_count:
        raise NotClean("null value")
    _validity, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    text = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(0, dtype=np.uint8)
    return text[off[0]:off[-1]], off - off[0]


def _plain_ascii(arr: pa.Array, lo: bytes, hi: bytes, but: bytes = b"") -> None:
    """Every value non-empty, its bytes in `lo`..`hi` and none in `but`
    (min/max reductions: no per-byte lookup table)."""
    text, off = utf8_values(arr)
    if len(arr) and (off[1:] == off[:-1]).any():
        raise NotClean("empty value")
    if text.size and (text.min() < ord(lo) or text.max() > ord(hi) or any((text == c).any() for c in but)):
        raise NotClean("unexpected character")


def ids(arr: pa.Array) -> np.ndarray:
    """Ids as int() + parse_id take them: digits only (a sign, space or
    underscore, which int() also takes, go to the row reader); pyarrow's cast
    raises on values past int64, which parse_id rejects too."""
    _plain_ascii(arr, b"0", b"9")
    return pc.cast(arr, pa.int64()).to_numpy()


def decimals(arr: pa.Array) -> np.ndarray:
    """Plain decimals ("4", "3.5", ".5") as float(); other spellings go to the row reader."""
    _plain_ascii(arr, b".", b"9", but=b"/")  # '/' sits between '.' and '0'
    return pc.cast(arr, pa.float64()).to_numpy()


def codes(arr: pa.Array, ids_of: Mapping[str, int]) -> np.ndarray:
    """Each value's id in `ids_of`; a value not in it is a bad row."""
    found = pc.index_in(arr, value_set=pa.array(list(ids_of), pa.string()))
    if found.null_count:
        raise NotClean("unknown value")
    return np.asarray(list(ids_of.values()), dtype=np.int64)[found.to_numpy()]


def within(ms: np.ndarray, ts_range: tuple[int, int]) -> np.ndarray:
    """`ms` if all lie in [lo, hi) (plausible_ts)."""
    lo, hi = ts_range
    if ms.size and (ms.min() < lo or ms.max() >= hi):
        raise NotClean("timestamp outside the range")
    return ms


def unix_ms(arr: pa.Array, ts_range: tuple[int, int]) -> np.ndarray:
    """Unix seconds -> ms as unix_s_to_ms; the range is checked in seconds
    (lo <= 1000 s < hi) so that huge values cannot overflow int64."""
    seconds = ids(arr)
    lo, hi = ts_range
    if seconds.size and (seconds.min() < -(-lo // 1000) or seconds.max() > (hi - 1) // 1000):
        raise NotClean("timestamp outside the range")
    return seconds * 1000
