"""The columnar readers against the reference row readers: the same dataset
files for generated logs (several files, several batches a file, items in
several categories, bad rows kept or skipped), the same errors, and the
same outcome for every byte-level quirk where pyarrow and the csv module
could disagree."""

from __future__ import annotations

import importlib.util
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from pinrank.data.dataset import Dataset, DatasetError, save_dataset
from pinrank.data.formats import columnar, movielens, rees46, taobao
from pinrank.data.formats.rawlog import RawLog
from pinrank.data.formats.rows import BadRows
from pinrank.data.importers import build_movielens, build_rees46, build_taobao

REES_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
ML_HEADER = "userId,movieId,rating,timestamp"


def taobao_lines(rng: random.Random, n: int) -> list[str]:
    """UserBehavior rows; one row in ten puts its item in another category."""
    lo = int(datetime(2017, 11, 25, tzinfo=timezone.utc).timestamp())
    rows = []
    for _ in range(n):
        item = rng.randrange(1, 400)
        cat = item % 17 + 100 if rng.random() > 0.1 else rng.randrange(200, 205)
        behavior = rng.choices(["pv", "fav", "cart", "buy"], [85, 5, 6, 4])[0]
        rows.append(f"{rng.randrange(1, 80)},{item},{cat},{behavior},{lo + rng.randrange(8 * 86_400)}")
    return rows


def rees46_lines(rng: random.Random, n: int) -> list[str]:
    """eCommerce rows with REES46's look: 19-digit categories, empty codes and brands."""
    lo = int(datetime(2019, 10, 1, tzinfo=timezone.utc).timestamp())
    rows = []
    for _ in range(n):
        item = rng.randrange(1_000_000, 1_000_300)
        cat = 2_053_013_552_326_770_000 + item % 13 if rng.random() > 0.1 else 2_232_732_093_077_520_000 + item % 3
        when = datetime.fromtimestamp(lo + rng.randrange(60 * 86_400), timezone.utc)
        code = rng.choice(["", "appliances.kitchen.mixer", "electronics.smartphone"])
        brand = rng.choice(["", "aqua", "shiseido", "apple"])
        rows.append(f"{when:%Y-%m-%d %H:%M:%S} UTC,{rng.choice(['view'] * 8 + ['cart', 'purchase'])},{item},{cat},"
                    f"{code},{brand},{rng.randrange(100, 99_999) / 100:.2f},{rng.randrange(500_000_000, 500_000_090)},"
                    f"{rng.getrandbits(128):032x}")
    return rows


def ml_lines(rng: random.Random, n: int) -> list[str]:
    lo = int(datetime(1996, 1, 1, tzinfo=timezone.utc).timestamp())
    stars, span = ["0.5", "1.0", "2.5", "3", "4.0", "4.5", "5.0"], 20 * 365 * 86_400
    return [f"{rng.randrange(1, 70)},{rng.randrange(1, 500)},{rng.choice(stars)},{lo + rng.randrange(span)}"
            for _ in range(n)]


