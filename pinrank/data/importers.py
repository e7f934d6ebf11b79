"""Importers from public interaction logs (../shared/data formats) to the
dataset format (pinrank.data.dataset).

Each `build_<format>` parses the raw files into a Dataset; `import_source`
writes one with save_dataset.

`movielens` reads whichever release the folder holds: the CSV releases
(ratings.csv, optional movies.csv and tags.csv; UTF-8), ML-1M / ML-10M
(ratings.dat, optional movies.dat and tags.dat, `::`-separated, latin-1) or
ML-100K (u.data tab-separated, optional u.item with genre flags and u.genre,
latin-1). The catalogue is the items in the kept log; items without a known
genre get topic "(unknown)". The first record of every MovieLens file must
have the file's layout, or the import stops there naming file:line (a wrong
file fails at once, never after parsing millions of lines).

What real logs lack is filled in the same way for every format:

- Impressions: each engagement or hide becomes a request holding that item
  (labelled from the action) plus `negatives` catalogue items (unlabelled),
  drawn half uniformly and half by train-period popularity, seeded. The
  request is stamped 1 ms before its action so that "actions before the
  request" can never include the action being predicted.
- Item embeddings (no content embedding exists): a truncated SVD of the
  train-period user-item matrix plus a fixed random projection of the
  item's topic; items unseen in train get the mean of their topic.
- Timestamp ties: logs hold many actions of one user in the same second.
  After sorting each user's rows by (ts, item_id), times are made strictly
  increasing per user, deterministically: ts_i = max(ts_i, ts_{i-1} + 2 ms).
  The step is 2 ms, not 1, because a request is stamped 1 ms before its
  action and histories are the actions strictly before the request: with
  2 ms the previous action is always in the next request's history, so
  "next item" downstream means the next row of the log.
- Split: `train_end_ms` is the `train_fraction` quantile of action times
  (split="global"). With split="per-user" each user's first
  `train_fraction` of actions (at least one, and at least one held out when
  the user has two or more) train, and the user's cut (the time of their
  first held-out action) goes to Dataset.user_train_end_ms; meta
  `train_end_ms` stays the global quantile for code that wants one time.
  Popularity for negatives and the SVD embeddings use the training rows of
  the chosen split.

Malformed rows raise DatasetError naming file and line, or with
`skip_bad_rows=True` are dropped and counted in meta["bad_rows"].
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pinrank.backend import schema
from pinrank.data.dataset import Dataset, DatasetError, save_dataset

FORMATS: tuple[str, ...] = ("movielens", "taobao", "rees46")
SPLITS: tuple[str, ...] = ("global", "per-user")
#: Gap forced between one user's consecutive actions (see the module docstring).
TIE_STEP_MS = 2

_UTC = timezone.utc
_INT64_MAX = 2**63 - 1


def _ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=_UTC).timestamp() * 1000)


#: Default plausible timestamp windows [lo, hi) per format, in unix ms.
#: Taobao UserBehavior covers 2017-11-25..2017-12-03 China time (UTC+8);
#: REES46's multi-category store covers Oct 2019..Apr 2020; MovieLens
#: started in 1995.
TS_RANGES: dict[str, tuple[int, int]] = {
    "movielens": (_ms(1995, 1, 1), _ms(2030, 1, 1)),
    "taobao": (_ms(2017, 11, 24, 16), _ms(2017, 12, 3, 16)),
    "rees46": (_ms(2019, 10, 1), _ms(2020, 5, 1)),
}
#: Raw signal -> schema action, per format.
MOVIELENS_ACTIONS = {"rating>=4": "save", "2.5<=rating<=3.5": "click", "rating<=2": "hide", "tag": "closeup"}
TAOBAO_ACTIONS = {"pv": "click", "fav": "save", "cart": "closeup", "buy": "purchase"}
REES46_ACTIONS = {"view": "click", "cart": "closeup", "purchase": "purchase"}
#: The ranker head an action labels. A purchase is the commerce analogue of
#: a save (the strongest positive), so it labels the save head.
ACTION_HEAD = {"save": "save", "click": "click", "closeup": "closeup", "hide": "hide", "purchase": "save"}
_TAOBAO_ACTION_IDS = {raw: schema.ACTION_IDS[a] for raw, a in TAOBAO_ACTIONS.items()}
_REES46_ACTION_IDS = {raw: schema.ACTION_IDS[a] for raw, a in REES46_ACTIONS.items()}
_SAVE, _CLICK, _HIDE, _CLOSEUP = (schema.ACTION_IDS[a] for a in ("save", "click", "hide", "closeup"))

#: ML-100K's genre flag order (u.genre), for folders that lack u.genre.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
UNKNOWN_GENRE = "(unknown)"
_REES46_HEADER = (
    "event_time", "event_type", "product_id", "category_id", "category_code",
    "brand", "price", "user_id", "user_session",
)


class _BadRow(Exception):
    """One row cannot be used; the message says why (file and line added later)."""


@dataclass
class _BadRows:
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


def _rows(path: Path, header: tuple[str, ...] | None) -> Iterator[tuple[int, list[str]]]:
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


def _id(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _BadRow(f"non-numeric {what} {text!r}") from None
    if not 0 <= value <= _INT64_MAX:
        raise _BadRow(f"{what} {value} out of range")
    return value


def _ts(ms: int, ts_range: tuple[int, int]) -> int:
    lo, hi = ts_range
    if not lo <= ms < hi:
        when = datetime.fromtimestamp(ms / 1000, _UTC).isoformat() if abs(ms) < 2**52 else str(ms)
        raise _BadRow(
            f"timestamp {ms} ms ({when}) outside the plausible range "
            f"{datetime.fromtimestamp(lo / 1000, _UTC).date()}..{datetime.fromtimestamp(hi / 1000, _UTC).date()}"
        )
    return ms


def _unix_s(text: str, ts_range: tuple[int, int]) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise _BadRow(f"unparsable timestamp {text!r} (expected unix seconds)") from None
    return _ts(seconds * 1000, ts_range)


def _expect(fields: list[str], n: int) -> None:
    if len(fields) != n:
        raise _BadRow(f"expected {n} columns, got {len(fields)}")


def _files(src: Path, pattern: str) -> list[Path]:
    """`src` itself if a file, else the files matching `pattern` in it."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DatasetError(f"{src}: no such file or directory")
    found = sorted(src.glob(pattern))
    if not found:
        raise DatasetError(f"{src}: no {pattern} files")
    return found


