"""Assembly of a parsed log into a Dataset, filling in what real logs lack
the same way for every format.

- Impressions: each engagement or hide becomes a request holding that item
  (labelled from the action) plus `negatives` catalogue items (unlabelled;
  pinrank.data.negatives), seeded. The request is stamped 1 ms before its
  action so that "actions before the request" can never include the action
  being predicted.
- Item embeddings: the stand-in of pinrank.data.item_features.
- Time order and the train split: pinrank.data.cuts. Popularity for
  negatives and the SVD embeddings use the training rows of the chosen split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pinrank.backend import schema
from pinrank.data.cuts import TIE_STEP_MS, check_split, global_train_end, per_user_cuts, strictly_increasing_per_user
from pinrank.data.dataset import Dataset, DatasetError
from pinrank.data.formats.rawlog import RawLog
from pinrank.data.formats.rows import BadRows
from pinrank.data.item_features import item_embeddings
from pinrank.data.negatives import draw_negatives

#: The ranker head an action labels. A purchase is the commerce analogue of
#: a save (the strongest positive), so it labels the save head.
ACTION_HEAD = {"save": "save", "click": "click", "closeup": "closeup", "hide": "hide", "purchase": "save"}


def assemble(source: str, log: RawLog, item_ids: np.ndarray, item_topic: np.ndarray, *,
             bad: BadRows, negatives: int, seed: int, train_fraction: float, split: str,
             extra_meta: dict[str, Any]) -> Dataset:
    """`log` as a Dataset over the catalogue `item_ids` (sorted) with topics
    `item_topic`; `extra_meta` (the reader's) is merged into meta."""
    split_kind = check_split(split)
    if not len(log):
        raise DatasetError(f"{source}: no usable rows")
    user, item, action, ts = (log.column(name) for name in ("user", "item", "action", "ts_ms"))
    order = np.lexsort((item, ts, user))
    user, item, action, ts = user[order], item[order], action[order], ts[order]
    user_ids, user_idx, user_counts = np.unique(user, return_inverse=True, return_counts=True)
    user_idx = user_idx.reshape(-1)
    user_starts = np.concatenate([[0], np.cumsum(user_counts)[:-1]]).astype(np.int64)
    ts = strictly_increasing_per_user(user_idx, user_starts, ts)
    n = ts.shape[0]
    train_end = global_train_end(ts, train_fraction)
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
    negs = draw_negatives(rng, r_item, item_ids.shape[0], k, popularity)
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
    per_action = np.bincount(action, minlength=schema.NUM_ACTION_IDS)
    by_type = {a: int(per_action[schema.ACTION_IDS[a]]) for a in schema.ACTIONS}
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
