"""Config-file cases: broken Triton configs and manifests, tampered
artifacts, invalid snapshots, vocabularies and dataset metadata."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from pinrank.backend import schema
from pinrank.backend.snapshot import SnapshotError, UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.serving.tritonserver import ServerError, validate_repository
from reliability.bad_inputs.broken_files import broken_config_repo, tampered_repo
from reliability.bad_inputs.case import Case, Context, Outcome
from reliability.bad_inputs.helpers import raises


def _validate_repo(repo: Callable[[Context], Path]) -> Callable[[Context], Outcome]:
    return raises(lambda ctx: validate_repository(repo(ctx)), ServerError)


def _bad_manifest_repo(ctx: Context) -> Path:
    repo = ctx.fixtures.repository_copy(ctx.scratch("bad_manifest") / "repo")
    version = sorted((repo / schema.RANKER_MODEL).glob("[0-9]*"), key=lambda v: int(v.name))[-1]
    (version / "manifest.json").write_text('{"artifact_sha256": {"ranker.onnx": ')
    return repo


def _snapshot_with(ctx: Context, name: str, edit: Callable[[Path], None]) -> Path:
    snap = ctx.scratch(name) / "snapshot"
    shutil.copytree(ctx.fixtures.snapshot, snap)
    edit(snap)
    return snap


def _nan_embeddings(snap: Path) -> None:
    emb = np.load(snap / "user_emb.npy")
    emb[0, 0] = np.nan
    np.save(snap / "user_emb.npy", emb)


def _unsorted_users(snap: Path) -> None:
    ids = np.load(snap / "user_ids.npy")
    np.save(snap / "user_ids.npy", ids[::-1].copy())


def _pickled_vocab(ctx: Context) -> Path:
    path = ctx.scratch("pickled_vocab") / "item_ids.npy"
    np.save(path, np.array([7, "x", None], dtype=object), allow_pickle=True)
    return path


def _bad_meta_dataset(ctx: Context) -> Path:
    ds = ctx.scratch("bad_meta") / "data"
    shutil.copytree(ctx.fixtures.dataset, ds)
    (ds / "meta.json").write_text('{"source": "synthetic", ')
    return ds


def config_cases() -> list[Case]:
    return [
        Case("config_malformed_pbtxt", "config", "config.pbtxt with an unclosed list",
             _validate_repo(lambda ctx: broken_config_repo(ctx, "cfg_pbtxt")),
             ("config.pbtxt", "not a valid Triton ModelConfig")),
        Case("config_binary_pbtxt", "config", "config.pbtxt holding binary bytes",
             _validate_repo(lambda ctx: _binary_config_repo(ctx)), ("config.pbtxt", "not a valid Triton ModelConfig")),
        Case("config_tampered_artifact", "config", "ranker.onnx changed after export (manifest sha256)",
             _validate_repo(lambda ctx: tampered_repo(ctx, "cfg_tampered")),
             ("ranker.onnx", "sha256", "does not match manifest.json")),
        Case("config_corrupt_manifest", "config", "manifest.json cut short",
             _validate_repo(_bad_manifest_repo), ("manifest.json", "not valid JSON")),
        Case("config_nan_snapshot", "config", "a NaN in the user-embedding snapshot",
             raises(lambda ctx: UserSnapshot.load(_snapshot_with(ctx, "cfg_nan", _nan_embeddings)), SnapshotError),
             ("snapshot", "NaN")),
        Case("config_unsorted_snapshot", "config", "snapshot user ids out of order",
             raises(lambda ctx: UserSnapshot.load(_snapshot_with(ctx, "cfg_unsorted", _unsorted_users)),
                     SnapshotError), ("snapshot", "sorted and unique")),
        Case("config_pickled_vocabulary", "config", "item vocabulary saved as a pickled object array",
             raises(lambda ctx: ItemVocab.load(_pickled_vocab(ctx)), ValueError),
             ("item_ids.npy", "allow_pickle")),
        Case("config_dataset_meta_truncated", "config", "dataset meta.json cut short",
             raises(lambda ctx: load_dataset(_bad_meta_dataset(ctx)), DatasetError), ("meta.json", "invalid JSON")),
    ]


def _binary_config_repo(ctx: Context) -> Path:
    repo = ctx.scratch("cfg_binary") / "repo"
    (repo / "pinrank").mkdir(parents=True)
    (repo / "pinrank" / "config.pbtxt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    return repo
