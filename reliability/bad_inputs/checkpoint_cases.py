"""Checkpoint cases: truncated, empty, pickled-code, wrong-kind and
mismatched checkpoints, and one that does not exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from pinrank.models.checkpoints import load_checkpoint
from pinrank.models.ranker import load_ranker
from reliability.bad_inputs.broken_files import payload_check, pickle_payload, truncated_copy, wrong_kind_checkpoint
from reliability.bad_inputs.case import Case, Context, Outcome
from reliability.bad_inputs.helpers import raises


def _load(path: Callable[[Context], Path], kind: str = "ranker") -> Callable[[Context], Outcome]:
    return raises(lambda ctx: load_checkpoint(path(ctx), kind), ValueError, FileNotFoundError)


def _load_ranker(path: Callable[[Context], Path]) -> Callable[[Context], Outcome]:
    return raises(lambda ctx: load_ranker(path(ctx)), ValueError, FileNotFoundError)


def _ckpt_variant(ctx: Context, name: str, edit: Callable[[dict[str, Any]], Any]) -> Path:
    ckpt = torch.load(ctx.fixtures.ranker, map_location="cpu", weights_only=True)
    edited = edit(ckpt)
    path = ctx.scratch(name) / "ranker.pt"
    torch.save(ckpt if edited is None else edited, path)
    return path


def checkpoint_cases() -> list[Case]:
    def more_items(ckpt: dict[str, Any]) -> None:
        ckpt["config"]["num_items"] += 7

    def no_config(ckpt: dict[str, Any]) -> None:
        del ckpt["config"]["ranker"]

    return [
        Case("checkpoint_truncated", "checkpoint", "a checkpoint cut in half",
             _load(lambda ctx: truncated_copy(ctx.fixtures.ranker, ctx.scratch("ck_trunc") / "r.pt")),
             ("r.pt", "not a readable checkpoint")),
        Case("checkpoint_empty_file", "checkpoint", "a zero-byte checkpoint",
             _load(lambda ctx: _empty(ctx.scratch("ck_empty") / "r.pt")), ("r.pt", "not a readable checkpoint")),
        Case("checkpoint_pickle_payload", "checkpoint", "a checkpoint that would run code when unpickled",
             payload_check(lambda ctx, marker: _load(lambda c: pickle_payload(
                 c.scratch("ck_evil") / "r.pt", marker))(ctx)),
             ("refused", "not a weights-only checkpoint", "open"), forbid=("payload executed",)),
        Case("checkpoint_wrong_kind", "checkpoint", "a PinnerFormer checkpoint where a ranker is expected",
             _load(wrong_kind_checkpoint), ("expected a 'ranker' checkpoint", "'pinnerformer'")),
        Case("checkpoint_not_a_dict", "checkpoint", "a checkpoint holding a bare list of tensors",
             _load(lambda ctx: _ckpt_variant(ctx, "ck_list", lambda c: list(c["state_dict"].values()))),
             ("expected a 'ranker' checkpoint", "'list'")),
        Case("checkpoint_weights_mismatch", "checkpoint", "num_items in the config disagrees with the weights",
             _load_ranker(lambda ctx: _ckpt_variant(ctx, "ck_mismatch", more_items)),
             ("weights do not fit its config", "size mismatch")),
        Case("checkpoint_missing_config", "checkpoint", "a ranker checkpoint without its architecture",
             _load_ranker(lambda ctx: _ckpt_variant(ctx, "ck_noconfig", no_config)), ("missing", "'ranker'")),
        Case("checkpoint_missing_file", "checkpoint", "a checkpoint path that does not exist",
             _load(lambda ctx: ctx.workdir / "nope.pt"), ("nope.pt", "checkpoint not found")),
    ]


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path
