"""The on-disk dataset format every stage reads and every source writes.

A dataset directory holds:

- `actions.parquet`: the action log, one row per user action, columns
  `user_id` int64, `item_id` int64, `action` string (schema.ACTIONS),
  `surface` string (schema.SURFACES), `ts_ms` int64, `duration_ms` int64
  (nullable). Sorted by (user_id, ts_ms, item_id).
- `impressions.parquet`: what the ranker learns from, one row per item shown
  in a request: `request_id` int64, `user_id` int64, `item_id` int64,
  `ts_ms` int64, `surface` string, and one int8 `label_<head>` column per
  schema.HEADS. Sorted by (request_id, item_id). Optional for sources that log
  no impressions (they are derived with sampled negatives).
- `items.parquet`: the catalogue, `item_id` int64 (sorted, unique) and
  `topic` int32 (an interest label: synthetic topic, MovieLens genre, ...).
- `item_embeddings.npy`: float32 [num_items, schema.ITEM_EMB_DIM], row i is
  the frozen content embedding of items.parquet row i (the PinSage role).
- `meta.json`: source, seed, time span (`start_ms`, `end_ms`) and the
  time-based split point `train_end_ms`, plus free-form source details
  (importers add `split`: {"kind": "global" | "per_user", "train_fraction"}).
- `user_cuts.parquet` (optional, per-user splits only): `user_id` int64
  (sorted, unique) and `train_end_ms` int64, each user's own train/eval
  cut. Users absent from it use meta `train_end_ms`; see Dataset.train_cut_ms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.backend import schema


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names file and field."""


ACTION_COLUMNS: dict[str, pa.DataType] = {
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "action": pa.string(),
    "surface": pa.string(),
    "ts_ms": pa.int64(),
    "duration_ms": pa.int64(),
}
IMPRESSION_COLUMNS: dict[str, pa.DataType] = {
    "request_id": pa.int64(),
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "ts_ms": pa.int64(),
    "surface": pa.string(),
    **{f"label_{h}": pa.int8() for h in schema.HEADS},
}
ITEM_COLUMNS: dict[str, pa.DataType] = {"item_id": pa.int64(), "topic": pa.int32()}
USER_CUT_COLUMNS: dict[str, pa.DataType] = {"user_id": pa.int64(), "train_end_ms": pa.int64()}
REQUIRED_META = ("source", "start_ms", "end_ms", "train_end_ms")


