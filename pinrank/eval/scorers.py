"""Scorers for the protocols: a trained tower, and the baselines every table carries.

A scorer maps (split, evaluated indices) to a score per catalogue item
(pinrank.eval.metrics.Scorer); metrics remove seen items and rank.
"""

from __future__ import annotations

import numpy as np
import torch

from pinrank.backend import schema
from pinrank.data.dataset import Dataset
from pinrank.embed.batch import embeddings_at
from pinrank.eval.metrics import Scorer
from pinrank.eval.splits import ProtocolSplit
from pinrank.models.pinnerformer import UserTimelines
from pinrank.train.pinnerformer_eval import content_item_matrix, history_mean_embeddings


def tower_scorer(model: torch.nn.Module, batch_size: int = 64) -> Scorer:
    """Dot product of the user embedding (input = the row's history) with every item's embedding."""
    model.eval()
    with torch.inference_mode():
        items = model.all_item_embeddings().detach().numpy().copy()

    def score(split: ProtocolSplit, idx: np.ndarray) -> np.ndarray:
        users = embeddings_at(model, split.timelines, split.rows[idx], split.ends[idx], batch_size)  # type: ignore[arg-type]
        return users @ items.T

    return score


def popularity_scorer(train: Dataset, label_actions: tuple[str, ...] = schema.POSITIVE_ACTIONS) -> Scorer:
    """The same list for everyone: each item's count of `label_actions` in the training set."""
    t = UserTimelines(train, label_actions)
    counts = np.bincount(t.item_idx, minlength=train.num_items + 1).astype(np.float32)

    def score(split: ProtocolSplit, idx: np.ndarray) -> np.ndarray:
        return np.tile(counts, (idx.size, 1))

    return score


def history_mean_scorer(train: Dataset) -> Scorer:
    """Cosine of each item's content embedding with the mean content embedding of the input."""
    content = content_item_matrix(train)

    def score(split: ProtocolSplit, idx: np.ndarray) -> np.ndarray:
        users = history_mean_embeddings(split.timelines, split.rows[idx], content, split.ends[idx])
        return users @ content.T

    return score


__all__ = ["history_mean_scorer", "popularity_scorer", "tower_scorer"]
