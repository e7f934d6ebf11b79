"""pinrank core library. Importing it must stay cheap (no torch): the Triton
Python-backend models import pinrank.serving from a numpy-only stub process."""
