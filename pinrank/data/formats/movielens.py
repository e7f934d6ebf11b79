"""MovieLens reader: whichever release the folder holds.

The CSV releases (ratings.csv, optional movies.csv and tags.csv; UTF-8),
ML-1M / ML-10M (ratings.dat, optional movies.dat and tags.dat,
`::`-separated, latin-1) or ML-100K (u.data tab-separated, optional u.item
with genre flags and u.genre, latin-1). The first record of every MovieLens
file must have the file's layout, or the import stops there naming
file:line (a wrong file fails at once, never after parsing millions of
lines).

ratings.csv (tens of millions of rows in ML-20M/25M) goes through the
columnar reader (pinrank.data.formats.columnar); the other files, and the
`::` and tab-separated releases (ML-10M's 10M ratings.dat included), are
read row by row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pinrank.backend import schema
from pinrank.data.dataset import DatasetError
from pinrank.data.formats import columnar
from pinrank.data.formats.rawlog import RawLog
from pinrank.data.formats.rows import (
    BadRow,
    BadRows,
    csv_rows,
    expect_columns,
    parse_id,
    unix_s_to_ms,
    utc_ms,
)

#: Plausible timestamps [lo, hi) in unix ms: MovieLens started in 1995.
TS_RANGE: tuple[int, int] = (utc_ms(1995, 1, 1), utc_ms(2030, 1, 1))
#: Raw signal -> schema action.
MOVIELENS_ACTIONS = {"rating>=4": "save", "2.5<=rating<=3.5": "click", "rating<=2": "hide", "tag": "closeup"}
_SAVE, _CLICK, _HIDE, _CLOSEUP = (schema.ACTION_IDS[a] for a in ("save", "click", "hide", "closeup"))

#: ML-100K's genre flag order (u.genre), for folders that lack u.genre.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
UNKNOWN_GENRE = "(unknown)"


@dataclass(frozen=True)
class _Layout:
    """How one MovieLens file is laid out; its first record must match."""

    name: str
    columns: tuple[str, ...]
    sep: str
    numeric: tuple[int, ...]  # fields that must hold numbers
    free_text: int | None = None  # a field that may itself contain `sep` (titles, tags)
    csv_header: bool = False  # CSV releases: a header line, quoting, UTF-8

    def describe(self) -> str:
        return f"{self.sep.join(self.columns)!r} ({len(self.columns)} fields separated by {self.sep!r})"


@dataclass(frozen=True)
class _MovieLensVariant:
    """One MovieLens release family: its files and their layouts."""

    name: str
    ratings: _Layout
    tags: _Layout | None
    movies: _Layout
    genre_names: _Layout | None = None  # ML-100K: u.item holds genre flags named by u.genre


_U_ITEM_FIXED = ("movie id", "movie title", "release date", "video release date", "IMDb URL")
MOVIELENS_VARIANTS: tuple[_MovieLensVariant, ...] = (
    _MovieLensVariant(
        "csv",
        ratings=_Layout("ratings.csv", ("userId", "movieId", "rating", "timestamp"), ",", (0, 1, 2, 3),
                        csv_header=True),
        tags=_Layout("tags.csv", ("userId", "movieId", "tag", "timestamp"), ",", (0, 1, 3), csv_header=True),
        movies=_Layout("movies.csv", ("movieId", "title", "genres"), ",", (0,), csv_header=True),
    ),
    _MovieLensVariant(
        "ml-1m/ml-10m",
        ratings=_Layout("ratings.dat", ("UserID", "MovieID", "Rating", "Timestamp"), "::", (0, 1, 2, 3)),
        tags=_Layout("tags.dat", ("UserID", "MovieID", "Tag", "Timestamp"), "::", (0, 1, 3), free_text=2),
        movies=_Layout("movies.dat", ("MovieID", "Title", "Genres"), "::", (0,), free_text=1),
    ),
    _MovieLensVariant(
        "ml-100k",
        ratings=_Layout("u.data", ("user id", "item id", "rating", "timestamp"), "\t", (0, 1, 2, 3)),
        tags=None,
        movies=_Layout("u.item", _U_ITEM_FIXED + ML100K_GENRES, "|",
                       (0, *range(len(_U_ITEM_FIXED), len(_U_ITEM_FIXED) + len(ML100K_GENRES)))),
        genre_names=_Layout("u.genre", ("genre", "index"), "|", (1,)),
    ),
)
_LOOKED_FOR = ", ".join(f"{v.ratings.name} ({v.name})" for v in MOVIELENS_VARIANTS)


def _text_rows(path: Path, layout: _Layout) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line of a `layout.sep`-separated file."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    n_columns = len(layout.columns)
    # latin-1 maps every byte to a character: these releases are latin-1, and
    # no byte sequence can make decoding fail.
    with open(path, encoding="latin-1", newline="") as f:
        for line_no, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            if not text:
                continue
            fields = text.split(layout.sep)
            if layout.free_text is not None and len(fields) > n_columns:
                k, extra = layout.free_text, len(fields) - n_columns
                fields = fields[:k] + [layout.sep.join(fields[k:k + extra + 1])] + fields[k + extra + 1:]
            yield line_no, fields


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _records(path: Path, layout: _Layout) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record of a MovieLens file. A first
    record without the layout's shape rejects the whole file there, whatever
    skip_bad_rows says: it means a wrong file, not a bad row."""
    rows = csv_rows(path, layout.columns) if layout.csv_header else _text_rows(path, layout)
    first = next(rows, None)
    if first is None:
        return
    line, fields = first
    if len(fields) != len(layout.columns) or not all(_is_number(fields[i]) for i in layout.numeric):
        found = layout.sep.join(fields)
        found = found if len(found) <= 120 else found[:117] + "..."
        raise DatasetError(f"{path}:{line}: expected {layout.describe()}, got {found!r}")
    yield first
    yield from rows


