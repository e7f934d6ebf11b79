"""Sharded daily batch embedding: disjoint user shards, merged into one snapshot.

Shard i of n embeds the users the single-process job would recompute (all
users with history, or with `previous` only those active since it) whose
`shard_of(user_id, n) == i`; `merge_shards` joins the n shards, carries
every other user of `previous` over, and returns exactly the snapshot
`build_snapshot` would (same users, embeddings equal up to float rounding,
same meta plus a "shards" entry). Shards can run as independent processes
(`pinrank embed --num-shards n --shard-index i`, then `pinrank embed-merge`)
or as the ranks of one torchrun job (`pinrank embed` under torchrun: rank 0
gathers the shards and merges them).

The shard key is a 64-bit mix (splitmix64) of the user id, not the id itself:
ids carry structure (strides, sign-up order, one parity per region) that a
plain modulo would turn into unbalanced shards.

A shard directory holds `user_ids.npy` (int64, sorted, unique), `user_emb.npy`
(float32 [U, USER_EMB_DIM]) and `shard.json` (meta), written last: a
directory without it is an incomplete shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pinrank.backend import schema
from pinrank.backend.snapshot import UserSnapshot
from pinrank.data.dataset import Dataset
from pinrank.embed.batch import assemble_snapshot, plan_snapshot, resolve_model, user_embeddings
from pinrank.models.pinnerformer import UserTimelines

SHARD_KEY = "splitmix64(user_id) % num_shards"
#: Meta of one shard only; everything else must agree across shards and goes into the snapshot.
_SHARD_ONLY = ("shard_index", "num_shards", "shard_key", "counts", "data_fingerprint", "previous_as_of_ms")
#: What every shard of one merge must agree on (beyond num_shards and the key).
_MUST_AGREE = ("as_of_ms", "version", "source_checkpoint", "seq_len", "sequence_actions", "data_fingerprint",
               "previous_version", "previous_as_of_ms")


class ShardError(ValueError):
    """A shard is missing, malformed, or does not fit the other shards / the previous snapshot."""


def shard_of(user_ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index in [0, num_shards) of each user id (int64), stable across runs and machines."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    x = np.ascontiguousarray(user_ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(num_shards)).astype(np.int64)


def data_fingerprint(ds: Dataset) -> str:
    """An id of the action log a shard embedded: shards of different data must not merge."""
    h = hashlib.sha256(json.dumps(ds.meta, sort_keys=True, default=str).encode())
    for arr in (ds.item_ids, ds.actions["user_id"], ds.actions["ts_ms"], ds.actions["item_id"]):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    return "sha256:" + h.hexdigest()


@dataclass
class EmbeddingShard:
    """One shard's freshly computed users. `origin` names it in error messages (a path or a rank)."""

    user_ids: np.ndarray
    user_emb: np.ndarray
    meta: dict[str, Any]
    origin: str = "shard"

    def __post_init__(self) -> None:
        where = self.origin
        missing = [k for k in ("as_of_ms", "source_checkpoint", "shard_index", "num_shards", "shard_key")
                   if k not in self.meta]
        if missing:
            raise ShardError(f"{where}: shard meta lacks {', '.join(missing)}")
        if self.meta["shard_key"] != SHARD_KEY:
            raise ShardError(f"{where}: built with shard key {self.meta['shard_key']!r}, expected {SHARD_KEY!r}")
        n, i = int(self.meta["num_shards"]), int(self.meta["shard_index"])
        if not 0 <= i < n:
            raise ShardError(f"{where}: shard_index {i} is outside [0, {n})")
        ids = self.user_ids
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or (ids.size > 1 and not (np.diff(ids) > 0).all()):
            raise ShardError(f"{where}: user_ids must be sorted, unique integers")
        if self.user_emb.shape != (ids.size, schema.USER_EMB_DIM):
            raise ShardError(f"{where}: user_emb must be [{ids.size}, {schema.USER_EMB_DIM}], "
                             f"got {self.user_emb.shape}")
        if not np.isfinite(self.user_emb).all():
            raise ShardError(f"{where}: user_emb holds NaN or inf")
        stray = int((shard_of(ids, n) != i).sum())
        if stray:
            raise ShardError(f"{where}: {stray} users belong to other shards of {n} (not shard {i})")

    @property
    def shard_index(self) -> int:
        return int(self.meta["shard_index"])

    @property
    def num_shards(self) -> int:
        return int(self.meta["num_shards"])

    def save(self, path: str | Path) -> Path:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        # shard.json marks a finished shard: drop an old one before the arrays change.
        (root / "shard.json").unlink(missing_ok=True)
        np.save(root / "user_ids.npy", self.user_ids.astype(np.int64))
        np.save(root / "user_emb.npy", self.user_emb.astype(np.float32))
        tmp = root / "shard.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        tmp.replace(root / "shard.json")
        return root

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingShard":
        root = Path(path)
        if not root.is_dir():
            raise ShardError(f"{root}: no such shard directory")
        if not (root / "shard.json").exists():
            raise ShardError(f"{root}: incomplete shard (shard.json missing: still running, or it failed)")
        try:
            meta = json.loads((root / "shard.json").read_text())
            return cls(np.load(root / "user_ids.npy"), np.load(root / "user_emb.npy"), meta, str(root))
        except FileNotFoundError as exc:
            raise ShardError(f"{root}: incomplete shard ({Path(exc.filename).name} missing)") from None
        except (ValueError, EOFError, OSError, json.JSONDecodeError) as exc:
            if isinstance(exc, ShardError):
                raise
            raise ShardError(f"{root}: malformed shard ({exc})") from None