@dataclass
class _Log:
    """Parsed raw rows before assembly into a Dataset."""

    user: list[int] = field(default_factory=list)
    item: list[int] = field(default_factory=list)
    action: list[int] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)

    def add(self, user: int, item: int, action_id: int, ts_ms: int) -> None:
        self.user.append(user)
        self.item.append(item)
        self.action.append(action_id)
        self.ts_ms.append(ts_ms)


# --- format readers ------------------------------------------------------------


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
    rows = _rows(path, layout.columns) if layout.csv_header else _text_rows(path, layout)
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
        raise _BadRow(f"non-numeric rating {text!r}") from None
    if not (0.5 <= rating <= 5.0) or rating * 2 != math.floor(rating * 2):
        raise _BadRow(f"rating {text!r} not a half star in 0.5..5")
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


def _read_movielens(src: Path, bad: _BadRows, ts_range: tuple[int, int]) -> tuple[_Log, dict[int, str], dict[str, Any]]:
    variant = _movielens_variant(src)
    log = _Log()
    read = [variant.ratings.name]
    layout = variant.ratings
    path = src / layout.name
    user_col, item_col = layout.columns[:2]
    for line, f in _records(path, layout):
        try:
            _expect(f, 4)
            log.add(_id(f[0], user_col), _id(f[1], item_col), _rating_action(f[2]), _unix_s(f[3], ts_range))
        except _BadRow as exc:
            bad.report(path, line, str(exc))
    if variant.tags is not None and (src / variant.tags.name).is_file():  # optional in every release
        path = src / variant.tags.name
        read.append(path.name)
        for line, f in _records(path, variant.tags):
            try:
                _expect(f, 4)
                log.add(_id(f[0], user_col), _id(f[1], item_col), _CLOSEUP, _unix_s(f[3], ts_range))
            except _BadRow as exc:
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
                _expect(f, len(layout.columns))
                item = _id(f[0], layout.columns[0])
                if variant.genre_names is None:
                    genre[item] = f[2].split("|")[0].strip() or "(no genres listed)"
                else:
                    flags = f[len(_U_ITEM_FIXED):]
                    genre[item] = names[flags.index("1")] if "1" in flags else UNKNOWN_GENRE
            except _BadRow as exc:
                bad.report(path, line, str(exc))
    return log, genre, {"mapping": MOVIELENS_ACTIONS, "variant": variant.name, "files": read}


