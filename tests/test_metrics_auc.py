import math

from pinrank.metrics import auc


def test_auc_hand_examples():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8]) == 0.5  # 2 of 4 pairs ordered
    assert math.isnan(auc([1, 1], [0.1, 0.2]))


def test_auc_argument_order_is_labels_then_scores():
    # The one auc: labels first. Scores in [0, 1] passed as labels would not be boolean-like.
    assert auc([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