@dataclass
class Dataset:
    """A loaded dataset: columns as numpy arrays, categorical columns as schema ids.

    `actions` holds `user_id`, `item_id`, `action` (int64 schema id),
    `surface` (int64 schema id), `ts_ms`, `duration_ms` (int64, -1 = null).
    `impressions` (possibly None) holds `request_id`, `user_id`, `item_id`,
    `ts_ms`, `surface` (id) and `labels` int8 [n, NUM_HEADS].
    `user_train_end_ms` (None unless the split is per user) holds `user_id`
    (sorted, unique) and `train_end_ms`, both int64.
    """

    actions: dict[str, np.ndarray]
    item_ids: np.ndarray
    item_topic: np.ndarray
    item_emb: np.ndarray
    meta: dict[str, Any]
    impressions: dict[str, np.ndarray] | None = None
    path: Path | None = field(default=None, compare=False)
    # Last so that positional construction (..., impressions, path) keeps working.
    user_train_end_ms: dict[str, np.ndarray] | None = None

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def train_end_ms(self) -> int:
        return int(self.meta["train_end_ms"])

    def train_cut_ms(self, user_ids: np.ndarray) -> np.ndarray:
        """int64 train/eval cut per entry of `user_ids`: the user's own cut
        under a per-user split, else (and for users it lacks) meta train_end_ms."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        cuts = np.full(user_ids.shape, self.train_end_ms, dtype=np.int64)
        if self.user_train_end_ms is None or self.user_train_end_ms["user_id"].size == 0:
            return cuts
        known_users, known_cuts = self.user_train_end_ms["user_id"], self.user_train_end_ms["train_end_ms"]
        pos = np.minimum(np.searchsorted(known_users, user_ids), known_users.size - 1)
        found = known_users[pos] == user_ids
        cuts[found] = known_cuts[pos[found]]
        return cuts


def _encode(names: np.ndarray, ids: dict[str, int], what: str, path: Path, allow_null: bool) -> np.ndarray:
    lookup = {**ids}
    out = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        if name is None and allow_null:
            out[i] = schema.PAD_ID
            continue
        try:
            out[i] = lookup[name]
        except KeyError:
            raise DatasetError(
                f"{path}: row {i}: unknown {what} {name!r}; expected one of {sorted(ids)}"
            ) from None
    return out


def _read_table(
    path: Path, columns: dict[str, pa.DataType], optional: tuple[str, ...] = (), nullable: tuple[str, ...] = ()
) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"{path}: missing (is this a pinrank dataset directory?)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    for name, dtype in columns.items():
        if name not in table.column_names:
            if name in optional:
                continue
            raise DatasetError(f"{path}: missing column {name!r}; has {table.column_names}")
        if not table.schema.field(name).type.equals(dtype):
            try:
                table = table.set_column(
                    table.column_names.index(name), name, table.column(name).cast(dtype)
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DatasetError(
                    f"{path}: column {name!r} has type {table.schema.field(name).type}, expected {dtype}"
                ) from exc
        if name not in optional and name not in nullable and table.column(name).null_count:
            raise DatasetError(f"{path}: column {name!r} has {table.column(name).null_count} nulls")
    return table


def load_dataset(path: str | Path) -> Dataset:
    """Load and validate a dataset directory; raise DatasetError on any problem."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    meta_path = root / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{meta_path}: missing") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path}: invalid JSON ({exc})") from exc
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise DatasetError(f"{meta_path}: missing keys {missing}")

    items = _read_table(root / "items.parquet", ITEM_COLUMNS)
    item_ids = items.column("item_id").to_numpy()
    if item_ids.size == 0:
        raise DatasetError(f"{root / 'items.parquet'}: empty catalogue")
    if not (np.diff(item_ids) > 0).all():
        raise DatasetError(f"{root / 'items.parquet'}: item_id must be sorted and unique")
    emb_path = root / "item_embeddings.npy"
    try:
        item_emb = np.load(emb_path)
    except FileNotFoundError:
        raise DatasetError(f"{emb_path}: missing") from None
    except ValueError as exc:
        raise DatasetError(f"{emb_path}: not a .npy array ({exc})") from exc
    if item_emb.shape != (item_ids.size, schema.ITEM_EMB_DIM) or item_emb.dtype != np.float32:
        raise DatasetError(
            f"{emb_path}: expected float32 {(item_ids.size, schema.ITEM_EMB_DIM)}, "
            f"got {item_emb.dtype} {item_emb.shape}"
        )
    if not np.isfinite(item_emb).all():
        raise DatasetError(f"{emb_path}: holds NaN or inf")

    # surface is nullable: save_dataset writes surface id 0 (unknown) as null.
    at = _read_table(root / "actions.parquet", ACTION_COLUMNS, optional=("duration_ms",), nullable=("surface",))
    ap = root / "actions.parquet"
    actions = {
        "user_id": at.column("user_id").to_numpy(),
        "item_id": at.column("item_id").to_numpy(),
        "action": _encode(at.column("action").to_numpy(zero_copy_only=False), dict(schema.ACTION_IDS),
                          "action", ap, False),
        "surface": _encode(at.column("surface").to_numpy(zero_copy_only=False), dict(schema.SURFACE_IDS),
                           "surface", ap, True),
        "ts_ms": at.column("ts_ms").to_numpy(),
        "duration_ms": (
            at.column("duration_ms").fill_null(-1).to_numpy()
            if "duration_ms" in at.column_names
            else np.full(at.num_rows, -1, dtype=np.int64)
        ),
    }
    order_ok = np.lexsort((actions["ts_ms"], actions["user_id"]))
    if not (order_ok == np.arange(at.num_rows)).all():
        raise DatasetError(f"{ap}: rows must be sorted by (user_id, ts_ms)")

    impressions = None
    ip = root / "impressions.parquet"
    if ip.exists():
        it = _read_table(ip, IMPRESSION_COLUMNS, nullable=("surface",))
        impressions = {
            name: it.column(name).to_numpy() for name in ("request_id", "user_id", "item_id", "ts_ms")
        }
        impressions["surface"] = _encode(
            it.column("surface").to_numpy(zero_copy_only=False), dict(schema.SURFACE_IDS), "surface", ip, True
        )
        impressions["labels"] = np.stack(
            [it.column(f"label_{h}").to_numpy() for h in schema.HEADS], axis=1
        ).astype(np.int8)
    return Dataset(actions, item_ids, items.column("topic").to_numpy(), item_emb, meta, impressions, root,
                   user_train_end_ms=_load_user_cuts(root / "user_cuts.parquet"))


