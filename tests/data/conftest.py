"""Fixtures for the data-source tests. (Test modules use these fixtures and
never `import conftest`: another test folder's conftest may shadow it.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pinrank.data.synthetic import QUICK, SyntheticConfig, simulate

#: ../shared/data relative to the repo root (read-only real datasets).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

#: A small world for format and determinism tests (well under a second).
SMALL = SyntheticConfig(users=150, items=400, topics=8, days=10, eval_days=3, seed=3)


@pytest.fixture(scope="session")
def quick_world():
    """The quick default world, simulated once per test session."""
    return simulate(QUICK)


@pytest.fixture(scope="session")
def small_cfg() -> SyntheticConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_world():
    return simulate(SMALL)


@pytest.fixture
def shared_data():
    """shared_data(sub) -> the folder ../shared/data/sub, or skip when absent."""

    def get(sub: str) -> Path:
        path = SHARED_DATA / sub
        if not path.exists():
            pytest.skip(f"{path} not available")
        return path

    return get
