"""Importers: real ../shared/data files (skipped when absent) and small
malformed files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pinrank import schema
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.data.importers import (
    build_movielens,
    build_rees46,
    build_taobao,
    import_source,
    item_embeddings,
)

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
    assert a["ts_ms"][0] == 964982703000 and (a["surface"] == schema.SURFACE_IDS["home"]).all()
    assert ds.item_ids.tolist() == [10, 20, 30, 40, 50]  # the whole catalogue, engaged or not
    names = ds.meta["topic_names"]
    assert names == sorted(names)
    assert [names[t] for t in ds.item_topic] == ["Comedy", "Action", "Drama", "(no genres listed)", "Action"]
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
    assert ds.item_emb.shape == (5, schema.ITEM_EMB_DIM) and np.isfinite(ds.item_emb).all()
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
    with pytest.raises(DatasetError, match="ratings.csv: missing"):
        build_movielens(ml)


def test_movielens_real(tmp_path, shared_data):
    src = shared_data("ml-latest-small")
    path = import_source("movielens", src, tmp_path / "ml", seed=0)
    ds = load_dataset(path)
    counts = ds.meta["counts"]["actions_by_type"]
    assert ds.actions["ts_ms"].size == 100_836 + 3_683
    assert counts["closeup"] == 3_683
    assert counts["save"] + counts["click"] + counts["hide"] == 100_836
    assert np.unique(ds.actions["user_id"]).size == 610 and ds.num_items == 9_742
    assert ds.meta["source"] == "movielens" and "Drama" in ds.meta["topic_names"]
    train_share = (ds.actions["ts_ms"] < ds.train_end_ms).mean()
    assert 0.75 < train_share < 0.85
    # Ties in time are broken by item id within a user.
    a = ds.actions
    same = (np.diff(a["user_id"]) == 0) & (np.diff(a["ts_ms"]) == 0)
    assert same.any() and (np.diff(a["item_id"])[same] >= 0).all()
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


def test_import_source_rejects_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown format 'csv'"):
        import_source("csv", tmp_path, tmp_path / "out")
