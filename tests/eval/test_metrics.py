"""Protocol metrics: ranks with seen items removed, ties against the target, sampled variant."""

from __future__ import annotations

import numpy as np
import pytest

from pinrank.eval.metrics import leave_one_out_metrics, top_k_lists, window_metrics
from pinrank.eval.splits import ProtocolSplit


class _Timelines:
    """The two fields metrics read: one user whose items 1..3 are history, 4 the target."""

    def __init__(self, items: list[int]) -> None:
        self.item_idx = np.asarray(items, dtype=np.int64)
        self.offsets = np.asarray([0, len(items)], dtype=np.int64)


def _split(history: list[int], target: int) -> ProtocolSplit:
    t = _Timelines(history + [target])
    return ProtocolSplit(t, np.asarray([0]), np.asarray([len(history)]), [np.asarray([target])])  # type: ignore[arg-type]


def _const(scores: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda split, idx: np.tile(scores, (idx.size, 1))


def test_seen_items_are_removed_before_ranking():
    # Items 1-3 (seen) outscore the target 4; removed, the target is first.
    scores = np.asarray([0, 9, 8, 7, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32)
    m = leave_one_out_metrics(_split([1, 2, 3], 4), _const(scores), sampled=5)
    assert m["hr_at_10"] == 1.0 and m["ndcg_at_10"] == pytest.approx(1.0)
    assert m["sampled_hr_at_10"] == 1.0


def test_rank_counts_ties_against_the_target_and_ndcg_discounts():
    scores = np.zeros(30, dtype=np.float32)
    m = leave_one_out_metrics(_split([1], 5), _const(scores), sampled=10)
    assert m["hr_at_10"] == 0.0 and m["ndcg_at_10"] == 0.0  # 27 ties -> rank 27
    scores[[6, 7]] = 2.0
    scores[5] = 1.0
    m = leave_one_out_metrics(_split([1], 5), _const(scores), sampled=0)
    assert m["hr_at_10"] == 1.0 and m["ndcg_at_10"] == pytest.approx(1 / np.log2(4))


def test_top_k_lists_skip_seen_and_oov():
    scores = np.arange(10, dtype=np.float32)[::-1].copy()  # item 0 (OOV) scores highest
    top = top_k_lists(_split([1, 2], 9), _const(scores), 3)
    assert top.tolist() == [[3, 4, 5]]


def test_window_metrics_recall_coverage_entropy():
    split = _split([1], 2)
    split.targets = [np.asarray([2, 3])]
    scores = np.asarray([0, 5, 4, 3] + [0] * 60, dtype=np.float32)
    m = window_metrics(split, _const(scores), item_topic=np.arange(63) % 3)
    assert m["recall_at_10"] == 1.0
    assert 0 < m["p90_coverage_at_10"] < 1 and m["entropy_at_50"] > 0