def _read_taobao(src: Path, bad: _BadRows, ts_range: tuple[int, int]) -> tuple[_Log, dict[int, int], dict[str, Any]]:
    log = _Log()
    category: dict[int, int] = {}
    files = _files(src, "*.csv")
    for path in files:
        for line, f in _rows(path, None):
            try:
                _expect(f, 5)
                user, item, cat = _id(f[0], "user_id"), _id(f[1], "item_id"), _id(f[2], "category_id")
                if f[3] not in TAOBAO_ACTIONS:
                    raise _BadRow(f"unknown behavior_type {f[3]!r}; expected one of {sorted(TAOBAO_ACTIONS)}")
                log.add(user, item, _TAOBAO_ACTION_IDS[f[3]], _unix_s(f[4], ts_range))
                category.setdefault(item, cat)
            except _BadRow as exc:
                bad.report(path, line, str(exc))
    return log, category, {"mapping": TAOBAO_ACTIONS, "files": [p.name for p in files]}


def _rees46_time(text: str, cache: dict[str, int]) -> int:
    ms = cache.get(text)
    if ms is None:
        if len(text) != 23 or not text.endswith(" UTC"):
            raise _BadRow(f"unparsable event_time {text!r} (expected 'YYYY-MM-DD HH:MM:SS UTC')")
        try:
            when = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=_UTC)
        except ValueError:
            raise _BadRow(f"unparsable event_time {text!r} (expected 'YYYY-MM-DD HH:MM:SS UTC')") from None
        ms = cache[text] = int(when.timestamp()) * 1000
    return ms


def _read_rees46(src: Path, bad: _BadRows, ts_range: tuple[int, int]) -> tuple[_Log, dict[int, int], dict[str, Any]]:
    log = _Log()
    category: dict[int, int] = {}
    cache: dict[str, int] = {}
    files = _files(src, "*.csv")
    for path in files:
        for line, f in _rows(path, _REES46_HEADER):
            try:
                _expect(f, 9)
                if f[1] not in REES46_ACTIONS:
                    raise _BadRow(f"unknown event_type {f[1]!r}; expected one of {sorted(REES46_ACTIONS)}")
                ts = _ts(_rees46_time(f[0], cache), ts_range)
                item, cat, user = _id(f[2], "product_id"), _id(f[3], "category_id"), _id(f[7], "user_id")
                log.add(user, item, _REES46_ACTION_IDS[f[1]], ts)
                category.setdefault(item, cat)
            except _BadRow as exc:
                bad.report(path, line, str(exc))
    return log, category, {"mapping": REES46_ACTIONS, "files": [p.name for p in files]}


# --- assembly ----------------------------------------------------------------------


