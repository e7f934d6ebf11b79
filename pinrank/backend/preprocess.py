"""Request -> ranker tensors (numpy only): the CPU half of the ensemble.

Runs once per request (one user x N candidates): validation, id -> index
lookups, the user's snapshot embedding, and realtime sequence featurization.
The Triton `preprocess` model and the in-process pipeline both call this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pinrank.backend import schema
from pinrank.backend.featurize import context_features, featurize_history
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank_client.validation import validate_request

ITEM_IDS_FILE = "item_ids.npy"
SNAPSHOT_DIR = "user_snapshot"


@dataclass
class PreprocessResult:
    ranker_inputs: dict[str, np.ndarray]  # schema.RANKER_INPUTS
    passthrough: dict[str, np.ndarray]  # schema.PASSTHROUGH
    unknown_user: bool
    unknown_items: int
    duplicate_candidates: int = 0  # copies dropped (each item is ranked once)


class Preprocessor:
    """Holds the version's lookup artifacts (item vocabulary, user snapshot)."""

    def __init__(self, vocab: ItemVocab, snapshot: UserSnapshot) -> None:
        self.vocab = vocab
        self.snapshot = snapshot

    @classmethod
    def from_dir(cls, artifacts: str | Path) -> "Preprocessor":
        root = Path(artifacts)
        return cls(ItemVocab.load(root / ITEM_IDS_FILE), UserSnapshot.load(root / SNAPSHOT_DIR))

    def __call__(self, raw: Mapping[str, object]) -> PreprocessResult:
        """Validate and featurize; raises InvalidRequestError on bad input."""
        req = validate_request(raw)
        candidates = unique_in_order(req["candidate_ids"])
        cand_idx = self.vocab.lookup(candidates)
        user_emb, known = self.snapshot.lookup(req["user_id"])
        request_ts = int(req["request_ts_ms"][0])
        history_len = int(req["action_item_ids"].shape[0])
        seq = featurize_history(
            self.vocab.lookup(req["action_item_ids"]),
            req["action_types"],
            req["action_surfaces"],
            req["action_ts_ms"],
            request_ts,
        )
        top_k = int(req["top_k"][0]) if "top_k" in req else schema.DEFAULT_TOP_K
        top_k = min(top_k, int(cand_idx.shape[0]))
        return PreprocessResult(
            ranker_inputs={
                "cand_idx": cand_idx,
                "user_emb": user_emb[0],
                **seq,
                "context": context_features(request_ts, history_len, bool(known[0])),
            },
            passthrough={
                "pp_candidate_ids": candidates,
                "pp_top_k": np.asarray([top_k], dtype=np.int64),
            },
            unknown_user=not bool(known[0]),
            unknown_items=int((cand_idx == 0).sum()),
            duplicate_candidates=int(req["candidate_ids"].shape[0] - candidates.shape[0]),
        )


def unique_in_order(ids: np.ndarray) -> np.ndarray:
    """`ids` without repeats, first occurrences in their original order.

    Candidate generators that merge several sources repeat items; ranking a
    copy twice would spend compute and could show the same item twice, so
    duplicates are dropped here rather than failing the whole request.
    """
    _, first = np.unique(ids, return_index=True)
    if first.shape[0] == ids.shape[0]:
        return ids
    return ids[np.sort(first)]
