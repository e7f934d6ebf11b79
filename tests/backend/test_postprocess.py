import numpy as np
import pytest

from pinrank.backend import schema
from pinrank.backend.postprocess import top_k, utility


def test_utility_is_weighted_head_sum():
    probs = np.eye(schema.NUM_HEADS, dtype=np.float32)
    assert np.allclose(utility(probs), [schema.UTILITY_WEIGHTS[h] for h in schema.HEADS])


def test_top_k_orders_by_utility_with_stable_ties():
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(50, schema.NUM_HEADS)).astype(np.float32)
    probs[7] = probs[3]  # a tie: request order decides
    ids = np.arange(100, 150)
    out = top_k(ids, probs, 50)
    assert np.all(np.diff(out["scores"]) <= 0)
    pos = {int(i): r for r, i in enumerate(out["item_ids"])}
    assert pos[103] < pos[107]
    small = top_k(ids, probs, 5)
    assert small["item_ids"].tolist() == out["item_ids"][:5].tolist()
    assert small["head_probs"].shape == (5, schema.NUM_HEADS)


def test_top_k_larger_than_n_returns_all():
    out = top_k(np.array([1, 2]), np.zeros((2, schema.NUM_HEADS), np.float32), 10)
    assert out["item_ids"].tolist() == [1, 2]


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="probs must be"):
        top_k(np.array([1, 2, 3]), np.zeros((2, schema.NUM_HEADS), np.float32), 1)