class _Sparse:
    """A COO matrix with the two products randomized SVD needs (no scipy in
    the runtime deps): rows pre-sorted so each product is one reduceat."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> None:
        self.shape = shape
        self._fwd = self._prep(rows, cols, vals)
        self._bwd = self._prep(cols, rows, vals)

    @staticmethod
    def _prep(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, ...]:
        order = np.argsort(rows, kind="stable")
        r = rows[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(r)) + 1])
        return r[starts], starts, cols[order], vals[order]

    @staticmethod
    def _mul(prep: tuple[np.ndarray, ...], x: np.ndarray, n_out: int) -> np.ndarray:
        out_rows, starts, cols, vals = prep
        out = np.zeros((n_out, x.shape[1]))
        out[out_rows] = np.add.reduceat(vals[:, None] * x[cols], starts, axis=0)
        return out

    def dot(self, x: np.ndarray) -> np.ndarray:  # A @ x
        return self._mul(self._fwd, x, self.shape[0])

    def tdot(self, x: np.ndarray) -> np.ndarray:  # A.T @ x
        return self._mul(self._bwd, x, self.shape[1])


def _svd_item_factors(users: np.ndarray, items: np.ndarray, n_items: int, k: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Item factors V_k * sqrt(S_k) of the binary user-item matrix, rows
    weighted by 1/sqrt(user degree); randomized SVD (Halko et al.)."""
    out = np.zeros((n_items, k))
    if users.size == 0:
        return out
    pairs = np.unique(users.astype(np.int64) * n_items + items)
    u, i = pairs // n_items, pairs % n_items
    n_users = int(u.max()) + 1
    deg = np.bincount(u, minlength=n_users)
    a = _Sparse(u, i, 1.0 / np.sqrt(deg[u]), (n_users, n_items))
    rank = min(k, n_users, int(np.unique(i).size))
    width = min(rank + 8, n_items)
    y = a.dot(rng.standard_normal((n_items, width)))
    for _ in range(4):  # power iterations sharpen the spectrum
        q, _r = np.linalg.qr(y)
        z, _r = np.linalg.qr(a.tdot(q))
        y = a.dot(z)
    q, _r = np.linalg.qr(y)
    vecs, sing, _vt = np.linalg.svd(a.tdot(q), full_matrices=False)  # (Q^T A)^T = U_b S V_b^T
    factors = vecs[:, :rank] * np.sqrt(sing[:rank])
    # SVD signs are arbitrary; pin them so equal inputs give equal files.
    flip = np.sign(factors[np.abs(factors).argmax(axis=0), np.arange(rank)])
    out[:, :rank] = factors * np.where(flip == 0, 1.0, flip)
    return out


def item_embeddings(item_topic: np.ndarray, train_users: np.ndarray, train_items: np.ndarray,
                    seed: int = 0, dim: int = schema.ITEM_EMB_DIM) -> np.ndarray:
    """Deterministic stand-in content embeddings, float32 [num_items, dim].

    `train_users` / `train_items` are dense indices of train-period
    engagements. Each row = unit-norm SVD factor + 0.7 * a fixed random unit
    vector for the item's topic; items absent from train get their topic's
    mean over train items (or the topic vector alone).
    """
    rng = np.random.default_rng(seed)
    n_items = item_topic.shape[0]
    n_topics = int(item_topic.max()) + 1 if n_items else 0
    topic_vec = rng.standard_normal((n_topics, dim))
    topic_vec /= np.linalg.norm(topic_vec, axis=1, keepdims=True)
    factors = _svd_item_factors(train_users, train_items, n_items, dim, rng)
    norm = np.linalg.norm(factors, axis=1, keepdims=True)
    factors = np.divide(factors, norm, out=np.zeros_like(factors), where=norm > 0)
    emb = factors + 0.7 * topic_vec[item_topic]
    seen = np.zeros(n_items, dtype=bool)
    seen[train_items] = True
    topic_sum = np.zeros((n_topics, dim))
    np.add.at(topic_sum, item_topic[seen], emb[seen])
    topic_n = np.bincount(item_topic[seen], minlength=n_topics)[:, None]
    topic_mean = np.where(topic_n > 0, topic_sum / np.maximum(topic_n, 1), 0.7 * topic_vec)
    emb[~seen] = topic_mean[item_topic[~seen]]
    return emb.astype(np.float32)


