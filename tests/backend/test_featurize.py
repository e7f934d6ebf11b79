import numpy as np

from pinrank.backend import schema
from pinrank.backend.featurize import context_features, featurize_history

REQ = 1_767_225_600_000


def test_newest_first_padded_and_truncated():
    n = schema.REALTIME_SEQ_LEN + 30
    ts = REQ - (np.arange(n)[::-1] + 1) * 60_000  # oldest first on input
    out = featurize_history(np.arange(n) + 1, np.ones(n, np.int64), np.zeros(n, np.int64), ts, REQ)
    assert out["seq_item_idx"][0] == n  # the newest action comes first
    assert out["seq_item_idx"][-1] == n - schema.REALTIME_SEQ_LEN + 1  # oldest kept
    assert np.all(np.diff(out["seq_age_h"]) >= 0)
    assert out["seq_age_h"][0] == np.float32(1 / 60)


def test_empty_history_is_all_padding():
    out = featurize_history(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), REQ)
    assert all(v.shape == (schema.REALTIME_SEQ_LEN,) for v in out.values())
    assert not out["seq_action"].any() and not out["seq_age_h"].any()


def test_future_actions_clip_to_zero_age():
    out = featurize_history(np.array([3]), np.array([1]), np.array([1]), np.array([REQ + 1000]), REQ)
    assert out["seq_age_h"][0] == 0.0


def test_ties_keep_later_position_first():
    out = featurize_history(np.array([1, 2]), np.array([1, 2]), np.array([0, 0]), np.array([REQ - 5, REQ - 5]), REQ)
    assert out["seq_item_idx"][:2].tolist() == [2, 1]


def test_context_features_shape_and_range():
    c = context_features(REQ, 500, True)
    assert c.shape == (schema.CONTEXT_DIM,) and c.dtype == np.float32
    assert c[schema.CONTEXT_FEATURES.index("user_known")] == 1.0
    assert c[schema.CONTEXT_FEATURES.index("log_history_len")] == 1.0  # capped at L
    assert np.all(np.abs(c[:4]) <= 1.0)
