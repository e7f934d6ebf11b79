"""Reliability checks that run against a live server: the bad-input matrix
(bad_inputs) and, with the lead's runner, model swaps, restarts and soak."""