def build_shard(source: Any, dataset: Dataset, as_of_ms: int, shard_index: int, num_shards: int,
                previous: UserSnapshot | None = None, batch_size: int = 64) -> EmbeddingShard:
    """Shard `shard_index` of `num_shards` of `build_snapshot(source, dataset, as_of_ms, previous)`:
    the users it would recompute that fall in this shard (carried users are the merge's job)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is outside [0, {num_shards})")
    model, source_id = resolve_model(source, dataset)
    timelines = UserTimelines(dataset, model.config.sequence_actions)
    compute, _, _, meta = plan_snapshot(model, source_id, timelines, int(as_of_ms), previous)
    compute = compute[shard_of(timelines.user_ids[compute], num_shards) == shard_index]
    emb = user_embeddings(model, timelines, compute, int(as_of_ms), batch_size)
    meta.update(shard_index=int(shard_index), num_shards=int(num_shards), shard_key=SHARD_KEY,
                data_fingerprint=data_fingerprint(dataset), counts={"recomputed": int(compute.size)})
    if previous is not None:
        meta["previous_as_of_ms"] = previous.as_of_ms
    return EmbeddingShard(timelines.user_ids[compute].astype(np.int64), emb, meta,
                          f"shard {shard_index} of {num_shards}")


def _check_set(shards: Sequence[EmbeddingShard]) -> list[EmbeddingShard]:
    """The shards in index order, or ShardError on a missing, repeated or inconsistent one."""
    if not shards:
        raise ShardError("no shards to merge")
    counts = {s.num_shards for s in shards}
    if len(counts) > 1:
        detail = ", ".join(f"{s.origin}: {s.num_shards}" for s in shards)
        raise ShardError(f"shards disagree on num_shards ({detail})")
    n = counts.pop()
    by_index: dict[int, EmbeddingShard] = {}
    for s in shards:
        if s.shard_index in by_index:
            raise ShardError(f"shard {s.shard_index} of {n} given twice ({by_index[s.shard_index].origin} "
                             f"and {s.origin}): the shards overlap")
        by_index[s.shard_index] = s
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise ShardError(f"missing shard(s) {', '.join(map(str, missing))} of {n}: every user of those "
                         "shards would be dropped")
    ordered = [by_index[i] for i in range(n)]
    first = ordered[0]
    for key in _MUST_AGREE:
        for s in ordered[1:]:
            if s.meta.get(key) != first.meta.get(key):
                what = "model" if key == "source_checkpoint" else key
                raise ShardError(f"shards disagree on {what}: {first.origin} has {first.meta.get(key)!r}, "
                                 f"{s.origin} has {s.meta.get(key)!r}")
    return ordered


def merge_shards(shards: Sequence[EmbeddingShard], previous: UserSnapshot | None = None) -> UserSnapshot:
    """One snapshot from a complete set of shards (+ the users of `previous` none of them recomputed).

    ShardError when a shard is missing or repeated, when shards disagree on the
    model, as_of, data or previous snapshot, when users overlap, or when
    `previous` is not the snapshot the shards were built against (incremental
    shards need it; full shards must not get one).
    """
    ordered = _check_set(shards)
    meta0 = ordered[0].meta
    incremental = "previous_version" in meta0
    if incremental and previous is None:
        raise ShardError(f"the shards were built incrementally against snapshot version "
                         f"{meta0['previous_version']}: merge them with that --previous")
    if not incremental and previous is not None:
        raise ShardError("the shards hold every user (built without a previous snapshot): merge them without "
                         "--previous")
    if previous is not None:
        got = (previous.meta.get("version"), previous.as_of_ms, previous.meta.get("source_checkpoint"))
        want = (meta0["previous_version"], meta0.get("previous_as_of_ms"), meta0["source_checkpoint"])
        if got != want:
            raise ShardError(f"--previous is version {got[0]} as of {got[1]} (model {got[2]}), but the shards "
                             f"were built against version {want[0]} as of {want[1]} (model {want[2]})")
    ids = np.concatenate([s.user_ids for s in ordered]).astype(np.int64)
    emb = np.concatenate([s.user_emb for s in ordered]).astype(np.float32)
    uniq, seen = np.unique(ids, return_counts=True)
    if (seen > 1).any():
        raise ShardError(f"{int((seen > 1).sum())} users appear in more than one shard (e.g. {int(uniq[seen > 1][0])})")
    if previous is not None:
        keep = ~np.isin(previous.user_ids, ids)
        carried_ids, carried_emb = previous.user_ids[keep], previous.user_emb[keep]
    else:
        carried_ids = np.zeros(0, dtype=np.int64)
        carried_emb = np.zeros((0, schema.USER_EMB_DIM), dtype=np.float32)
    meta = {k: v for k, v in meta0.items() if k not in _SHARD_ONLY}
    meta["shards"] = {"num_shards": len(ordered), "key": SHARD_KEY,
                      "recomputed": [int(s.user_ids.size) for s in ordered]}
    return assemble_snapshot(ids, emb, carried_ids, carried_emb, meta, incremental)