def _rating_action(text: str) -> int:
    try:
        rating = float(text)
    except ValueError:
        raise BadRow(f"non-numeric rating {text!r}") from None
    if not (0.5 <= rating <= 5.0) or rating * 2 != math.floor(rating * 2):
        raise BadRow(f"rating {text!r} not a half star in 0.5..5")
    return _SAVE if rating >= 4.0 else (_CLICK if rating >= 2.5 else _HIDE)


def _movielens_variant(src: Path) -> _MovieLensVariant:
    if not src.is_dir():
        raise DatasetError(f"{src}: not a directory (expected a MovieLens folder holding one of {_LOOKED_FOR})")
    for variant in MOVIELENS_VARIANTS:
        if (src / variant.ratings.name).is_file():
            return variant
    raise DatasetError(f"{src}: no MovieLens ratings file; looked for {_LOOKED_FOR}")


def _read_genre_names(path: Path, layout: _Layout) -> tuple[str, ...]:
    """u.genre's `name|index` lines as names in index order (ML100K_GENRES if absent)."""
    if not path.is_file():
        return ML100K_GENRES
    by_index: dict[int, str] = {}
    for line, f in _records(path, layout):
        if len(f) != 2 or not f[1].isdigit():
            raise DatasetError(f"{path}:{line}: expected {layout.describe()}, got {layout.sep.join(f)!r}")
        by_index[int(f[1])] = f[0]
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise DatasetError(f"{path}: genre indices must be 0..n-1, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _rating_rows(path: Path, layout: _Layout, log: RawLog, bad: BadRows, ts_range: tuple[int, int]) -> None:
    """The reference reader of a ratings file: row by row."""
    user_col, item_col = layout.columns[:2]
    for line, f in _records(path, layout):
        try:
            expect_columns(f, 4)
            log.add(parse_id(f[0], user_col), parse_id(f[1], item_col), _rating_action(f[2]),
                    unix_s_to_ms(f[3], ts_range))
        except BadRow as exc:
            bad.report(path, line, str(exc))


def _rating_batch(batch: pa.RecordBatch, ts_range: tuple[int, int]) -> dict[str, np.ndarray]:
    """A ratings.csv batch as the RawLog columns; columnar.NotClean where _rating_rows would find a bad row."""
    rating = columnar.decimals(batch.column("rating"))
    if not ((rating >= 0.5) & (rating <= 5.0) & (rating * 2 == np.floor(rating * 2))).all():
        raise columnar.NotClean("rating not a half star in 0.5..5")
    return {
        "user": columnar.ids(batch.column("userId")),
        "item": columnar.ids(batch.column("movieId")),
        "action": np.where(rating >= 4.0, _SAVE, np.where(rating >= 2.5, _CLICK, _HIDE)),
        "ts_ms": columnar.unix_ms(batch.column("timestamp"), ts_range),
    }


def read_movielens(src: Path, bad: BadRows, ts_range: tuple[int, int], *, reader: str = "columnar",
                   block_size: int | None = None) -> tuple[RawLog, dict[int, str], dict[str, Any]]:
    """The log of `src` (a MovieLens folder), each movie's genre, and meta
    (mapping, variant, files read). `reader`: see columnar.READERS ("rows"
    is the reference); only ratings.csv has a columnar reader."""
    variant = _movielens_variant(src)
    log = RawLog()
    read = [variant.ratings.name]
    layout = variant.ratings
    path = src / layout.name
    rows = partial(_rating_rows, layout=layout, log=log, bad=bad, ts_range=ts_range)
    if layout.csv_header:
        csv_layout = columnar.CsvLayout(layout.columns, read=layout.columns, header=True)
        columnar.read_log([path], log, csv_layout, partial(_rating_batch, ts_range=ts_range), rows,
                          reader=reader, block_size=block_size)
    else:
        columnar.check_reader(reader)
        rows(path)
    user_col, item_col = layout.columns[:2]
    if variant.tags is not None and (src / variant.tags.name).is_file():  # optional in every release
        path = src / variant.tags.name
        read.append(path.name)
        for line, f in _records(path, variant.tags):
            try:
                expect_columns(f, 4)
                log.add(parse_id(f[0], user_col), parse_id(f[1], item_col), _CLOSEUP, unix_s_to_ms(f[3], ts_range))
            except BadRow as exc:
                bad.report(path, line, str(exc))
    genre: dict[int, str] = {}
    layout = variant.movies
    if variant.genre_names is not None:
        names = _read_genre_names(src / variant.genre_names.name, variant.genre_names)
        if (src / variant.genre_names.name).is_file():
            read.append(variant.genre_names.name)
        n_fixed = len(_U_ITEM_FIXED)
        layout = replace(layout, columns=_U_ITEM_FIXED + names,
                         numeric=(0, *range(n_fixed, n_fixed + len(names))))
    path = src / layout.name
    if path.is_file():  # optional: without it every item's genre is unknown
        read.append(path.name)
        for line, f in _records(path, layout):
            try:
                expect_columns(f, len(layout.columns))
                item = parse_id(f[0], layout.columns[0])
                if variant.genre_names is None:
                    genre[item] = f[2].split("|")[0].strip() or "(no genres listed)"
                else:
                    flags = f[len(_U_ITEM_FIXED):]
                    genre[item] = names[flags.index("1")] if "1" in flags else UNKNOWN_GENRE
            except BadRow as exc:
                bad.report(path, line, str(exc))
    return log, genre, {"mapping": MOVIELENS_ACTIONS, "variant": variant.name, "files": read}