def _negatives(rng: np.random.Generator, pos: np.ndarray, n_items: int, k: int,
               popularity: np.ndarray) -> np.ndarray:
    """[len(pos), k] item indices, distinct per row and != pos."""
    n = pos.shape[0]
    cdf = np.cumsum(popularity + 1e-12)
    by_pop = np.minimum(np.searchsorted(cdf, rng.random((n, k)) * cdf[-1], side="right"), n_items - 1)
    neg = np.where(rng.random((n, k)) < 0.5, rng.integers(0, n_items, size=(n, k)), by_pop)
    full = np.concatenate([pos[:, None], neg], axis=1)
    for _ in range(1000):
        order = np.argsort(full, axis=1, kind="stable")
        s = np.take_along_axis(full, order, axis=1)
        dup_sorted = np.zeros(s.shape, dtype=bool)
        dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        dup[:, 0] = False  # the engaged item stays; its duplicates are redrawn
        if not dup.any():
            return full[:, 1:]
        full[dup] = rng.integers(0, n_items, size=int(dup.sum()))
    raise DatasetError("could not draw distinct negatives; catalogue too small for --negatives")


def _strictly_increasing_per_user(user_idx: np.ndarray, starts: np.ndarray, ts: np.ndarray,
                                  step: int = TIE_STEP_MS) -> np.ndarray:
    """ts'_i = max(ts_i, ts'_{i-1} + step) within each user; rows sorted by
    (user, ts). Closed form: ts'_i = step*r + max_{j<=i}(ts_j - step*r_j),
    r the row's rank within its user, so one cumulative max does it."""
    rank = np.arange(ts.size, dtype=np.int64) - starts[user_idx]
    slack = ts - step * rank
    # One running max over all users must not carry one user's max into the
    # next: replace slack by its order-preserving dense level (< n) and lift
    # each user above every earlier one.
    levels, level = np.unique(slack, return_inverse=True)
    lift = user_idx.astype(np.int64) * levels.size
    return levels[np.maximum.accumulate(level.reshape(-1) + lift) - lift] + step * rank


def per_user_cuts(counts: np.ndarray, starts: np.ndarray, ts: np.ndarray, train_fraction: float,
                   end_ms: int) -> np.ndarray:
    """Each user's cut: the time of their first held-out action, after the
    first `train_fraction` of their actions (>= 1 train, >= 1 held out when
    they have two or more); `end_ms` for one-action users (all train). Rows
    sorted by (user, ts) with ts strictly increasing per user."""
    # The epsilon keeps e.g. 0.7 * 10 = 6.9999... from losing an action.
    n_train = np.floor(train_fraction * counts + 1e-9).astype(np.int64)
    n_train = np.clip(n_train, 1, np.maximum(counts - 1, 1))
    held_out = n_train < counts
    cuts = np.full(counts.size, end_ms, dtype=np.int64)
    cuts[held_out] = ts[starts[held_out] + n_train[held_out]]
    return cuts


