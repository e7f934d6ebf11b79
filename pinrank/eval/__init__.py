"""Offline evaluation on real logs: the field's two protocols, baselines and recipes."""
