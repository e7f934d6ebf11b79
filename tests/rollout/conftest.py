"""tests/rollout: requests shared by the rollout's tests (rollout_fakes.py,
beside them, is importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import pytest

from pinrank.rollout.replay import replayed_requests
from testkit.toy_data import make_toy_dataset


@pytest.fixture(scope="session")
def toy_requests():
    return replayed_requests(make_toy_dataset(num_users=30, num_items=150, actions_per_user=15), 12,
                             candidates=50, top_k=10)
