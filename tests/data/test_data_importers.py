"""Importers: real ../shared/data files (skipped when absent) and small
malformed files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.data import item_features, negatives
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.data.formats.movielens import ML100K_GENRES, UNKNOWN_GENRE
from pinrank.data.importers import build_movielens, build_rees46, build_taobao, import_source
from pinrank.data.item_features import item_embeddings

A = schema.ACTION_IDS
H = {h: j for j, h in enumerate(schema.HEADS)}


def _write(path: Path, lines: list[str], crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + (b"\r\n" if crlf else b"\n"))
    return path


def movielens_dir(root: Path, ratings: list[str] | None = None, tags: list[str] | None = None) -> Path:
    ml = root / "ml"
    _write(ml / "ratings.csv", ["userId,movieId,rating,timestamp"] + (ratings if ratings is not None else [
        "1,10,4.5,964982703",
        "1,30,3.0,964982703",  # same second as the row above: ties break by item id
        "1,20,1.0,964982800",
        "2,10,2.5,964990000",
        "2,40,5.0,964991000",
    ]), crlf=True)
    _write(ml / "tags.csv", ["userId,movieId,tag,timestamp"] + (tags if tags is not None else [
        '2,30,"funny, quotable",964995000',
    ]), crlf=True)
    _write(ml / "movies.csv", [
        "movieId,title,genres",
        "10,A (1995),Comedy|Drama",
        '20,"B, The (1996)",Action',
        "30,C (1997),Drama",
        "40,D (1998),(no genres listed)",
        "50,E (1999),Action|Comedy",
    ], crlf=True)
    return ml


# --- MovieLens ---------------------------------------------------------------


def test_movielens_small_mapping(tmp_path):
    ds = build_movielens(movielens_dir(tmp_path), negatives=2, seed=1)
    a = ds.actions
    assert a["user_id"].tolist() == [1, 1, 1, 2, 2, 2]
    assert a["item_id"].tolist() == [10, 30, 20, 10, 40, 30]
    assert a["action"].tolist() == [A["save"], A["click"], A["hide"], A["click"], A["save"], A["closeup"]]
    # Item 30 shares item 10's second: it follows 2 ms later (ties by item id).
    assert a["ts_ms"][:2].tolist() == [964982703000, 964982703002]
    assert (a["surface"] == schema.SURFACE_IDS["home"]).all()
    assert ds.item_ids.tolist() == [10, 20, 30, 40]  # items in the log; 50 is only in movies.csv
    names = ds.meta["topic_names"]
    assert names == sorted(names) and UNKNOWN_GENRE not in names  # every logged movie has a genre
    assert [names[t] for t in ds.item_topic] == ["Comedy", "Action", "Drama", "(no genres listed)"]
    assert ds.meta["variant"] == "csv" and ds.meta["files"] == ["ratings.csv", "tags.csv", "movies.csv"]
    im = ds.impressions
    assert im["ts_ms"].size == 6 * 3 and np.unique(im["request_id"]).size == 6
    for rid in np.unique(im["request_id"]):
        rows = im["request_id"] == rid
        assert np.unique(im["item_id"][rows]).size == 3  # engaged item + 2 distinct negatives
        assert im["labels"][rows].sum() == 1
    # Each request sits 1 ms before its action, labelled with the action's head.
    first = im["labels"].sum(axis=1) == 1
    assert sorted((im["ts_ms"][first] + 1).tolist()) == sorted(a["ts_ms"].tolist())
    assert im["labels"][:, H["hide"]].sum() == 1 and im["labels"][:, H["closeup"]].sum() == 1
    assert ds.item_emb.shape == (4, schema.ITEM_EMB_DIM) and np.isfinite(ds.item_emb).all()
    assert ds.meta["bad_rows"]["count"] == 0
    assert ds.meta["start_ms"] <= ds.train_end_ms <= ds.meta["end_ms"]


@pytest.mark.parametrize(
    "row, message",
    [
        ("abc,10,4.0,964982703", r"ratings.csv:3: non-numeric userId 'abc'"),
        ("1,10,4.0", r"ratings.csv:3: expected 4 columns, got 3"),
        ("1,10,4.0,964982703,9", r"ratings.csv:3: expected 4 columns, got 5"),
        ("1,10,7.0,964982703", r"ratings.csv:3: rating '7.0' not a half star"),
        ("1,10,x,964982703", r"ratings.csv:3: non-numeric rating 'x'"),
        ("1,10,4.0,yesterday", r"ratings.csv:3: unparsable timestamp 'yesterday'"),
        ("1,10,4.0,100", r"ratings.csv:3: timestamp 100000 ms .* outside the plausible range"),
        ("1,10,4.0,99999999999", r"ratings.csv:3: timestamp .* outside the plausible range"),
    ],
)
def test_movielens_malformed_row_names_file_and_line(tmp_path, row, message):
    ml = movielens_dir(tmp_path, ratings=["1,10,4.0,964982703", row, "2,20,3.0,964982800"])
    with pytest.raises(DatasetError, match=message):
        build_movielens(ml)
    ds = build_movielens(ml, skip_bad_rows=True)
    assert ds.meta["bad_rows"]["count"] == 1 and ds.meta["bad_rows"]["skipped"] is True
    assert "ratings.csv:3:" in ds.meta["bad_rows"]["examples"][0]
    assert ds.actions["ts_ms"].size == 3  # two ratings + one tag


def test_movielens_bad_tag_row_and_header(tmp_path):
    ml = movielens_dir(tmp_path, tags=["2,30,x,964995000", "2,notanid,y,964995000"])
    with pytest.raises(DatasetError, match=r"tags.csv:3: non-numeric movieId 'notanid'"):
        build_movielens(ml)
    _write(ml / "ratings.csv", ["user,movie,rating,ts", "1,10,4.0,964982703"])
    with pytest.raises(DatasetError, match=r"ratings.csv:1: expected header"):
        build_movielens(ml, skip_bad_rows=True)  # a wrong header is never a skippable row


def test_movielens_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        build_movielens(tmp_path / "nope")
    ml = movielens_dir(tmp_path)
    (ml / "ratings.csv").unlink()
    with pytest.raises(DatasetError, match=r"no MovieLens ratings file; looked for ratings.csv .*ratings.dat"
                                           r" .*u.data \(ml-100k\)"):
        build_movielens(ml)


def test_movielens_real(tmp_path, shared_data):
    src = shared_data("ml-latest-small")
    path = import_source("movielens", src, tmp_path / "ml", seed=0)
    ds = load_dataset(path)
    counts = ds.meta["counts"]["actions_by_type"]
    assert ds.actions["ts_ms"].size == 100_836 + 3_683
    assert counts["closeup"] == 3_683
    assert counts["save"] + counts["click"] + counts["hide"] == 100_836
    # 9,724 rated movies + 18 only tagged; movies.csv lists the same 9,742.
    assert np.unique(ds.actions["user_id"]).size == 610 and ds.num_items == 9_742
    assert ds.meta["source"] == "movielens" and "Drama" in ds.meta["topic_names"]
    train_share = (ds.actions["ts_ms"] < ds.train_end_ms).mean()
    assert 0.75 < train_share < 0.85
    # Times are strictly increasing per user; a 2 ms gap only arises from a
    # tie (raw times are whole seconds), and ties are ordered by item id.
    a = ds.actions
    same_user = np.diff(a["user_id"]) == 0
    assert (np.diff(a["ts_ms"])[same_user] > 0).all()
    tie = same_user & (np.diff(a["ts_ms"]) == 2)
    assert tie.sum() > 10_000 and (np.diff(a["item_id"])[tie] >= 0).all()
    assert ds.impressions["ts_ms"].size == 5 * a["ts_ms"].size
    # Items never engaged in train sit at their topic's mean embedding.
    pos = np.isin(a["action"], [A[x] for x in schema.POSITIVE_ACTIONS]) & (a["ts_ms"] < ds.train_end_ms)
    seen = np.isin(ds.item_ids, a["item_id"][pos])
    unseen_idx = np.flatnonzero(~seen)
    assert unseen_idx.size > 0
    i = unseen_idx[0]
    peers = seen & (ds.item_topic == ds.item_topic[i])
    assert np.allclose(ds.item_emb[i], ds.item_emb[peers].mean(axis=0), atol=1e-5)
    # Embeddings carry co-engagement: same-topic items are closer on average.
    emb = ds.item_emb / np.linalg.norm(ds.item_emb, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    x, y = rng.choice(np.flatnonzero(seen), size=(2, 4000))
    same_topic = ds.item_topic[x] == ds.item_topic[y]
    cos = (emb[x] * emb[y]).sum(axis=1)
    assert cos[same_topic].mean() > cos[~same_topic].mean()


def _write_latin1(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path


def test_movielens_1m_10m_dat(tmp_path):
    ml = tmp_path / "ml-1m"
    _write_latin1(ml / "ratings.dat", [
        "1::10::5::978300760",
        "1::20::3::978300760",
        "1::30::1::978302109",
        "2::20::4::978301968",
        "2::40::2::978302000",
    ])
    # Latin-1 titles (not valid UTF-8) and a title holding the separator.
    _write_latin1(ml / "movies.dat", [
        "10::Café au lait (1993)::Comedy|Drama",
        "20::Amélie (2001)::Romance",
        "30::Odd::Title (1990)::Horror",
        "99::Never Rated (2000)::Western",
    ])
    # ML-10M's tags.dat; a tag may itself hold '::'.
    _write_latin1(ml / "tags.dat", ["2::10::très bien::978303000", "2::30::a::b::978304000"])
    ds = build_movielens(ml, negatives=1)
    a = ds.actions
    assert a["user_id"].tolist() == [1, 1, 1, 2, 2, 2, 2]
    assert a["item_id"].tolist() == [10, 20, 30, 20, 40, 10, 30]
    assert a["action"].tolist() == [A["save"], A["click"], A["hide"], A["save"], A["hide"],
                                    A["closeup"], A["closeup"]]
    assert ds.item_ids.tolist() == [10, 20, 30, 40]  # 99 is never rated: not in the catalogue
    names = ds.meta["topic_names"]
    assert [names[t] for t in ds.item_topic] == ["Comedy", "Romance", "Horror", UNKNOWN_GENRE]  # 40: no movie row
    assert ds.meta["variant"] == "ml-1m/ml-10m"
    assert ds.meta["files"] == ["ratings.dat", "tags.dat", "movies.dat"]


def test_movielens_100k(tmp_path):
    ml = tmp_path / "ml-100k"
    _write(ml / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "196\t302\t5\t881250949",
                           "22\t377\t1\t878887116", "22\t242\t4\t878887116"])
    flags = {242: [0, 0, 0, 0, 0, 1, 0, 0, 1] + [0] * 10,  # Comedy, Drama -> Comedy (first flagged)
             302: [0] * 16 + [1, 0, 0],  # Thriller
             377: [0] * 19}  # no genre flagged
    _write_latin1(ml / "u.item", [f"{i}|Caf\u00e9 {i} (1996)|01-Jan-1996||http://x|" + "|".join(map(str, f))
                                  for i, f in flags.items()])
    ds = build_movielens(ml, negatives=1)
    assert ds.meta["variant"] == "ml-100k" and ds.meta["files"] == ["u.data", "u.item"]
    assert ds.actions["user_id"].tolist() == [22, 22, 186, 196, 196]
    assert ds.actions["action"].tolist() == [A["save"], A["hide"], A["click"], A["click"], A["save"]]
    names = ds.meta["topic_names"]
    assert [names[t] for t in ds.item_topic] == ["Comedy", "Thriller", UNKNOWN_GENRE]

    # u.genre names the flags (here in a language of its own).
    _write(ml / "u.genre", [f"g{i}|{i}" for i in range(19)] + [""])
    ds = build_movielens(ml, negatives=1)
    assert ds.meta["files"] == ["u.data", "u.genre", "u.item"]
    assert [ds.meta["topic_names"][t] for t in ds.item_topic] == ["g5", "g16", UNKNOWN_GENRE]
    _write(ml / "u.genre", ["a|0", "b|1"])  # two genres: u.item's 19 flags no longer fit
    with pytest.raises(DatasetError, match=r"u.item:1: expected 'movie id\|movie title.*\|a\|b' \(7 fields"):
        build_movielens(ml)


def test_movielens_csv_without_movies_file(tmp_path):
    ml = movielens_dir(tmp_path)
    (ml / "movies.csv").unlink()
    ds = build_movielens(ml, negatives=1)
    assert ds.meta["topic_names"] == [UNKNOWN_GENRE] and (ds.item_topic == 0).all()
    assert ds.item_ids.tolist() == [10, 20, 30, 40] and ds.meta["files"] == ["ratings.csv", "tags.csv"]


@pytest.mark.parametrize(
    "name, first_line, message",
    [
        ("ratings.dat", "1,10,4.0,964982703",
         r"ratings.dat:1: expected 'UserID::MovieID::Rating::Timestamp' \(4 fields separated by '::'\), "
         r"got '1,10,4.0,964982703'$"),
        ("u.data", "1::10::4::964982703",
         r"u.data:1: expected 'user id\\titem id\\trating\\ttimestamp' \(4 fields separated by '\\t'\)"),
        ("ratings.dat", "UserID::MovieID::Rating::Timestamp",  # a header where none belongs
         r"ratings.dat:1: expected .*got 'UserID::MovieID::Rating::Timestamp'$"),
    ],
)
def test_movielens_wrong_layout_fails_on_line_one(tmp_path, name, first_line, message):
    ml = tmp_path / "ml"
    # 100k lines all as wrong as the first: the import stops at line 1.
    _write(ml / name, [first_line] * 100_000)
    for skip in (False, True):  # a wrong file is never a skippable bad row
        with pytest.raises(DatasetError, match=message) as err:
            build_movielens(ml, skip_bad_rows=skip)
        assert f"{name}:2" not in str(err.value)


def test_movielens_csv_wrong_first_data_line_fails_before_reading_on(tmp_path):
    ml = tmp_path / "ml"
    ml.mkdir()
    # Tab-separated rows under a CSV header; a non-UTF-8 byte at the end
    # proves the importer stopped before reading that far.
    body = "\n".join(["1\t10\t4.0\t964982703"] * 100_000).encode() + b"\n\xff\n"
    (ml / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n" + body)
    with pytest.raises(DatasetError, match=r"ratings.csv:2: expected 'userId,movieId,rating,timestamp' "
                                           r"\(4 fields separated by ','\), got '1\\t10\\t4.0\\t964982703'"):
        build_movielens(ml)
    (ml / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,\xe9,4.0,1\n")
    with pytest.raises(DatasetError, match="ratings.csv: not UTF-8 text"):
        build_movielens(ml)


def test_movielens_wrong_optional_file_fails_on_line_one(tmp_path):
    ml = movielens_dir(tmp_path)
    (ml / "ratings.csv").rename(ml / "other.csv")
    _write(ml / "ratings.dat", ["1::10::4::964982703"])
    _write(ml / "movies.dat", ["10,Heat (1995),Action"])
    with pytest.raises(DatasetError, match=r"movies.dat:1: expected 'MovieID::Title::Genres'"):
        build_movielens(ml)


def test_ties_become_strictly_increasing_per_user(tmp_path):
    t = 964982703
    ml = movielens_dir(tmp_path, tags=[], ratings=[
        f"1,30,4.0,{t}", f"1,10,4.0,{t}", f"1,20,4.0,{t}",  # three in one second
        f"1,40,4.0,{t + 1}",  # 1 s later: already after the ties, kept as is
        f"2,10,4.0,{t}", f"2,20,4.0,{t}",  # another user's ties start over from the raw time
    ])
    ds = build_movielens(ml, negatives=1)
    a = ds.actions
    assert a["item_id"].tolist() == [10, 20, 30, 40, 10, 20]
    base = t * 1000
    assert a["ts_ms"].tolist() == [base, base + 2, base + 4, base + 1000, base, base + 2]
    assert ds.meta["tie_break"] == "strictly increasing per user (+2 ms)"
    # Each request (1 ms before its action) comes after the user's previous action.
    im = ds.impressions
    req_ts = np.unique(im["ts_ms"][im["user_id"] == 1])
    assert req_ts.tolist() == [base - 1, base + 1, base + 3, base + 999]


def test_ties_cascade_past_the_next_raw_time(tmp_path):
    """600 actions in one second spill past the next second's action, which
    still follows them: order is kept, times stay strictly increasing."""
    t = 964982703
    ml = movielens_dir(tmp_path, tags=[], ratings=[f"1,{i},4.0,{t}" for i in range(1, 601)] + [f"1,9999,4.0,{t + 1}"])
    ts = build_movielens(ml, negatives=1).actions["ts_ms"]
    assert ts[-1] == t * 1000 + 1200 and (np.diff(ts) == 2).all()


def test_per_user_split(tmp_path):
    t = 964982703
    rows = ["1,10,4.0,%d" % t]  # one action: it trains
    rows += ["2,%d,4.0,%d" % (10 + i, t + i) for i in range(2)]  # two: one each side
    rows += ["3,%d,4.0,%d" % (10 + i, t + 100 * i) for i in range(5)]  # 4 train, 1 held out
    rows += ["4,%d,4.0,%d" % (10 + i, t + 50 * i) for i in range(10)]  # 8 train, 2 held out
    ml = movielens_dir(tmp_path, ratings=rows, tags=[])
    ds = build_movielens(ml, negatives=1, split="per-user", train_fraction=0.8)
    cuts = ds.user_train_end_ms
    assert cuts["user_id"].tolist() == [1, 2, 3, 4]
    end = ds.meta["end_ms"]
    assert cuts["train_end_ms"].tolist() == [end, (t + 1) * 1000, (t + 400) * 1000, (t + 400) * 1000]
    assert ds.meta["split"] == {"kind": "per_user", "train_fraction": 0.8}
    assert ds.meta["counts"]["train_actions"] == 1 + 1 + 4 + 8
    a = ds.actions
    in_train = a["ts_ms"] < ds.train_cut_ms(a["user_id"])
    assert [int(in_train[a["user_id"] == u].sum()) for u in (1, 2, 3, 4)] == [1, 1, 4, 8]
    assert ds.meta["start_ms"] <= ds.train_end_ms <= end  # the global cut stays for older code paths
    assert ds.train_cut_ms(np.array([4, 77])).tolist() == [(t + 400) * 1000, ds.train_end_ms]

    path = import_source("movielens", ml, tmp_path / "out", negatives=1, split="per-user")
    loaded = load_dataset(path)
    assert np.array_equal(loaded.user_train_end_ms["train_end_ms"], cuts["train_end_ms"])
    # Re-importing with the global split leaves no stale per-user cuts behind.
    loaded = load_dataset(import_source("movielens", ml, tmp_path / "out", negatives=1))
    assert loaded.user_train_end_ms is None and loaded.meta["split"]["kind"] == "global"
    with pytest.raises(DatasetError, match="unknown split 'per_user'"):
        build_movielens(ml, split="per_user")


def test_per_user_split_trains_embeddings_on_train_rows(tmp_path):
    """Item 99 is engaged only as users' last (held-out) actions, all before
    the global cut: under the per-user split it is unseen in training."""
    t = 964982703
    rows = []
    for user in range(1, 6):
        rows += ["%d,%d,5.0,%d" % (user, 10 + i, t + 10 * user + i) for i in range(4)]
        rows.append("%d,99,5.0,%d" % (user, t + 10 * user + 5))
    rows += ["9,%d,5.0,%d" % (10 + i, t + 1000 + i) for i in range(20)]  # late rows push the global cut
    ml = movielens_dir(tmp_path, ratings=rows, tags=[])
    (ml / "movies.csv").unlink()  # one topic for all: unseen items get the mean of all seen ones
    per_user = build_movielens(ml, negatives=1, split="per-user")
    global_ = build_movielens(ml, negatives=1)
    assert global_.actions["ts_ms"][global_.actions["item_id"] == 99].max() < global_.train_end_ms
    row_99 = int(np.searchsorted(per_user.item_ids, 99))
    a = per_user.actions
    seen = np.isin(per_user.item_ids, a["item_id"][a["ts_ms"] < per_user.train_cut_ms(a["user_id"])])
    assert not seen[row_99]
    assert np.allclose(per_user.item_emb[row_99], per_user.item_emb[seen].mean(axis=0), atol=1e-5)
    assert not np.allclose(global_.item_emb[row_99], global_.item_emb[seen].mean(axis=0), atol=1e-3)


def test_movielens_100k_real(tmp_path, shared_data):
    src = shared_data("ml-100k")
    ds = load_dataset(import_source("movielens", src, tmp_path / "ml", split="per-user"))
    a = ds.actions
    assert np.unique(a["user_id"]).size == 943 and a["user_id"].size == 100_000 and ds.num_items == 1_682
    names = ds.meta["topic_names"]
    assert set(names) <= set(ML100K_GENRES) and 17 <= len(names) <= 19
    assert ds.meta["variant"] == "ml-100k" and ds.meta["bad_rows"]["count"] == 0
    assert (np.diff(a["ts_ms"])[np.diff(a["user_id"]) == 0] > 0).all()
    # Every user has >= 20 ratings: each keeps exactly floor(0.8 n) for training.
    users, counts = np.unique(a["user_id"], return_counts=True)
    assert np.array_equal(ds.user_train_end_ms["user_id"], users)
    in_train = a["ts_ms"] < ds.train_cut_ms(a["user_id"])
    assert np.array_equal(np.bincount(np.searchsorted(users, a["user_id"][in_train])),
                          np.floor(0.8 * counts + 1e-9).astype(int))


# --- Taobao ----------------------------------------------------------------------


def test_taobao_small_and_malformed(tmp_path):
    f = _write(tmp_path / "ub.csv", [
        "1,100,7,pv,1511600000",
        "1,100,7,cart,1511600100",
        "1,200,9,fav,1511600200",
        "2,300,7,buy,1511600300",
    ])
    ds = build_taobao(f, negatives=1)
    assert ds.actions["action"].tolist() == [A["click"], A["closeup"], A["save"], A["purchase"]]
    assert ds.item_topic.tolist() == [0, 1, 0]  # category 7 has the most rows -> topic 0
    assert ds.meta["topic_categories"] == [7, 9]
    purchase_rows = ds.impressions["labels"][:, H["save"]].sum()
    assert purchase_rows == 2  # fav and buy both label the save head

    bad = _write(tmp_path / "bad" / "ub.csv", ["1,100,7,pv,1511600000", "1,100,7,like,1511600100"])
    with pytest.raises(DatasetError, match=r"ub.csv:2: unknown behavior_type 'like'"):
        build_taobao(bad)
    assert build_taobao(tmp_path / "bad", skip_bad_rows=True).meta["bad_rows"]["count"] == 1
    only_bad = _write(tmp_path / "worse.csv", ["x,y"])
    with pytest.raises(DatasetError, match="no usable rows"):
        build_taobao(only_bad, skip_bad_rows=True)


def test_taobao_real(shared_data):
    src = shared_data("taobao-userbehavior-head")
    # One row is dated months before the dataset's span.
    with pytest.raises(DatasetError, match=r"UserBehavior_head.csv:4171: timestamp .* outside the plausible range"):
        build_taobao(src)
    ds = build_taobao(src, skip_bad_rows=True)
    assert ds.meta["bad_rows"]["count"] == 1
    counts = ds.meta["counts"]["actions_by_type"]
    assert counts == {"click": 3_925, "closeup": 190, "save": 128, "purchase": 77}
    again = build_taobao(src, skip_bad_rows=True)
    assert np.array_equal(ds.item_emb, again.item_emb)
    assert np.array_equal(ds.impressions["item_id"], again.impressions["item_id"])
    other = build_taobao(src, skip_bad_rows=True, seed=1)
    assert not np.array_equal(ds.impressions["item_id"], other.impressions["item_id"])


# --- REES46 ------------------------------------------------------------------------

REES_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"


def test_rees46_small_and_malformed(tmp_path):
    rows = [
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7",
        "2019-10-01 00:00:05 UTC,cart,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7",
        "2019-10-01 00:01:00 UTC,purchase,3900821,2053013552326770905,appliances.x,aqua,33.20,554748717,9333",
    ]
    ds = build_rees46(_write(tmp_path / "ok.csv", [REES_HEADER] + rows), negatives=1)
    assert ds.actions["action"].tolist() == [A["click"], A["closeup"], A["purchase"]]
    assert ds.actions["ts_ms"][0] == 1_569_888_000_000
    for bad_row, message in [
        ("2019-10-01T00:00:00Z,view,1,2,,,1.0,3,s", r"bad.csv:3: unparsable event_time"),
        ("2019-13-01 00:00:00 UTC,view,1,2,,,1.0,3,s", r"bad.csv:3: unparsable event_time"),
        ("2019-10-01 00:00:00 UTC,remove_from_cart,1,2,,,1.0,3,s", r"bad.csv:3: unknown event_type"),
        ("2019-10-01 00:00:00 UTC,view,1,2,,,1.0,", r"bad.csv:3: expected 9 columns, got 8"),
        ("2019-10-01 00:00:00 UTC,view,1,2,,,1.0,,s", r"bad.csv:3: non-numeric user_id ''"),
        ("2015-10-01 00:00:00 UTC,view,1,2,,,1.0,3,s", r"bad.csv:3: timestamp .* outside the plausible range"),
    ]:
        f = _write(tmp_path / "bad.csv", [REES_HEADER, rows[0], bad_row])
        with pytest.raises(DatasetError, match=message):
            build_rees46(f)
        assert build_rees46(f, skip_bad_rows=True).meta["bad_rows"]["count"] == 1
    with pytest.raises(DatasetError, match=r"nohdr.csv:1: expected header"):
        build_rees46(_write(tmp_path / "nohdr.csv", rows))


def test_rees46_real(tmp_path, shared_data):
    src = shared_data("rees46-ecom-head")
    with pytest.raises(DatasetError, match=r"2019-Oct_head.csv:17436: expected 9 columns, got 8"):
        build_rees46(src)  # the head was cut mid-row
    path = import_source("rees46", src, tmp_path / "rees", skip_bad_rows=True)
    ds = load_dataset(path)
    assert ds.meta["counts"]["actions_by_type"] == {"click": 17_055, "closeup": 165, "purchase": 214}
    assert ds.meta["start_ms"] == 1_569_888_000_000


# --- shared pieces ---------------------------------------------------------------


def test_item_embeddings_stand_in():
    topic = np.array([0, 0, 1, 1, 2])
    users = np.array([0, 0, 1, 1, 2])
    items = np.array([0, 2, 1, 2, 0])
    emb = item_embeddings(topic, users, items, seed=0)
    assert emb.shape == (5, schema.ITEM_EMB_DIM) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert np.allclose(emb[3], emb[2])  # unseen item 3 = mean of seen topic-1 items (only item 2)
    assert np.array_equal(emb, item_embeddings(topic, users, items, seed=0))
    empty = item_embeddings(topic, np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert np.isfinite(empty).all() and np.allclose(empty[0], empty[1])


def test_item_embeddings_do_not_depend_on_the_product_slices(monkeypatch):
    """The SVD's sparse products run in slices of whole rows (bounded memory
    at tens of millions of actions): the floats must be those of one slice."""
    rng = np.random.default_rng(0)
    users = (rng.pareto(1.0, 20_000) * 3).astype(np.int64) % 3_000
    items = (rng.pareto(0.7, 20_000) * 5).astype(np.int64) % 800
    topic = rng.integers(0, 6, 800)
    whole = item_embeddings(topic, users, items, seed=2)  # fewer values than one slice holds
    monkeypatch.setattr(item_features, "_SLICE_VALUES", 5)
    assert item_embeddings(topic, users, items, seed=2).tobytes() == whole.tobytes()


def test_negatives_redraw_only_rows_with_duplicates():
    """Passes after the first look only at the rows just redrawn: the draws
    must be those of passes over every row."""
    def every_row_each_pass(rng, pos, n_items, k, popularity):
        cdf = np.cumsum(popularity + 1e-12)
        by_pop = np.minimum(np.searchsorted(cdf, rng.random((pos.size, k)) * cdf[-1], side="right"), n_items - 1)
        full = np.concatenate([pos[:, None], np.where(rng.random((pos.size, k)) < 0.5,
                                                      rng.integers(0, n_items, size=(pos.size, k)), by_pop)], axis=1)
        while (dup := negatives._duplicates(full)).any():
            full[dup] = rng.integers(0, n_items, size=int(dup.sum()))
        return full[:, 1:]

    rng = np.random.default_rng(0)
    for n_items, k in [(5, 4), (12, 6), (400, 4)]:  # small catalogues: several passes
        pos = rng.integers(0, n_items, 3_000)
        popularity = rng.pareto(1.0, n_items)
        got = negatives.draw_negatives(np.random.default_rng(1), pos, n_items, k, popularity)
        assert np.array_equal(got, every_row_each_pass(np.random.default_rng(1), pos, n_items, k, popularity))
        assert all(len(set(row)) == k + 1 for row in np.concatenate([pos[:, None], got], axis=1).tolist())


def test_import_source_rejects_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown format 'csv'"):
        import_source("csv", tmp_path, tmp_path / "out")
