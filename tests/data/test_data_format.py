"""load_dataset / save_dataset: round trip and clear errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinrank.backend import schema
from pinrank.data.dataset import Dataset, DatasetError, load_dataset, save_dataset

A = schema.ACTION_IDS
S = schema.SURFACE_IDS


def tiny() -> Dataset:
    labels = np.zeros((4, schema.NUM_HEADS), dtype=np.int8)
    labels[0, schema.HEADS.index("click")] = 1
    return Dataset(
        actions={
            "user_id": np.array([2, 1, 1], dtype=np.int64),
            "item_id": np.array([10, 30, 10], dtype=np.int64),
            "action": np.array([A["click"], A["save"], A["hide"]], dtype=np.int64),
            "surface": np.array([S["home"], 0, S["search"]], dtype=np.int64),
            "ts_ms": np.array([1_700_000_000_500, 1_700_000_002_000, 1_700_000_001_000], dtype=np.int64),
            "duration_ms": np.array([1200, -1, -1], dtype=np.int64),
        },
        item_ids=np.array([10, 20, 30], dtype=np.int64),
        item_topic=np.array([0, 1, 1], dtype=np.int32),
        item_emb=np.arange(3 * schema.ITEM_EMB_DIM, dtype=np.float32).reshape(3, -1),
        meta={"source": "test", "start_ms": 1_700_000_000_000, "end_ms": 1_700_000_003_000,
              "train_end_ms": 1_700_000_002_000},
        impressions={
            "request_id": np.array([2, 1, 1, 2], dtype=np.int64),
            "user_id": np.array([1, 2, 2, 1], dtype=np.int64),
            "item_id": np.array([20, 20, 10, 10], dtype=np.int64),
            "ts_ms": np.array([1_700_000_000_900, 1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_900]),
            "surface": np.array([S["search"], S["home"], S["home"], S["search"]], dtype=np.int64),
            "labels": labels,
        },
    )


@pytest.fixture
def saved(tmp_path):
    return save_dataset(tiny(), tmp_path / "ds")


def test_round_trip_sorts_and_keeps_values(saved):
    ds = load_dataset(saved)
    a = ds.actions
    assert a["user_id"].tolist() == [1, 1, 2]
    assert a["ts_ms"].tolist() == [1_700_000_001_000, 1_700_000_002_000, 1_700_000_000_500]
    assert a["action"].tolist() == [A["hide"], A["save"], A["click"]]
    assert a["surface"].tolist() == [S["search"], 0, S["home"]]
    assert a["duration_ms"].tolist() == [-1, -1, 1200]
    im = ds.impressions
    assert im["request_id"].tolist() == [1, 1, 2, 2] and im["item_id"].tolist() == [10, 20, 10, 20]
    assert im["labels"][3, schema.HEADS.index("click")] == 1 and im["labels"].sum() == 1  # request 2, item 20
    assert np.array_equal(ds.item_emb, tiny().item_emb) and ds.meta["source"] == "test"


def test_saving_without_impressions_drops_a_stale_file(saved):
    ds = tiny()
    ds.impressions = None
    save_dataset(ds, saved)
    assert load_dataset(saved).impressions is None


def _rewrite(path, fn):
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def test_missing_column(saved):
    _rewrite(saved / "actions.parquet", lambda t: t.drop(["surface"]))
    with pytest.raises(DatasetError, match=r"actions.parquet: missing column 'surface'"):
        load_dataset(saved)


def test_unknown_action_string(saved):
    def bad(t):
        names = t.column("action").to_pylist()
        names[1] = "like"
        return t.set_column(t.column_names.index("action"), "action", pa.array(names))

    _rewrite(saved / "actions.parquet", bad)
    with pytest.raises(DatasetError, match=r"actions.parquet: row 1: unknown action 'like'"):
        load_dataset(saved)


def test_unsorted_rows(saved):
    _rewrite(saved / "actions.parquet", lambda t: t.take(pa.array([2, 1, 0])))
    with pytest.raises(DatasetError, match=r"actions.parquet: rows must be sorted by \(user_id, ts_ms\)"):
        load_dataset(saved)


def test_bad_embedding_shape(saved):
    np.save(saved / "item_embeddings.npy", np.zeros((3, schema.ITEM_EMB_DIM + 1), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"item_embeddings.npy: expected float32 \(3, 32\)"):
        load_dataset(saved)


def test_bad_embedding_dtype_and_values(saved):
    np.save(saved / "item_embeddings.npy", np.zeros((3, schema.ITEM_EMB_DIM), dtype=np.float64))
    with pytest.raises(DatasetError, match="got float64"):
        load_dataset(saved)
    emb = np.zeros((3, schema.ITEM_EMB_DIM), dtype=np.float32)
    emb[1, 2] = np.nan
    np.save(saved / "item_embeddings.npy", emb)
    with pytest.raises(DatasetError, match="NaN or inf"):
        load_dataset(saved)


def test_missing_meta_key(saved):
    meta = json.loads((saved / "meta.json").read_text())
    del meta["train_end_ms"]
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"meta.json: missing keys \['train_end_ms'\]"):
        load_dataset(saved)


def test_invalid_meta_json(saved):
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="meta.json: invalid JSON"):
        load_dataset(saved)


def test_missing_files_and_dirs(saved, tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(tmp_path / "nowhere")
    (saved / "items.parquet").unlink()
    with pytest.raises(DatasetError, match="items.parquet: missing"):
        load_dataset(saved)


def test_unsorted_catalogue_and_nulls(saved):
    _rewrite(saved / "items.parquet", lambda t: t.take(pa.array([1, 0, 2])))
    with pytest.raises(DatasetError, match="item_id must be sorted and unique"):
        load_dataset(saved)


def test_null_in_required_column(saved):
    def bad(t):
        ts = t.column("ts_ms").to_pylist()
        ts[0] = None
        return t.set_column(t.column_names.index("ts_ms"), "ts_ms", pa.array(ts, pa.int64()))

    _rewrite(saved / "actions.parquet", bad)
    with pytest.raises(DatasetError, match="column 'ts_ms' has 1 nulls"):
        load_dataset(saved)


def test_corrupt_parquet(saved):
    (saved / "impressions.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="impressions.parquet: not a readable Parquet file"):
        load_dataset(saved)


def _with_user_cuts() -> Dataset:
    ds = tiny()
    # Unsorted on purpose: save_dataset writes them sorted by user.
    ds.user_train_end_ms = {"user_id": np.array([2, 1], dtype=np.int64),
                            "train_end_ms": np.array([1_700_000_000_700, 1_700_000_001_500], dtype=np.int64)}
    return ds


def test_user_cuts_round_trip_and_lookup(tmp_path):
    path = save_dataset(_with_user_cuts(), tmp_path / "ds")
    ds = load_dataset(path)
    assert ds.user_train_end_ms["user_id"].tolist() == [1, 2]
    assert ds.user_train_end_ms["train_end_ms"].tolist() == [1_700_000_001_500, 1_700_000_000_700]
    assert ds.user_train_end_ms["user_id"].dtype == np.int64
    # Users without their own cut fall back to meta train_end_ms.
    assert ds.train_cut_ms(np.array([2, 3, 1, 0])).tolist() == [
        1_700_000_000_700, 1_700_000_002_000, 1_700_000_001_500, 1_700_000_002_000]
    assert load_dataset(save_dataset(tiny(), tmp_path / "plain")).train_cut_ms(np.array([1])).tolist() == [
        1_700_000_002_000]
    # Saving without cuts removes a stale file from an earlier save.
    save_dataset(tiny(), path)
    assert not (path / "user_cuts.parquet").exists() and load_dataset(path).user_train_end_ms is None


@pytest.mark.parametrize(
    "table, message",
    [
        (pa.table({"user_id": pa.array([2, 1], pa.int64()), "train_end_ms": pa.array([5, 6], pa.int64())}),
         "user_cuts.parquet: user_id must be sorted and unique"),
        (pa.table({"user_id": pa.array([1, 1], pa.int64()), "train_end_ms": pa.array([5, 6], pa.int64())}),
         "user_cuts.parquet: user_id must be sorted and unique"),
        (pa.table({"user_id": pa.array([1, 2], pa.int64()), "train_end_ms": pa.array([5, None], pa.int64())}),
         "user_cuts.parquet: column 'train_end_ms' has 1 nulls"),
        (pa.table({"user_id": pa.array(["a", "b"]), "train_end_ms": pa.array([5, 6], pa.int64())}),
         "user_cuts.parquet: column 'user_id' has type string, expected int64"),
        (pa.table({"user_id": pa.array([1, 2], pa.int64())}),
         "user_cuts.parquet: missing column 'train_end_ms'"),
    ],
)
def test_bad_user_cuts(saved, table, message):
    pq.write_table(table, saved / "user_cuts.parquet")
    with pytest.raises(DatasetError, match=message):
        load_dataset(saved)
