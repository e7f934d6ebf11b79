"""Ranker training tensors from a Dataset's impressions.

Data is kept request-level: one row per request (user embedding, context and
the realtime sequence, stored once) and one row per impression pointing at its
request. Training batches hold whole requests, so the fused ranker encodes
each sequence once and memory stays O(R x L), not O(impressions x L).

Offline/online parity: every sequence comes from
`pinrank.backend.featurize.featurize_history` and every context vector from
`context_features`, the functions the serving preprocess calls. The history
of a request is the user's actions strictly before the request timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from pinrank.backend import schema
from pinrank.backend.featurize import context_features, featurize_history
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_DAY
from pinrank.backend.vocab import ItemVocab
from pinrank.data.dataset import Dataset

#: (user_ids [n], day_start_ms) -> (emb [n, USER_EMB_DIM] float32, known [n] bool)
UserEmbFn = Callable[[np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]
SnapshotSource = Union[Sequence[UserSnapshot], UserEmbFn, None]

_SEQ_KEYS = ("seq_item_idx", "seq_action", "seq_surface", "seq_age_h")


@dataclass
class RankerData:
    """Request-level training tensors (numpy). Impressions are sorted by request:
    request r owns impressions offsets[r]:offsets[r+1]."""

    # per request [R]
    request_id: np.ndarray
    user_id: np.ndarray
    ts_ms: np.ndarray
    history_len: np.ndarray
    user_known: np.ndarray
    user_emb: np.ndarray  # [R, USER_EMB_DIM] float32
    seq_item_idx: np.ndarray  # [R, L] int64, newest first, 0-padded
    seq_action: np.ndarray
    seq_surface: np.ndarray
    seq_age_h: np.ndarray  # [R, L] float32
    context: np.ndarray  # [R, CONTEXT_DIM] float32
    # per impression [M]
    cand_idx: np.ndarray
    labels: np.ndarray  # [M, NUM_HEADS] int8, columns = schema.HEADS
    req_index: np.ndarray
    offsets: np.ndarray  # [R + 1]

    @property
    def num_requests(self) -> int:
        return int(self.request_id.shape[0])

    @property
    def num_impressions(self) -> int:
        return int(self.cand_idx.shape[0])

    def select(self, requests: np.ndarray) -> "RankerData":
        """The data of the given request positions (in that order)."""
        requests = np.asarray(requests, dtype=np.int64)
        counts = np.diff(self.offsets)[requests]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        imp = impression_positions(self.offsets, requests)
        per_req = {
            f.name: getattr(self, f.name)[requests]
            for f in fields(self)
            if f.name not in ("cand_idx", "labels", "req_index", "offsets")
        }
        return RankerData(
            **per_req,
            cand_idx=self.cand_idx[imp],
            labels=self.labels[imp],
            req_index=np.repeat(np.arange(requests.size, dtype=np.int64), counts),
            offsets=offsets,
        )

    def split(self, train_end_ms: int, train_start_ms: int | None = None) -> "tuple[RankerData, RankerData]":
        """Time-based split: requests in [train_start_ms, train_end_ms) train, those
        from train_end_ms on evaluate; any before train_start_ms are dropped."""
        before = self.ts_ms < train_end_ms
        train = before if train_start_ms is None else before & (self.ts_ms >= train_start_ms)
        return self.select(np.flatnonzero(train)), self.select(np.flatnonzero(~before))

    def torch_batch(self, requests: np.ndarray, trim: bool = True) -> dict[str, torch.Tensor]:
        """Tensors for Ranker.forward over the given requests (+ `labels`).

        With `trim`, sequences are cut after the batch's last real action:
        padding is masked anyway, and this skips the dead attention work.
        """
        requests = np.asarray(requests, dtype=np.int64)
        imp = impression_positions(self.offsets, requests)
        counts = np.diff(self.offsets)[requests]
        seq = {k: getattr(self, k)[requests] for k in _SEQ_KEYS}
        if trim:
            real = (seq["seq_action"] != schema.PAD_ID).any(axis=0)
            n = int(np.flatnonzero(real).max()) + 1 if real.any() else 1
            seq = {k: v[:, :n] for k, v in seq.items()}
        return {
            "cand_idx": torch.from_numpy(self.cand_idx[imp]),
            "req_index": torch.from_numpy(np.repeat(np.arange(requests.size, dtype=np.int64), counts)),
            "user_emb": torch.from_numpy(self.user_emb[requests]),
            **{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in seq.items()},
            "context": torch.from_numpy(self.context[requests]),
            "labels": torch.from_numpy(self.labels[imp].astype(np.float32)),
        }


def impression_positions(offsets: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """Concatenated impression ranges of `requests` (vectorised arange-of-ranges)."""
    starts = offsets[requests]
    counts = offsets[np.asarray(requests) + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # position within the output minus the start of its run, plus the run's source start
    run_start_out = np.repeat(np.cumsum(counts) - counts, counts)
    return (np.arange(total, dtype=np.int64) - run_start_out + np.repeat(starts, counts)).astype(np.int64)


def day_start_ms(ts_ms: np.ndarray | int) -> np.ndarray:
    """UTC midnight at or before each timestamp."""
    return (np.asarray(ts_ms, dtype=np.int64) // MS_PER_DAY) * MS_PER_DAY


def snapshot_lookup(snapshots: SnapshotSource) -> UserEmbFn:
    """Turn snapshots into a (user_ids, day_start_ms) -> (emb, known) function.

    With a list, a request made on day d reads the newest snapshot whose
    as_of_ms <= d's midnight (what a daily batch job would have published);
    before the first snapshot every user is unknown and gets its cold start.
    None means no PinnerFormer: zero embeddings, every user unknown.
    """
    if snapshots is None:
        def none_fn(user_ids: np.ndarray, day_ms: int) -> tuple[np.ndarray, np.ndarray]:
            n = len(user_ids)
            return np.zeros((n, schema.USER_EMB_DIM), np.float32), np.zeros(n, dtype=bool)

        return none_fn
    if callable(snapshots):
        return snapshots
    snaps = sorted(snapshots, key=lambda s: s.as_of_ms)
    if not snaps:
        return snapshot_lookup(None)
    as_of = np.asarray([s.as_of_ms for s in snaps], dtype=np.int64)

    def fn(user_ids: np.ndarray, day_ms: int) -> tuple[np.ndarray, np.ndarray]:
        i = int(np.searchsorted(as_of, day_ms, side="right")) - 1
        if i < 0:
            n = len(user_ids)
            return np.tile(snaps[0].cold_start.astype(np.float32), (n, 1)), np.zeros(n, dtype=bool)
        return snaps[i].lookup(user_ids)

    return fn


def build_ranker_data(ds: Dataset, snapshots: SnapshotSource = None, vocab: ItemVocab | None = None,
                      seq_len: int = schema.REALTIME_SEQ_LEN, progress: bool = False) -> RankerData:
    """Featurize every request of `ds.impressions` (see module docstring)."""
    if ds.impressions is None:
        raise ValueError(f"{ds.path or 'dataset'}: has no impressions; the ranker trains on impressions")
    vocab = vocab or ItemVocab(ds.item_ids)
    im = ds.impressions
    order = np.argsort(im["request_id"], kind="stable")
    rid_sorted = im["request_id"][order]
    req_ids, first, counts = np.unique(rid_sorted, return_index=True, return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    user_id = im["user_id"][order][first]
    ts_ms = im["ts_ms"][order][first]
    req_index = np.repeat(np.arange(req_ids.size, dtype=np.int64), counts)
    if not (np.array_equal(im["user_id"][order], user_id[req_index])
            and np.array_equal(im["ts_ms"][order], ts_ms[req_index])):
        raise ValueError("impressions of one request_id must share user_id and ts_ms")

    # Locate each request's history in the (user, ts)-sorted action log with
    # two searchsorted calls; stable sort keeps the log's order among ties,
    # which featurize_history uses to order simultaneous actions.
    a = ds.actions
    a_order = np.lexsort((a["ts_ms"], a["user_id"]))
    a_user, a_ts = a["user_id"][a_order], a["ts_ms"][a_order]
    a_item = vocab.lookup(a["item_id"][a_order])
    a_act, a_surf = a["action"][a_order], a["surface"][a_order]
    lo = np.searchsorted(a_user, user_id, side="left")
    hi_user = np.searchsorted(a_user, user_id, side="right")
    end = np.empty_like(lo)
    for u_lo, u_hi, idx in _group_by_range(lo, hi_user):
        end[idx] = u_lo + np.searchsorted(a_ts[u_lo:u_hi], ts_ms[idx], side="left")
    history_len = end - lo

    # User embeddings: one snapshot lookup per (day) group of requests.
    emb_fn = snapshot_lookup(snapshots)
    user_emb = np.zeros((req_ids.size, schema.USER_EMB_DIM), np.float32)
    known = np.zeros(req_ids.size, dtype=bool)
    days = day_start_ms(ts_ms)
    for day in np.unique(days):
        idx = np.flatnonzero(days == day)
        emb, k = emb_fn(user_id[idx], int(day))
        user_emb[idx] = emb
        known[idx] = k

    R = req_ids.size
    seq = {
        "seq_item_idx": np.zeros((R, seq_len), np.int64),
        "seq_action": np.zeros((R, seq_len), np.int64),
        "seq_surface": np.zeros((R, seq_len), np.int64),
        "seq_age_h": np.zeros((R, seq_len), np.float32),
    }
    context = np.zeros((R, schema.CONTEXT_DIM), np.float32)
    start = np.maximum(lo, end - seq_len)  # only the newest seq_len can be kept
    for r in tqdm(range(R), desc="featurize", unit="request", disable=not progress, mininterval=1.0):
        s, e = int(start[r]), int(end[r])
        f = featurize_history(a_item[s:e], a_act[s:e], a_surf[s:e], a_ts[s:e], int(ts_ms[r]), seq_len)
        for key in _SEQ_KEYS:
            seq[key][r] = f[key]
        context[r] = context_features(int(ts_ms[r]), int(history_len[r]), bool(known[r]))

    return RankerData(
        request_id=req_ids.astype(np.int64),
        user_id=user_id.astype(np.int64),
        ts_ms=ts_ms.astype(np.int64),
        history_len=history_len.astype(np.int64),
        user_known=known,
        user_emb=user_emb,
        **seq,
        context=context,
        cand_idx=vocab.lookup(im["item_id"][order]),
        labels=im["labels"][order].astype(np.int8),
        req_index=req_index,
        offsets=offsets,
    )


def _group_by_range(lo: np.ndarray, hi: np.ndarray):
    """Yield (lo, hi, positions) for each distinct [lo, hi) range."""
    keys, inverse = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(keys)))])
    for g, (u_lo, u_hi) in enumerate(keys):
        yield int(u_lo), int(u_hi), order[bounds[g]:bounds[g + 1]]
