"""Importers from public interaction logs (../shared/data formats) to the
dataset format (pinrank.data.dataset).

Each `build_<format>` reads the raw files with its reader
(pinrank.data.formats), builds the catalogue and its topics, and assembles
a Dataset (pinrank.data.assembly: derived impressions, stand-in item
embeddings, tie-breaking and the train split); `import_source` writes one
with save_dataset.

Malformed rows raise DatasetError naming file and line, or with
`skip_bad_rows=True` are dropped and counted in meta["bad_rows"].

The large CSV files are read column by column (pinrank.data.formats.columnar);
`reader="rows"` reads every file with the reference row reader instead,
which gives the same Dataset, slower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from pinrank.data.assembly import assemble
from pinrank.data.cuts import check_split
from pinrank.data.dataset import Dataset, DatasetError, save_dataset
from pinrank.data.formats import movielens, rees46, taobao
from pinrank.data.formats.columnar import check_reader
from pinrank.data.formats.rawlog import RawLog
from pinrank.data.formats.rows import BadRows

FORMATS: tuple[str, ...] = ("movielens", "taobao", "rees46")


def _catalogue_by_category(log: RawLog) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Items sorted by id, each in the category of its first row (in file
    order); topic = rank of the category by row count (ties by id)."""
    item_ids, first, item_rows = np.unique(log.column("item"), return_index=True, return_counts=True)
    cats, cat_of_item = np.unique(log.column("category")[first], return_inverse=True)
    counts = np.bincount(cat_of_item.reshape(-1), weights=item_rows, minlength=cats.size).astype(np.int64)
    ranked = np.lexsort((cats, -counts))
    rank_of = np.empty(cats.size, dtype=np.int64)
    rank_of[ranked] = np.arange(cats.size)
    return item_ids, rank_of[cat_of_item.reshape(-1)], cats[ranked].tolist()


def build_movielens(src: str | Path, *, skip_bad_rows: bool = False, negatives: int = 4, seed: int = 0,
                    train_fraction: float = 0.8, split: str = "global",
                    ts_range: tuple[int, int] | None = None, reader: str = "columnar") -> Dataset:
    """MovieLens folder -> Dataset; the release (CSV, ML-1M/ML-10M .dat,
    ML-100K u.data) is told by which ratings file the folder holds.

    rating >= 4 -> save, 2.5..3.5 -> click, <= 2 -> hide, tag -> closeup;
    topic = the movie's first genre (ids in alphabetical genre order), or
    "(unknown)" when the movies file is absent or lacks the movie.
    """
    check_split(split)
    check_reader(reader)
    bad = BadRows(skip_bad_rows)
    log, genre, extra = movielens.read_movielens(Path(src), bad, ts_range or movielens.TS_RANGE, reader=reader)
    item_ids = np.unique(log.column("item"))
    item_genre = [genre.get(i, movielens.UNKNOWN_GENRE) for i in item_ids.tolist()]
    names = sorted(set(item_genre))
    topic_of = {g: t for t, g in enumerate(names)}
    topic = np.asarray([topic_of[g] for g in item_genre], dtype=np.int64)
    return assemble("movielens", log, item_ids, topic, bad=bad, negatives=negatives, seed=seed,
                    train_fraction=train_fraction, split=split, extra_meta={**extra, "topic_names": names})


def build_taobao(src: str | Path, *, skip_bad_rows: bool = False, negatives: int = 4, seed: int = 0,
                 train_fraction: float = 0.8, split: str = "global",
                 ts_range: tuple[int, int] | None = None, reader: str = "columnar") -> Dataset:
    """Taobao UserBehavior CSV (file, or a folder of *.csv; no header) -> Dataset.

    pv -> click, fav -> save, cart -> closeup, buy -> purchase; topic = the
    category's rank by row count.
    """
    check_split(split)
    check_reader(reader)
    bad = BadRows(skip_bad_rows)
    log, extra = taobao.read_taobao(Path(src), bad, ts_range or taobao.TS_RANGE, reader=reader)
    if not len(log):
        raise DatasetError(f"{src}: no usable rows")
    item_ids, topic, cats = _catalogue_by_category(log)
    return assemble("taobao", log, item_ids, topic, bad=bad, negatives=negatives, seed=seed,
                    train_fraction=train_fraction, split=split, extra_meta={**extra, "topic_categories": cats})


def build_rees46(src: str | Path, *, skip_bad_rows: bool = False, negatives: int = 4, seed: int = 0,
                 train_fraction: float = 0.8, split: str = "global",
                 ts_range: tuple[int, int] | None = None, reader: str = "columnar") -> Dataset:
    """REES46 eCommerce CSV (file, or a folder of monthly *.csv) -> Dataset.

    view -> click, cart -> closeup, purchase -> purchase; topic = the
    category's rank by row count.
    """
    check_split(split)
    check_reader(reader)
    bad = BadRows(skip_bad_rows)
    log, extra = rees46.read_rees46(Path(src), bad, ts_range or rees46.TS_RANGE, reader=reader)
    if not len(log):
        raise DatasetError(f"{src}: no usable rows")
    item_ids, topic, cats = _catalogue_by_category(log)
    return assemble("rees46", log, item_ids, topic, bad=bad, negatives=negatives, seed=seed,
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