def _check_split(split: str) -> str:
    """The meta / API spelling of a --split value; raises before any parsing."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split.replace("-", "_")


def _assemble(source: str, log: _Log, item_ids: np.ndarray, item_topic: np.ndarray, *,
              bad: _BadRows, negatives: int, seed: int, train_fraction: float, split: str,
              extra_meta: dict[str, Any]) -> Dataset:
    split_kind = _check_split(split)
    if not log.user:
        raise DatasetError(f"{source}: no usable rows")
    user = np.asarray(log.user, dtype=np.int64)
    item = np.asarray(log.item, dtype=np.int64)
    action = np.asarray(log.action, dtype=np.int64)
    ts = np.asarray(log.ts_ms, dtype=np.int64)
    order = np.lexsort((item, ts, user))
    user, item, action, ts = user[order], item[order], action[order], ts[order]
    user_ids, user_idx, user_counts = np.unique(user, return_inverse=True, return_counts=True)
    user_idx = user_idx.reshape(-1)
    user_starts = np.concatenate([[0], np.cumsum(user_counts)[:-1]]).astype(np.int64)
    ts = _strictly_increasing_per_user(user_idx, user_starts, ts)
    n = ts.shape[0]
    train_end = int(np.sort(ts)[min(n - 1, int(train_fraction * n))])
    if train_end == int(ts.min()):
        train_end += 1  # keep at least one train timestamp on degenerate logs
    user_cuts = None
    if split_kind == "per_user":
        user_cuts = per_user_cuts(user_counts, user_starts, ts, train_fraction, int(ts.max()) + 1)
        in_train = ts < user_cuts[user_idx]
    else:
        in_train = ts < train_end

    item_idx = np.searchsorted(item_ids, item)
    positive = np.isin(action, [schema.ACTION_IDS[a] for a in schema.POSITIVE_ACTIONS])
    train_pos = positive & in_train
    emb = item_embeddings(item_topic, user_idx[train_pos], item_idx[train_pos], seed=seed)

    rng = np.random.default_rng(seed)
    k = max(0, min(negatives, item_ids.shape[0] - 1))
    req_order = np.lexsort((item, user, ts))  # request ids in time order
    r_user, r_item, r_ts, r_action = user[req_order], item_idx[req_order], ts[req_order] - 1, action[req_order]
    popularity = np.bincount(item_idx[train_pos], minlength=item_ids.shape[0]).astype(np.float64)
    negs = _negatives(rng, r_item, item_ids.shape[0], k, popularity)
    n_req = r_user.shape[0]
    head_of = np.zeros(schema.NUM_ACTION_IDS, dtype=np.int64) - 1
    for name, head in ACTION_HEAD.items():
        head_of[schema.ACTION_IDS[name]] = schema.HEADS.index(head)
    labels = np.zeros((n_req, 1 + k, schema.NUM_HEADS), dtype=np.int8)
    labels[np.arange(n_req), 0, head_of[r_action]] = 1
    shown = np.concatenate([r_item[:, None], negs], axis=1)
    surface = schema.SURFACE_IDS["home"]
    impressions = {
        "request_id": np.repeat(np.arange(1, n_req + 1, dtype=np.int64), 1 + k),
        "user_id": np.repeat(r_user, 1 + k),
        "item_id": item_ids[shown.ravel()],
        "ts_ms": np.repeat(r_ts, 1 + k),
        "surface": np.full(n_req * (1 + k), surface, dtype=np.int64),
        "labels": labels.reshape(-1, schema.NUM_HEADS),
    }
    by_type = {a: int((action == schema.ACTION_IDS[a]).sum()) for a in schema.ACTIONS}
    meta = {
        "source": source,
        "seed": seed,
        "start_ms": int(ts.min()),
        "end_ms": int(ts.max()) + 1,
        "train_end_ms": train_end,
        "train_fraction": train_fraction,
        "split": {"kind": split_kind, "train_fraction": train_fraction},
        "tie_break": f"strictly increasing per user (+{TIE_STEP_MS} ms)",
        "num_topics": int(item_topic.max()) + 1,
        "negatives_per_request": k,
        # Impressions are derived (the log has none): one request per action,
        # stamped 1 ms before it, plus `negatives_per_request` sampled items.
        "impressions_derived": True,
        "action_heads": ACTION_HEAD,
        "bad_rows": bad.meta(),
        "counts": {
            "users": int(user_ids.size),
            "items": int(item_ids.shape[0]),
            "actions": n,
            "actions_by_type": {a: c for a, c in by_type.items() if c},
            "train_actions": int(in_train.sum()),
            "requests": n_req,
            "impressions": n_req * (1 + k),
        },
        **extra_meta,
    }
    return Dataset(
        actions={"user_id": user, "item_id": item, "action": action,
                 "surface": np.full(n, surface, dtype=np.int64), "ts_ms": ts,
                 "duration_ms": np.full(n, -1, dtype=np.int64)},
        item_ids=item_ids, item_topic=item_topic.astype(np.int32), item_emb=emb, meta=meta,
        impressions=impressions,
        user_train_end_ms=None if user_cuts is None else {"user_id": user_ids, "train_end_ms": user_cuts},
    )


def _catalogue_by_category(log: _Log, category: dict[int, int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Items sorted by id; topic = rank of the category by row count (ties by id)."""
    item_ids = np.unique(np.asarray(log.item, dtype=np.int64))
    cats = np.asarray([category[int(i)] for i in item_ids], dtype=np.int64)
    rows_cat = np.asarray([category[i] for i in log.item], dtype=np.int64)
    uniq, counts = np.unique(rows_cat, return_counts=True)
    ranked = uniq[np.lexsort((uniq, -counts))]
    rank_of = {int(c): r for r, c in enumerate(ranked)}
    topic = np.asarray([rank_of[int(c)] for c in cats], dtype=np.int64)
    return item_ids, topic, [int(c) for c in ranked]


