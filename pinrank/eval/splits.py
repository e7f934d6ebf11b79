"""The two evaluation protocols' data splits, on any dataset.

Both work on each user's sequence actions in log order (the importers make
timestamps strictly increasing per user, so log order is time order) and
cut every user's history separately, so every user with enough history is
evaluated, unlike a global time split that leaves only the users who happen
to straddle it.

- `leave_one_out` (SASRec / BERT4Rec / HSTU protocol): the events are each
  user's first interaction with each item; the last event is the test
  target, the second-to-last the validation target. The model is trained on
  the actions before the validation event, validated with the history
  before it, and tested with the history before the test event (which
  includes the validation item).
- `temporal_window` (PinnerFormer §4.1, per user): each user's history is
  cut at the first action after a `train_fraction` share of their actions;
  the targets are the distinct positive items in the `window_days` after the
  cut. Training sees only actions before each user's cut (it does see other
  users' later actions: a per-user split's known trade-off, documented in
  docs/results.md).

The training set is a new Dataset whose frozen item content table is
recomputed from its own rows: the importers' SVD stand-in is fitted on the
import's global training period, which may include the protocol's targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.cuts import per_user_cuts
from pinrank.data.dataset import Dataset
from pinrank.data.item_features import item_embeddings
from pinrank.models.pinnerformer import DEFAULT_SEQUENCE_ACTIONS, UserTimelines


@dataclass
class ProtocolSplit:
    """Evaluated timeline rows, where each one's input ends, and its targets.

    `timelines` hold every user's whole log; a row's model input is its
    actions before flat index `ends[i]` (exclusive). `targets[i]` are item
    indices (one for leave-one-out, the window's positives otherwise).
    """

    timelines: UserTimelines
    rows: np.ndarray
    ends: np.ndarray
    targets: list[np.ndarray]

    def seen(self, i: int) -> np.ndarray:
        """Item indices in evaluated row i's input (removed from its ranking)."""
        r = int(self.rows[i])
        return self.timelines.item_idx[self.timelines.offsets[r]: self.ends[i]]


@dataclass
class LeaveOneOut:
    train: Dataset
    validation: ProtocolSplit
    test: ProtocolSplit


@dataclass
class TemporalWindow:
    train: Dataset
    test: ProtocolSplit
    cut_ms: np.ndarray


def _row_of_flat(t: UserTimelines) -> np.ndarray:
    return np.repeat(np.arange(len(t)), t.lengths)


def training_dataset(ds: Dataset, t: UserTimelines, keep: np.ndarray, seed: int = 0) -> Dataset:
    """A Dataset holding the timeline actions where `keep` (flat mask) is True, all of it training.

    No impressions (the protocols evaluate retrieval). Item embeddings are
    refitted on these rows' positives so no target leaks through them.
    """
    users = np.repeat(t.user_ids, t.lengths)[keep]
    item_idx = t.item_idx[keep]
    action = t.action[keep]
    ts = t.ts_ms[keep]
    positive = np.isin(action, [schema.ACTION_IDS[a] for a in schema.POSITIVE_ACTIONS])
    _, user_idx = np.unique(users, return_inverse=True)
    emb = item_embeddings(np.asarray(ds.item_topic), user_idx[positive], item_idx[positive] - 1, seed=seed)
    end_ms = int(ts.max()) + 1 if ts.size else int(ds.meta["end_ms"])
    meta = {**ds.meta, "train_end_ms": end_ms, "end_ms": end_ms,
            "derived": "protocol training split (every action is training)"}
    return Dataset(
        actions={"user_id": users, "item_id": ds.item_ids[item_idx - 1], "action": action,
                 "surface": t.surface[keep], "ts_ms": ts, "duration_ms": t.duration_ms[keep]},
        item_ids=ds.item_ids, item_topic=ds.item_topic, item_emb=emb, meta=meta, impressions=None,
    )


def leave_one_out(ds: Dataset, sequence_actions: tuple[str, ...] = DEFAULT_SEQUENCE_ACTIONS,
                  min_events: int = 3, seed: int = 0) -> LeaveOneOut:
    """Leave-one-out split (module docstring); users with fewer than `min_events`
    distinct items are not evaluated and train on everything they did."""
    t = UserTimelines(ds, sequence_actions)
    row_of = _row_of_flat(t)
    # Flat order is (user, time), so np.unique's first index of a (user, item) key is its first interaction.
    key = row_of.astype(np.int64) * (ds.num_items + 1) + t.item_idx
    events = np.sort(np.unique(key, return_index=True)[1])
    ev_row = row_of[events]
    stop = np.searchsorted(ev_row, np.arange(len(t)), side="right")
    count = stop - np.searchsorted(ev_row, np.arange(len(t)), side="left")
    rows = np.flatnonzero(count >= min_events)
    if rows.size == 0:
        raise ValueError(f"no user has {min_events} or more distinct items: nothing to leave out")
    test_end = events[stop[rows] - 1]
    val_end = events[stop[rows] - 2]
    train_end = t.offsets[1:].copy()  # users not evaluated train on everything
    train_end[rows] = val_end
    keep = np.arange(t.item_idx.size) < train_end[row_of]
    return LeaveOneOut(
        train=training_dataset(ds, t, keep, seed),
        validation=ProtocolSplit(t, rows, val_end, [t.item_idx[[e]] for e in val_end]),
        test=ProtocolSplit(t, rows, test_end, [t.item_idx[[e]] for e in test_end]),
    )


def temporal_window(ds: Dataset, train_fraction: float = 0.8, window_days: float = 14.0,
                    sequence_actions: tuple[str, ...] = DEFAULT_SEQUENCE_ACTIONS,
                    cuts_ms: np.ndarray | None = None, seed: int = 0) -> TemporalWindow:
    """Per-user temporal split (module docstring). The cuts are, first found:
    `cuts_ms` (per timeline row of `sequence_actions`), the dataset's own
    per-user split (`pinrank data import --split per-user`), or each user's
    first `train_fraction` of actions."""
    t = UserTimelines(ds, sequence_actions)
    if cuts_ms is not None:
        cut = np.asarray(cuts_ms, dtype=np.int64)
    elif ds.user_train_end_ms is not None:  # the importer's per-user split
        cut = ds.train_cut_ms(t.user_ids)
    else:
        cut = per_user_cuts(t.lengths, t.offsets[:-1], t.ts_ms, train_fraction, int(ds.meta["end_ms"]))
    row_of = _row_of_flat(t)
    keep = t.ts_ms < cut[row_of]
    pos = UserTimelines(ds, schema.POSITIVE_ACTIONS)
    prow = pos.rows_of(t.user_ids)
    window_ms = int(round(window_days * MS_PER_DAY))
    rows, ends, targets = [], [], []
    for r in range(len(t)):
        end = int(t.offsets[r] + np.searchsorted(t.ts_ms[t.offsets[r]: t.offsets[r + 1]], cut[r], side="left"))
        if prow[r] < 0 or end == t.offsets[r]:
            continue
        lo, hi = pos.offsets[prow[r]], pos.offsets[prow[r] + 1]
        ts = pos.ts_ms[lo:hi]
        sel = (ts >= cut[r]) & (ts < cut[r] + window_ms)
        if sel.any():
            rows.append(r)
            ends.append(end)
            targets.append(np.unique(pos.item_idx[lo:hi][sel]))
    if not rows:
        raise ValueError("no user has a positive action in the window after their cut")
    return TemporalWindow(
        train=training_dataset(ds, t, keep, seed),
        test=ProtocolSplit(t, np.asarray(rows, dtype=np.int64), np.asarray(ends, dtype=np.int64), targets),
        cut_ms=cut,
    )


__all__ = ["LeaveOneOut", "ProtocolSplit", "TemporalWindow", "leave_one_out", "temporal_window",
           "training_dataset"]
