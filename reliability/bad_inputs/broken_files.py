"""Broken files more than one surface hands over (the pinrank CLI and the
importer, config and checkpoint loaders): truncated copies, pickle payloads,
wrong-kind checkpoints, MovieLens folders and broken repositories."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from pinrank.backend import schema
from pinrank.models.checkpoints import save_checkpoint
from reliability.bad_inputs.case import Context, Outcome


def truncated_copy(src: Path, dest: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: max(1, int(len(data) * keep))])
    return dest


def pickle_payload(path: Path, marker: Path) -> Path:
    """A checkpoint whose unpickling would create `marker` (harmless, detectable)."""
    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))

    torch.save({"kind": "ranker", "config": {}, "state_dict": {}, "payload": Payload()}, path)
    return path


def payload_check(perform: Callable[[Context, Path], Outcome]) -> Callable[[Context], Outcome]:
    def run(ctx: Context) -> Outcome:
        marker = ctx.scratch("payload_marker") / "PAYLOAD_RAN"
        out = perform(ctx, marker)
        if marker.exists():
            return Outcome(error=f"{out.error or ''} [payload executed]")
        return out

    return run


def movielens_dir(ctx: Context, name: str, ratings: bytes | str) -> Path:
    root = ctx.scratch(name) / "ml"
    root.mkdir()
    data = ratings.encode() if isinstance(ratings, str) else ratings
    (root / "ratings.csv").write_bytes(data)
    (root / "movies.csv").write_text("movieId,title,genres\n10,A (1995),Comedy\n20,B (1996),Drama\n")
    return root


ML_OK = "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.0,964982800\n2,10,5.0,964983000\n"


def broken_config_repo(ctx: Context, name: str) -> Path:
    repo = ctx.scratch(name) / "repo"
    (repo / "pinrank" / "1").mkdir(parents=True)
    unclosed = 'name: "pinrank"\nplatform: "ensemble"\ninput { name: "user_id" dims: [1\n'
    (repo / "pinrank" / "config.pbtxt").write_text(unclosed)
    return repo


def tampered_repo(ctx: Context, name: str) -> Path:
    repo = ctx.fixtures.repository_copy(ctx.scratch(name) / "repo")
    versions = sorted((repo / schema.RANKER_MODEL).glob("[0-9]*"), key=lambda v: int(v.name))
    onnx = versions[-1] / "ranker.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside the weights
    onnx.write_bytes(bytes(data))
    return repo


def wrong_kind_checkpoint(ctx: Context) -> Path:
    return save_checkpoint(ctx.scratch("wrong_kind") / "pf.pt", kind="pinnerformer", config={},
                           model=torch.nn.Linear(2, 2))
