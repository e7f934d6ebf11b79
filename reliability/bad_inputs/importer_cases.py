"""Importer cases: MovieLens, Taobao and REES46 sources with broken rows,
headers, encodings and timestamps, or missing altogether."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pinrank.data.dataset import DatasetError
from pinrank.data.importers import import_source
from reliability.bad_inputs.broken_files import ML_OK, movielens_dir
from reliability.bad_inputs.case import Case, Context, Outcome
from reliability.bad_inputs.helpers import raises


def _import(fmt: str, src: Callable[[Context], Path]) -> Callable[[Context], Outcome]:
    return raises(lambda ctx: import_source(fmt, src(ctx), ctx.scratch(f"import_out_{fmt}") / "ds"), DatasetError)


def _taobao_file(ctx: Context, name: str, rows: str) -> Path:
    path = ctx.scratch(name) / "UserBehavior.csv"
    path.write_text(rows)
    return path


def _rees46_file(ctx: Context, name: str, rows: str) -> Path:
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    path = ctx.scratch(name) / "2019-Oct.csv"
    path.write_text(header + rows)
    return path


_REES46_ROW = "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde\n"


def importer_cases() -> list[Case]:
    return [
        Case("importer_truncated_csv", "importer", "ratings.csv cut in the middle of a row",
             _import("movielens", lambda ctx: movielens_dir(ctx, "imp_trunc", ML_OK + "3,10")),
             ("ratings.csv:5", "expected 4 columns, got 2")),
        Case("importer_wrong_header", "importer", "ratings.csv with another header",
             _import("movielens", lambda ctx: movielens_dir(ctx, "imp_header", "user,movie,stars,time\n1,10,4,9\n")),
             ("ratings.csv:1", "expected header")),
        Case("importer_not_utf8", "importer", "ratings.csv in a binary encoding",
             _import("movielens", lambda ctx: movielens_dir(ctx, "imp_utf8", b"\xff\xfe\x00u\x00s\x00e\x00r")),
             ("ratings.csv", "not UTF-8")),
        Case("importer_negative_timestamp", "importer", "a rating stamped -5 s",
             _import("movielens", lambda ctx: movielens_dir(ctx, "imp_neg_ts", ML_OK + "3,10,4.0,-5\n")),
             ("ratings.csv:5", "timestamp", "outside the plausible range")),
        Case("importer_nan_rating", "importer", "a NaN rating",
             _import("movielens", lambda ctx: movielens_dir(ctx, "imp_nan", ML_OK + "3,10,nan,964983100\n")),
             ("ratings.csv:5", "rating 'nan'")),
        Case("importer_far_future_timestamp", "importer", "a Taobao event in 2286",
             _import("taobao", lambda ctx: _taobao_file(ctx, "imp_future", "1,100,5,pv,1511544070\n"
                                                        "2,100,5,pv,9999999999\n")),
             ("UserBehavior.csv:2", "outside the plausible range")),
        Case("importer_unknown_behavior", "importer", "Taobao behavior 'like'",
             _import("taobao", lambda ctx: _taobao_file(ctx, "imp_behavior", "1,100,5,like,1511544070\n")),
             ("UserBehavior.csv:1", "unknown behavior_type 'like'")),
        Case("importer_bad_event_time", "importer", "REES46 event_time 'yesterday'",
             _import("rees46", lambda ctx: _rees46_file(ctx, "imp_time", _REES46_ROW.replace(
                 "2019-10-01 00:00:00 UTC", "yesterday"))),
             ("2019-Oct.csv:2", "unparsable event_time 'yesterday'")),
        Case("importer_missing_source", "importer", "a source folder that does not exist",
             _import("taobao", lambda ctx: ctx.workdir / "no-such-source"),
             ("no-such-source", "no such file or directory")),
    ]
