"""The daily batch embedding job: PinnerFormer user embeddings -> UserSnapshot.

A snapshot "as of" T embeds every user from their last M sequence actions
strictly before T. The incremental job (the paper's daily run) recomputes
only users with actions in [previous.as_of_ms, T) and carries everyone else
over. That is exact, not an approximation: a user's embedding depends only
on their action window (all time features are relative to the newest action
or absolute), never on T itself, so an untouched user's embedding is the
same whenever it is computed.

`build_daily_snapshots` makes one snapshot per UTC midnight; the ranker uses
`daily_embeddings` so an impression at time t sees the snapshot built at the
start of t's UTC day, never a fresher one (the production staleness).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pinrank.backend import schema
from pinrank.backend.hashing import sha256_of
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.dataset import Dataset
from pinrank.models.layers import l2_normalize
from pinrank.models.pinnerformer import (
    PinnerFormer,
    UserTimelines,
    load_pinnerformer,
    to_tensors,
)


@torch.inference_mode()
def user_embeddings(model: PinnerFormer, timelines: UserTimelines, rows: np.ndarray, as_of_ms: int | np.ndarray,
                    batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """[len(rows), D] embeddings of timeline rows from their last max_len actions before as_of_ms."""
    rows = np.asarray(rows, dtype=np.int64)
    return embeddings_at(model, timelines, rows, timelines.ends_before(rows, as_of_ms), batch_size, progress)


@torch.inference_mode()
def embeddings_at(model: PinnerFormer, timelines: UserTimelines, rows: np.ndarray, ends: np.ndarray,
                  batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """[len(rows), D] embeddings of timeline rows whose input ends (exclusive) at flat index `ends`:
    for protocols that cut a user's history at an action rather than at a time."""
    was_training = model.training
    model.eval()
    rows = np.asarray(rows, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    out = np.zeros((rows.size, model.config.out_dim), dtype=np.float32)
    # Batching users of similar length wastes less padding; outputs do not depend on it.
    order = np.argsort(ends - timelines.offsets[rows], kind="stable")
    for i in tqdm(range(0, order.size, batch_size), desc="embed users", unit="batch", disable=not progress,
                  mininterval=1.0):
        sel = order[i: i + batch_size]
        out[sel] = model.embed_users(**to_tensors(timelines.batch(rows[sel], ends[sel], model.max_len))).numpy()
    model.train(was_training)
    return out


def _version(as_of_ms: int) -> str:
    t = datetime.fromtimestamp(as_of_ms / 1000, tz=timezone.utc)
    return t.strftime("%Y%m%d") if as_of_ms % MS_PER_DAY == 0 else t.strftime("%Y%m%dT%H%M%SZ")


def _model_fingerprint(model: PinnerFormer) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return "state-sha256:" + h.hexdigest()


def resolve_model(source: str | Path | PinnerFormer, ds: Dataset) -> tuple[PinnerFormer, str]:
    """The model and an id that changes whenever its weights do (file sha256 for checkpoints)."""
    if isinstance(source, PinnerFormer):
        model, source_id = source, _model_fingerprint(source)
        if model.num_items != ds.num_items:
            raise ValueError(f"model has {model.num_items} items, dataset has {ds.num_items}")
    else:
        model, ckpt = load_pinnerformer(source)
        source_id = sha256_of(source)
        trained_on = ckpt.get("extra", {}).get("item_ids")
        if trained_on is not None and not np.array_equal(np.asarray(trained_on), ds.item_ids):
            raise ValueError(
                f"{source}: checkpoint was trained on a different item catalogue than {ds.path or 'the dataset'}"
            )
    if model.config.out_dim != schema.USER_EMB_DIM:
        raise ValueError(
            f"model out_dim {model.config.out_dim} != schema.USER_EMB_DIM {schema.USER_EMB_DIM}: "
            "a snapshot must match the serving contract"
        )
    return model, source_id


def _cold_start(emb: np.ndarray) -> np.ndarray:
    if emb.shape[0] == 0:
        return np.zeros(schema.USER_EMB_DIM, dtype=np.float32)
    return l2_normalize(torch.from_numpy(emb.mean(axis=0))).numpy().astype(np.float32)


def plan_snapshot(model: PinnerFormer, source_id: str, timelines: UserTimelines, as_of_ms: int,
          previous: UserSnapshot | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Which timeline rows to embed as of `as_of_ms`, which (ids, embeddings)
    carry over from `previous`, and the snapshot's meta so far."""
    all_rows = np.arange(len(timelines))
    ends = timelines.ends_before(all_rows, as_of_ms)
    has_history = ends > timelines.offsets[:-1]
    rows = all_rows[has_history]
    meta: dict[str, Any] = {
        "as_of_ms": int(as_of_ms),
        "version": _version(as_of_ms),
        "source_checkpoint": source_id,
        "seq_len": model.max_len,
        "sequence_actions": list(model.config.sequence_actions),
    }
    if previous is None:
        return rows, np.zeros(0, dtype=np.int64), np.zeros((0, schema.USER_EMB_DIM), dtype=np.float32), meta
    if previous.as_of_ms > as_of_ms:
        raise ValueError(f"previous snapshot is as of {previous.as_of_ms}, after as_of_ms {as_of_ms}")
    if previous.meta.get("source_checkpoint") != source_id:
        raise ValueError(
            "previous snapshot was built by another model "
            f"({previous.meta.get('source_checkpoint')}); build a full snapshot (no previous)"
        )
    last_ts = timelines.ts_ms[np.maximum(ends[rows] - 1, 0)]
    prev_rows = timelines.rows_of(previous.user_ids)
    known = np.zeros(len(timelines), dtype=bool)
    known[prev_rows[prev_rows >= 0]] = True
    # Active since the previous run, or missing from it (e.g. it came from other data).
    compute = rows[(last_ts >= previous.as_of_ms) | ~known[rows]]
    keep = ~np.isin(previous.user_ids, timelines.user_ids[compute])
    meta["previous_version"] = previous.meta.get("version")
    return compute, previous.user_ids[keep], previous.user_emb[keep], meta


def assemble_snapshot(computed_ids: np.ndarray, computed_emb: np.ndarray, carried_ids: np.ndarray,
                      carried_emb: np.ndarray, meta: dict[str, Any], incremental: bool) -> UserSnapshot:
    """The snapshot of freshly computed and carried-over users (ids disjoint), sorted by id."""
    ids = np.concatenate([carried_ids, computed_ids]).astype(np.int64)
    embs = np.concatenate([carried_emb, computed_emb]).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    ids, embs = ids[order], embs[order]
    meta = dict(meta)
    meta["incremental"] = incremental
    meta["counts"] = {"users": int(ids.size), "recomputed": int(computed_ids.size), "carried": int(carried_ids.size)}
    return UserSnapshot(ids, embs, _cold_start(embs), meta)


def _snapshot(model: PinnerFormer, source_id: str, timelines: UserTimelines, as_of_ms: int,
              previous: UserSnapshot | None, batch_size: int, progress: bool = False) -> UserSnapshot:
    compute, carried_ids, carried_emb, meta = plan_snapshot(model, source_id, timelines, as_of_ms, previous)
    emb = user_embeddings(model, timelines, compute, as_of_ms, batch_size, progress)
    return assemble_snapshot(timelines.user_ids[compute], emb, carried_ids, carried_emb, meta, previous is not None)


def build_snapshot(source: str | Path | PinnerFormer, dataset: Dataset, as_of_ms: int,
                   previous: UserSnapshot | None = None, batch_size: int = 64, progress: bool = False) -> UserSnapshot:
    """Embed users from their last M actions strictly before `as_of_ms`.

    `source` is a "pinnerformer" checkpoint path (meta source_checkpoint =
    its sha256) or a model in memory (a sha256 of its weights). With
    `previous` (same source, earlier as_of), only users with actions in
    [previous.as_of_ms, as_of_ms) are recomputed and the rest are carried
    over. Users without any history yet are absent; cold_start is the mean
    known embedding re-normalised (zeros when there is none).
    """
    model, source_id = resolve_model(source, dataset)
    timelines = UserTimelines(dataset, model.config.sequence_actions)
    return _snapshot(model, source_id, timelines, int(as_of_ms), previous, batch_size, progress)


def day_boundaries(start_ms: int, end_ms: int) -> list[int]:
    """UTC midnights from the one at/before start_ms to the one at/before end_ms - 1:
    exactly the snapshot times needed by events at t in [start_ms, end_ms)."""
    first = (int(start_ms) // MS_PER_DAY) * MS_PER_DAY
    last = ((int(end_ms) - 1) // MS_PER_DAY) * MS_PER_DAY
    return list(range(first, last + 1, MS_PER_DAY)) if end_ms > start_ms else []


def build_daily_snapshots(source: str | Path | PinnerFormer, dataset: Dataset, start_ms: int, end_ms: int,
                          batch_size: int = 64, progress: bool = False) -> list[UserSnapshot]:
    """One snapshot per UTC day boundary (`day_boundaries`), chained incrementally."""
    model, source_id = resolve_model(source, dataset)
    timelines = UserTimelines(dataset, model.config.sequence_actions)
    snaps: list[UserSnapshot] = []
    for t in tqdm(day_boundaries(start_ms, end_ms), desc="daily snapshots", unit="day", disable=not progress):
        snaps.append(_snapshot(model, source_id, timelines, t, snaps[-1] if snaps else None, batch_size))
    return snaps


def snapshot_index(snapshots: Sequence[UserSnapshot], ts_ms: np.ndarray) -> np.ndarray:
    """Per event time, the index of the freshest snapshot with as_of_ms <= t (-1 if none)."""
    as_of = np.asarray([s.as_of_ms for s in snapshots], dtype=np.int64)
    if as_of.size > 1 and not (np.diff(as_of) > 0).all():
        raise ValueError("snapshots must be in increasing as_of_ms order")
    return np.searchsorted(as_of, np.asarray(ts_ms, dtype=np.int64), side="right") - 1


def daily_embeddings(snapshots: Sequence[UserSnapshot], user_ids: np.ndarray,
                     ts_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event (user, t): the user's embedding in the snapshot for t, and whether it was known.

    Events before the first snapshot get zeros and known=False.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    idx = snapshot_index(snapshots, ts_ms)
    emb = np.zeros((user_ids.size, schema.USER_EMB_DIM), dtype=np.float32)
    known = np.zeros(user_ids.size, dtype=bool)
    for i in np.unique(idx[idx >= 0]):
        sel = idx == i
        emb[sel], known[sel] = snapshots[i].lookup(user_ids[sel])
    return emb, known