def build_movielens(src: str | Path, *, skip_bad_rows: bool = False, negatives: int = 4, seed: int = 0,
                    train_fraction: float = 0.8, split: str = "global",
                    ts_range: tuple[int, int] | None = None) -> Dataset:
    """MovieLens folder -> Dataset; the release (CSV, ML-1M/ML-10M .dat,
    ML-100K u.data) is told by which ratings file the folder holds.

    rating >= 4 -> save, 2.5..3.5 -> click, <= 2 -> hide, tag -> closeup;
    topic = the movie's first genre (ids in alphabetical genre order), or
    "(unknown)" when the movies file is absent or lacks the movie.
    """
    _check_split(split)
    bad = _BadRows(skip_bad_rows)
    log, genre, extra = _read_movielens(Path(src), bad, ts_range or TS_RANGES["movielens"])
    item_ids = np.unique(np.asarray(log.item, dtype=np.int64))
    item_genre = [genre.get(i, UNKNOWN_GENRE) for i in item_ids.tolist()]
    names = sorted(set(item_genre))
    topic_of = {g: t for t, g in enumerate(names)}
    topic = np.asarray([topic_of[g] for g in item_genre], dtype=np.int64)
    return _assemble("movielens", log, item_ids, topic, bad=bad, negatives=negatives, seed=seed,
                     train_fraction=train_fraction, split=split, extra_meta={**extra, "topic_names": names})


def build_taobao(src: str | Path, *, skip_bad_rows: bool = False, negatives: int = 4, seed: int = 0,
                 train_fraction: float = 0.8, split: str = "global",
                 ts_range: tuple[int, int] | None = None) -> Dataset:
    """Taobao UserBehavior CSV (file, or a folder of *.csv; no header) -> Dataset.

    pv -> click, fav -> save, cart -> closeup, buy -> purchase; topic = the
    category's rank by row count.
    """
    _check_split(split)
    bad = _BadRows(skip_bad_rows)
    log, category, extra = _read_taobao(Path(src), bad, ts_range or TS_RANGES["taobao"])
    if not log.user:
        raise DatasetError(f"{src}: no usable rows")
    item_ids, topic, cats = _catalogue_by_category(log, category)
    return _assemble("taobao", log, item_ids, topic, bad=bad, negatives=negatives, seed=seed,
                     train_fraction=train_fraction, split=split, extra_meta={**extra, "topic_categories": cats})


def build_rees46(src: str | Path, *, skip_bad_rows: bool = False, negatives: int = 4, seed: int = 0,
                 train_fraction: float = 0.8, split: str = "global",
                 ts_range: tuple[int, int] | None = None) -> Dataset:
    """REES46 eCommerce CSV (file, or a folder of monthly *.csv) -> Dataset.

    view -> click, cart -> closeup, purchase -> purchase; topic = the
    category's rank by row count.
    """
    _check_split(split)
    bad = _BadRows(skip_bad_rows)
    log, category, extra = _read_rees46(Path(src), bad, ts_range or TS_RANGES["rees46"])
    if not log.user:
        raise DatasetError(f"{src}: no usable rows")
    item_ids, topic, cats = _catalogue_by_category(log, category)
    return _assemble("rees46", log, item_ids, topic, bad=bad, negatives=negatives, seed=seed,
                     train_fraction=train_fraction, split=split, extra_meta={**extra, "topic_categories": cats})


BUILDERS: dict[str, Callable[..., Dataset]] = {
    "movielens": build_movielens,
    "taobao": build_taobao,
    "rees46": build_rees46,
}


def import_source(fmt: str, src: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """Parse `src` in format `fmt` (one of FORMATS) and write the dataset to
    `out_dir`; options go to the build_<fmt> function."""
    if fmt not in BUILDERS:
        raise DatasetError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    return save_dataset(BUILDERS[fmt](src, **options), out_dir)
