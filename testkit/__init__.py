"""Builders shared by tests/, reliability/ and loadtest/ (checkout only, not
in the wheel): a toy dataset, and the inputs of `pinrank export` made in
seconds without training (untrained ranker, random snapshot)."""