def _load_user_cuts(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    table = _read_table(path, USER_CUT_COLUMNS)
    cuts = {name: table.column(name).to_numpy() for name in USER_CUT_COLUMNS}
    if not (np.diff(cuts["user_id"]) > 0).all():
        raise DatasetError(f"{path}: user_id must be sorted and unique")
    return cuts


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write a Dataset in the on-disk format (categorical ids back to names)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    action_names = np.asarray(("<pad>",) + schema.ACTIONS, dtype=object)
    surface_names = np.asarray((None,) + schema.SURFACES, dtype=object)
    a = ds.actions
    order = np.lexsort((a["item_id"], a["ts_ms"], a["user_id"]))
    dur = a["duration_ms"][order]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(a["user_id"][order], pa.int64()),
                "item_id": pa.array(a["item_id"][order], pa.int64()),
                "action": pa.array(action_names[a["action"][order]], pa.string()),
                "surface": pa.array(surface_names[a["surface"][order]], pa.string()),
                "ts_ms": pa.array(a["ts_ms"][order], pa.int64()),
                "duration_ms": pa.array(dur, pa.int64(), mask=dur < 0),
            }
        ),
        root / "actions.parquet",
    )
    if ds.impressions is not None:
        im = ds.impressions
        order = np.lexsort((im["item_id"], im["request_id"]))
        cols = {
            "request_id": pa.array(im["request_id"][order], pa.int64()),
            "user_id": pa.array(im["user_id"][order], pa.int64()),
            "item_id": pa.array(im["item_id"][order], pa.int64()),
            "ts_ms": pa.array(im["ts_ms"][order], pa.int64()),
            "surface": pa.array(surface_names[im["surface"][order]], pa.string()),
        }
        for j, h in enumerate(schema.HEADS):
            cols[f"label_{h}"] = pa.array(im["labels"][order, j], pa.int8())
        pq.write_table(pa.table(cols), root / "impressions.parquet")
    else:
        # A stale file from an earlier save would be loaded as this dataset's.
        (root / "impressions.parquet").unlink(missing_ok=True)
    if ds.user_train_end_ms is not None:
        cuts = ds.user_train_end_ms
        order = np.argsort(cuts["user_id"], kind="stable")
        pq.write_table(
            pa.table({name: pa.array(cuts[name][order], dtype) for name, dtype in USER_CUT_COLUMNS.items()}),
            root / "user_cuts.parquet",
        )
    else:
        (root / "user_cuts.parquet").unlink(missing_ok=True)  # stale, as for impressions
    pq.write_table(
        pa.table(
            {"item_id": pa.array(ds.item_ids, pa.int64()), "topic": pa.array(ds.item_topic, pa.int32())}
        ),
        root / "items.parquet",
    )
    np.save(root / "item_embeddings.npy", ds.item_emb.astype(np.float32))
    (root / "meta.json").write_text(json.dumps(ds.meta, indent=2, sort_keys=True))
    return root
