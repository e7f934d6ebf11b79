"""Reliability harness (checkout only, not in the wheel): the bad-input
matrix, hostile requests against a supervised server, model swaps, restarts
and soak. `make reliability` runs it; tests/reliability tests it."""
