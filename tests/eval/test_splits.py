"""Protocol splits: leave-one-out and the per-user temporal window, on a toy log."""

from __future__ import annotations

import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.dataset import Dataset
from pinrank.eval.splits import leave_one_out, temporal_window
from pinrank.models.pinnerformer import UserTimelines
from testkit.toy_data import START_MS, make_toy_dataset

A = schema.ACTION_IDS


def _log(rows: list[tuple[int, int, str, int]], n_items: int = 6) -> Dataset:
    """rows of (user, item id, action, day); ts = day + index ms so order is strict."""
    u, i, a, t = zip(*rows)
    actions = {"user_id": np.asarray(u, np.int64), "item_id": np.asarray(i, np.int64),
               "action": np.asarray([A[x] for x in a], np.int64), "surface": np.ones(len(u), np.int64),
               "ts_ms": START_MS + np.asarray(t, np.int64) * MS_PER_DAY + np.arange(len(u)),
               "duration_ms": np.full(len(u), -1, np.int64)}
    ids = np.arange(1, n_items + 1, dtype=np.int64) * 10
    return Dataset(actions, ids, np.arange(n_items, dtype=np.int32) % 2,
                   np.random.default_rng(0).normal(size=(n_items, schema.ITEM_EMB_DIM)).astype(np.float32),
                   {"source": "t", "start_ms": START_MS, "end_ms": START_MS + 100 * MS_PER_DAY,
                    "train_end_ms": START_MS + 50 * MS_PER_DAY})


def test_leave_one_out_targets_inputs_and_training_rows():
    ds = _log([(1, 10, "save", 0), (1, 20, "click", 1), (1, 10, "closeup", 2), (1, 30, "hide", 3),
               (1, 40, "save", 4),
               (2, 10, "save", 0), (2, 20, "save", 1)])  # user 2: 2 distinct items, not evaluated
    split = leave_one_out(ds)
    t = split.test.timelines
    assert split.test.rows.tolist() == [0]
    # Events are first interactions: 10, 20, 30, 40 -> test 40, validation 30 (a low rating still counts).
    assert ds.item_ids[split.test.targets[0] - 1].tolist() == [40]
    assert ds.item_ids[split.validation.targets[0] - 1].tolist() == [30]
    # The test input holds everything before the test event, validation item included.
    assert sorted(ds.item_ids[split.test.seen(0) - 1].tolist()) == [10, 10, 20, 30]
    assert sorted(ds.item_ids[split.validation.seen(0) - 1].tolist()) == [10, 10, 20]
    # Training: user 1 before the validation event, user 2 everything.
    tr = split.train.actions
    assert tr["item_id"][tr["user_id"] == 1].tolist() == [10, 20, 10]
    assert tr["item_id"][tr["user_id"] == 2].tolist() == [10, 20]
    assert split.train.train_end_ms > tr["ts_ms"].max()
    assert t.item_idx[split.test.ends[0]] == split.test.targets[0][0]


def test_leave_one_out_never_trains_on_targets_of_a_real_sized_log():
    ds = make_toy_dataset(num_users=60, num_items=120, actions_per_user=25)
    split = leave_one_out(ds)
    tr = UserTimelines(split.train)
    for i, r in enumerate(split.test.rows):
        user = split.test.timelines.user_ids[r]
        tr_row = tr.rows_of(np.asarray([user]))[0]
        last_train_ts = tr.ts_ms[tr.offsets[tr_row + 1] - 1]
        val_ts = split.validation.timelines.ts_ms[split.validation.ends[i]]
        assert last_train_ts < val_ts
    # The content table is refitted on the training rows: the import-time table is not reused.
    assert not np.array_equal(split.train.item_emb, ds.item_emb)


def test_leave_one_out_refuses_a_log_with_nobody_to_evaluate():
    with pytest.raises(ValueError, match="distinct items"):
        leave_one_out(_log([(1, 10, "save", 0), (1, 20, "save", 1)]))


def test_temporal_window_cuts_each_user_and_takes_window_positives():
    rows = [(1, 10 * (k % 6 + 1), "save", k) for k in range(5)]  # cut after 4 of 5 -> day 4
    rows += [(2, 10, "click", 0), (2, 20, "click", 1), (2, 30, "save", 30), (2, 40, "hide", 31),
             (2, 50, "save", 60)]  # cut at day 60 (4 of 5 train); 50 in window
    split = temporal_window(_log(rows), train_fraction=0.8, window_days=14)
    users = split.test.timelines.user_ids[split.test.rows]
    assert users.tolist() == [1, 2]
    assert [ds_t.size for ds_t in split.test.targets] == [1, 1]
    tr = split.train.actions
    assert tr["ts_ms"][tr["user_id"] == 2].max() < START_MS + 60 * MS_PER_DAY
    assert (tr["user_id"] == 2).sum() == 4 and (tr["user_id"] == 1).sum() == 4


def test_temporal_window_excludes_hides_from_targets_and_users_without_any():
    rows = [(1, 10, "save", 0), (1, 20, "save", 1), (1, 30, "save", 2), (1, 40, "save", 3), (1, 50, "hide", 4)]
    with pytest.raises(ValueError, match="no user has a positive"):
        temporal_window(_log(rows), train_fraction=0.8)


def test_temporal_window_uses_the_datasets_own_per_user_cuts():
    ds = _log([(1, 10, "save", 0), (1, 20, "save", 1), (1, 30, "save", 2), (1, 40, "save", 3)])
    ds.user_train_end_ms = {"user_id": np.asarray([1], np.int64),
                            "train_end_ms": np.asarray([START_MS + 1 * MS_PER_DAY + 2], np.int64)}
    split = temporal_window(ds, train_fraction=0.9)
    assert (split.train.actions["user_id"] == 1).sum() == 2
    assert split.test.targets[0].size == 2
