"""Triton Python-backend model.py sources (package data). Each is copied into
a model version as model.py, beside `_vendor/` (pinrank.backend); they run in
Triton's stub process, so they import numpy, triton_python_backend_utils and
the vendored backend only. Never imported from here."""
