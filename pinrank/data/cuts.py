"""Time order and the train cut of an imported log.

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
"""

from __future__ import annotations

import numpy as np

from pinrank.data.dataset import DatasetError

SPLITS: tuple[str, ...] = ("global", "per-user")
#: Gap forced between one user's consecutive actions (see the module docstring).
TIE_STEP_MS = 2


def strictly_increasing_per_user(user_idx: np.ndarray, starts: np.ndarray, ts: np.ndarray,
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


def global_train_end(ts: np.ndarray, train_fraction: float) -> int:
    """The `train_fraction` quantile of action times: actions before it train."""
    n = ts.shape[0]
    train_end = int(np.sort(ts)[min(n - 1, int(train_fraction * n))])
    if train_end == int(ts.min()):
        train_end += 1  # keep at least one train timestamp on degenerate logs
    return train_end


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


def check_split(split: str) -> str:
    """The meta / API spelling of a --split value; raises before any parsing."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split.replace("-", "_")