def write(path: Path, lines: list[str], header: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{x}\n" for x in ([header] if header else []) + lines).encode())
    return path


def saved(ds: Dataset, out: Path) -> dict[str, bytes]:
    save_dataset(ds, out)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def same_outcome(build: Callable[..., Dataset], src: Path, out: Path, **options) -> str | None:
    """Build `src` with both readers and assert the same files or the same
    error; the error message, if any."""
    outcomes = []
    for reader in columnar.READERS:
        try:
            outcomes.append(saved(build(src, reader=reader, negatives=2, **options), out / reader))
        except DatasetError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    return outcomes[0] if isinstance(outcomes[0], str) else None


@pytest.fixture
def small_blocks(monkeypatch):
    """Batches of 4 KiB: every generated file spans several of them."""
    monkeypatch.setattr(columnar, "BLOCK_SIZE", 4096)


@pytest.fixture
def rows_forbidden(monkeypatch):
    """Clean files must never reach a row reader."""
    def fail(*args, **kwargs):
        raise AssertionError("a clean file went to the row reader")
    for module, name in ((taobao, "_rows"), (rees46, "_rows"), (movielens, "_rating_rows")):
        monkeypatch.setattr(module, name, fail)


# --- the same datasets -------------------------------------------------------------

#: Per format: builder, file name, lines, header, bad rows (each kind the row readers know).
FORMATS = {
    "taobao": (build_taobao, "part{}.csv", taobao_lines, None,
               ["1,2,3,like,1511600000", "x,2,3,pv,1511600000", "1,2,3,pv", "1,-2,3,pv,1511600000",
                "1,2,3,pv,1511600000000", "1,2,99999999999999999999,pv,1511600000"]),
    "rees46": (build_rees46, "2019-{}.csv", rees46_lines, REES_HEADER,
               ["2019-10-01 00:00:00 UTC,remove_from_cart,1,2,,,1.0,3,s", "2019-02-30 00:00:00 UTC,view,1,2,,,1.0,3,s",
                "2019-10-01T00:00:00Z,view,1,2,,,1.0,3,s", "2019-10-01 00:00:00 UTC,view,1,2,,,1.0,3",
                "2015-10-01 00:00:00 UTC,view,1,2,,,1.0,3,s", "2019-10-01 00:00:00 UTC,view,1,,,,1.0,3,s"]),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("bad_rows", [0, 1, 14])
@pytest.mark.parametrize("split", ["global", "per-user"])
def test_columnar_and_row_readers_write_the_same_dataset(tmp_path, small_blocks, fmt, bad_rows, split):
    build, name, lines, header, bad_examples = FORMATS[fmt]
    rng = random.Random(bad_rows)
    files = [[*lines(rng, 1500)] for _ in range(3)]
    for k, row in enumerate(rng.sample(range(1500), bad_rows)):  # in files 1 and 2; file 0 stays clean
        files[1 + k % 2][row] = bad_examples[k % len(bad_examples)]
    for i, rows in enumerate(files):
        write(tmp_path / "src" / name.format(i), rows, header)
    error = same_outcome(build, tmp_path / "src", tmp_path / "strict", split=split)
    assert (error is None) == (bad_rows == 0)
    assert same_outcome(build, tmp_path / "src", tmp_path / "skip", split=split, skip_bad_rows=True) is None
    ds = build(tmp_path / "src", skip_bad_rows=True)
    assert ds.meta["bad_rows"]["count"] == bad_rows and len(ds.meta["bad_rows"]["examples"]) == min(bad_rows, 10)
    assert ds.actions["ts_ms"].size == 4500 - bad_rows


def test_clean_files_never_take_the_row_reader(tmp_path, small_blocks, rows_forbidden):
    rng = random.Random(0)
    build_taobao(write(tmp_path / "ub.csv", taobao_lines(rng, 2000)), negatives=1)
    build_rees46(write(tmp_path / "rees.csv", rees46_lines(rng, 2000), REES_HEADER), negatives=1)
    build_movielens(write(tmp_path / "ml" / "ratings.csv", ml_lines(rng, 2000), ML_HEADER).parent, negatives=1)


def test_movielens_ratings_csv(tmp_path, small_blocks):
    rng = random.Random(1)
    ml = tmp_path / "ml"
    write(ml / "ratings.csv", ml_lines(rng, 3000), ML_HEADER)
    write(ml / "tags.csv", ['3,10,"funny, quotable",964995000', "4,11,dark,964995100"], "userId,movieId,tag,timestamp")
    write(ml / "movies.csv", [f"{i},M{i} (1999),{['Comedy', 'Drama|Action', 'Horror'][i % 3]}" for i in range(1, 400)],
          "movieId,title,genres")
    assert same_outcome(build_movielens, ml, tmp_path / "ok") is None
    rows = (ml / "ratings.csv").read_text().splitlines()
    for line, bad in [(1500, "1,10,4.2,964982703"), (2000, "1,10,0.0,964982703"), (2500, "1,10,nan,964982703")]:
        rows[line - 1] = bad
    write(ml / "ratings.csv", rows)
    assert same_outcome(build_movielens, ml, tmp_path / "bad").startswith(f"{ml / 'ratings.csv'}:1500: rating '4.2'")
    assert same_outcome(build_movielens, ml, tmp_path / "skip", skip_bad_rows=True) is None


# --- exact errors and batches --------------------------------------------------------


def test_bad_row_deep_in_a_large_file_names_its_line(tmp_path):
    rows = taobao_lines(random.Random(2), 60_000)
    rows[41_236] = "1,2,3,pv,1511600000,extra"
    src = write(tmp_path / "ub.csv", rows)
    with pytest.raises(DatasetError, match=r"ub.csv:41237: expected 5 columns, got 6 \(pass skip_bad_rows"):
        build_taobao(src)
    ds = build_taobao(src, skip_bad_rows=True, negatives=1)
    assert ds.meta["bad_rows"]["examples"] == [f"{src}:41237: expected 5 columns, got 6"]
    assert ds.actions["ts_ms"].size == 59_999

    lines = rees46_lines(random.Random(3), 30_000)
    lines[22_000] = lines[22_000].replace(" UTC,", " UTC,like,", 1).replace(",view,", ",", 1)
    src = write(tmp_path / "rees.csv", lines, REES_HEADER)
    with pytest.raises(DatasetError, match=r"rees.csv:22002: unknown event_type"):  # line 1 is the header
        build_rees46(src)


def test_a_file_spans_many_batches(tmp_path):
    src = write(tmp_path / "ub.csv", taobao_lines(random.Random(4), 5000))
    batches = columnar.read_file(src, taobao._CSV, lambda b: taobao._batch(b, taobao.TS_RANGE), block_size=1000)
    assert batches is not None and len(batches) > 100  # ~30 rows a batch, rows cut at block edges
    rows_log, _ = taobao.read_taobao(src, BadRows(False), taobao.TS_RANGE, reader="rows")
    for name in rows_log.names:
        assert np.array_equal(np.concatenate([b[name] for b in batches]), rows_log.column(name)), name
    columnar_log, _ = taobao.read_taobao(src, BadRows(False), taobao.TS_RANGE, block_size=1000)
    assert all(np.array_equal(columnar_log.column(n), rows_log.column(n)) for n in rows_log.names)


# --- quirks: the same outcome either way ---------------------------------------------

_TB = "1,100,7,pv,1511600000"
_RE = "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7"


@pytest.mark.parametrize("data", [
    pytest.param(f'{_TB}\n2,200,8,"pv",1511600100\n'.encode(), id="quoted-value"),
    pytest.param(f'{_TB}\n"2,200",8,pv,1511600100\n'.encode(), id="quoted-comma"),
    pytest.param(b"\xef\xbb\xbf" + f"{_TB}\n".encode(), id="bom-no-header"),
    pytest.param(f"{_TB}\n0x10,200,8,pv,1511600100\n".encode(), id="hex-id"),
    pytest.param(f"{_TB}\n 2,+200,8,pv,1_511_600_100\n".encode(), id="int-spellings"),
    pytest.param(f"{_TB}\n9223372036854775807,200,8,pv,1511600100\n".encode(), id="max-id"),
    pytest.param(f"{_TB}\n9223372036854775808,200,8,pv,1511600100\n".encode(), id="past-int64"),
    pytest.param(f"{_TB}\n2,200,8,pv,-1511600100\n".encode(), id="negative-ts"),
    pytest.param(f"{_TB}\n2,200,8,pv,99999999999999999\n".encode(), id="huge-ts"),
    pytest.param(f"{_TB}\n2,200,,pv,1511600100\n".encode(), id="empty-id"),
    pytest.param(f"{_TB}\r\n\r\n2,200,8,buy,1511600100\r3,300,8,fav,1511600200".encode(), id="line-ends"),
    pytest.param(f"{_TB}\n2,200,8,pv ,1511600100\n".encode(), id="space-in-action"),
    pytest.param(f"{_TB}\n2,200,8,p\0v,1511600100\n".encode(), id="nul"),
    pytest.param(f"{_TB}\n2,200,8,pv,15116\xe9\n".encode("latin-1"), id="not-utf8"),
    pytest.param(f"{_TB}\n\u0662,200,8,pv,1511600100\n".encode(), id="unicode-digit"),
    pytest.param(b"", id="empty-file"),
    pytest.param(b"\n\n", id="blank-lines"),
])
def test_taobao_quirks(tmp_path, data):
    (tmp_path / "ub.csv").write_bytes(data)
    for skip in (False, True):
        same_outcome(build_taobao, tmp_path / "ub.csv", tmp_path / str(skip), skip_bad_rows=skip)


@pytest.mark.parametrize("data", [
    pytest.param(f"{REES_HEADER}\n{_RE}\n{_RE[:-4]}\"7\n2d\"\n", id="quoted-newline"),
    pytest.param(f"{REES_HEADER}\n{_RE}\n{_RE[:-4]}\"7\n2019-10-01 00:00:00 UTC,view,1,2,,,1.0,3,s\"\n",
                 id="quoted-newline-whole-row"),
    pytest.param(f"\ufeff{REES_HEADER}\r\n{_RE}\r\n", id="bom-header"),
    pytest.param(f"{REES_HEADER.replace('brand', 'Brand')}\n{_RE}\n", id="other-header"),
    pytest.param(f"\n{REES_HEADER}\n{_RE}\n", id="blank-first-line"),
    pytest.param(f"{REES_HEADER}\n", id="header-only"),
    pytest.param(f"{REES_HEADER}\n{_RE}\n{_RE.replace('shiseido', 'x' * 140_000)}\n", id="field-past-csv-limit"),
    pytest.param(f"{REES_HEADER}\n{_RE}\n{_RE.replace('shiseido', 'x' * 100_000)}\n", id="long-field"),
    pytest.param(f"{REES_HEADER}\n{_RE}\n{_RE.replace('shiseido', 'caf' + chr(233))}\n", id="utf8-brand"),
    pytest.param(f"{REES_HEADER}\n{_RE.replace('2019-10-01 00:00:00', '2019-10-1  00:00:00')}\n", id="strptime-spaces"),
    pytest.param(f"{REES_HEADER}\n{_RE.replace('2019-10-01 00:00:00', '2019-10-01 00:00:60')}\n", id="second-60"),
    pytest.param(f"{REES_HEADER}\n{_RE.replace('2019-10-01 00:00:00', '2020-02-29 23:59:59')}\n", id="leap-day"),
    pytest.param(f"{REES_HEADER}\n{_RE.replace('2019-10-01 00:00:00', '2019-10-01 00:00:00.5')[:-1]}\n",
                 id="other-length"),
])
def test_rees46_quirks(tmp_path, data):
    (tmp_path / "r.csv").write_bytes(data.encode())
    for skip in (False, True):
        same_outcome(build_rees46, tmp_path / "r.csv", tmp_path / str(skip), skip_bad_rows=skip)


def test_not_utf8_in_an_unread_column_fails_the_file(tmp_path):
    src = tmp_path / "r.csv"
    src.write_bytes(f"{REES_HEADER}\n{_RE}\n".encode() + _RE.replace("shiseido", "caf").encode() + b"\xe9\n")
    assert "not UTF-8 text" in same_outcome(build_rees46, src, tmp_path / "out", skip_bad_rows=True)


# --- the vectorised checks -------------------------------------------------------------


def test_event_time_matches_strptime():
    rng = random.Random(5)
    texts = [f"{y:04d}-{m:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d} UTC"
             for y, m, d, h, mi, s in [(2019, 10, 1, 0, 0, 0), (2020, 2, 29, 23, 59, 59), (2019, 2, 29, 0, 0, 0),
                                       (2000, 2, 29, 1, 2, 3), (1900, 2, 29, 0, 0, 0), (2019, 4, 31, 0, 0, 0),
                                       (2019, 12, 31, 24, 0, 0), (2019, 0, 1, 0, 0, 0), (2019, 13, 1, 0, 0, 0),
                                       (2019, 1, 0, 0, 0, 0), (0, 1, 1, 0, 0, 0), (1, 1, 1, 0, 0, 0),
                                       (9999, 12, 31, 23, 59, 59), (2019, 1, 1, 0, 60, 0), (2019, 1, 1, 0, 0, 60)]]
    texts += [f"{rng.randrange(1, 10_000):04d}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 32):02d} "
              f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d} UTC" for _ in range(3000)]
    for text in list(texts[:200]):  # one character changed
        i = rng.randrange(23)
        texts.append(text[:i] + rng.choice("0123456789 -:TU\u0663x") + text[i + 1:])
    accepted = 0
    for text in texts:
        try:
            fast = int(rees46.event_time_ms(pa.array([text]))[0])
        except columnar.NotClean:
            continue  # the row reader decides
        accepted += 1
        assert fast == rees46._rees46_time(text, {}), text
    assert accepted > 2500


@pytest.mark.parametrize("text", ["0", "7", "007", "123456789", "9223372036854775807", "1" * 30, "-1", "+1", " 1",
                                  "1 ", "1_0", "0x1", "1e3", "1.0", "", "\u0661", "１"])
def test_ids_take_a_subset_of_int(text):
    try:
        value = int(columnar.ids(pa.array([text]))[0])
    except (columnar.NotClean, pa.ArrowInvalid):
        return
    assert value == int(text) and 0 <= value < 2**63


@pytest.mark.parametrize("text", ["4", "4.5", "4.", ".5", "0.5", "05.0", "4.50", "1e0", "4,5", "inf", "nan", " 4",
                                  "4.5.1", ".", "", "\u0664"])
def test_decimals_take_a_subset_of_float(text):
    try:
        value = float(columnar.decimals(pa.array([text]))[0])
    except (columnar.NotClean, pa.ArrowInvalid):
        return
    assert value == float(text)


def test_raw_log_keeps_file_order_across_rows_and_batches():
    log = RawLog(extra=("category",))
    log.add(1, 10, 2, 100, 7)
    log.extend({n: np.array([2, 3]) for n in log.names})
    for i in range(70_000):  # past one chunk of rows
        log.add(i, i, i, i, i)
    log.extend({n: np.array([4]) for n in log.names})
    assert len(log) == 70_004
    user = log.column("user")
    assert user[:3].tolist() == [1, 2, 3] and user[3:-1].tolist() == list(range(70_000)) and user[-1] == 4
    assert log.column("category")[0] == 7 and log.column("user") is user
    with pytest.raises(ValueError, match="unequal length"):
        log.extend({"user": np.zeros(2), "item": np.zeros(1), "action": np.zeros(1), "ts_ms": np.zeros(1),
                    "category": np.zeros(1)})


def test_unknown_reader(tmp_path):
    with pytest.raises(DatasetError, match="unknown reader 'fast'"):
        build_taobao(tmp_path, reader="fast")


# --- the benchmark's generated logs ----------------------------------------------------


def _bench_import():
    """loadtest/bench_import.py (a script, not a package)."""
    path = Path(__file__).resolve().parents[2] / "loadtest" / "bench_import.py"
    spec = importlib.util.spec_from_file_location("bench_import", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["taobao", "rees46", "movielens"])
def test_benchmark_logs_take_the_columnar_path(tmp_path, small_blocks, rows_forbidden, fmt):
    """A generated log that fell back to the row reader would time the wrong thing."""
    bench = _bench_import()
    log = bench.generate(fmt, tmp_path / fmt, 5_000, files=2, progress=False)
    assert log["rows"] == 5_000 and len(log["files"]) == (1 if fmt == "movielens" else 2)
    ds = bench.BUILDERS[fmt](tmp_path / fmt, negatives=1)
    assert ds.meta["counts"]["actions"] == 5_000 and ds.meta["bad_rows"]["count"] == 0
    result = CliRunner().invoke(bench.main, ["--help"])
    assert result.exit_code == 0 and "--reference-rows" in result.output
