"""pinrank: PinnerFormer + realtime-sequence ranker, exported to and served on Triton.

Layers, lowest first (docs/architecture.md; tests/test_layers.py checks them):
backend (numpy; vendored into every Triton model version) -> repository
(the on-disk layout both export and serving use) -> data -> models -> embed
-> train -> eval -> export; serving (host side) sits beside export and
imports neither torch nor it; cli/demo wire them together. Importing this
package must stay cheap (no torch)."""
