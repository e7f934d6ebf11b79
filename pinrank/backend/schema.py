"""Re-export of the single schema (it lives in the torch-free client package)."""

from pinrank_client.schema import *  # noqa: F401,F403
from pinrank_client.schema import (  # noqa: F401  (names star-import skips)
    ACTION_IDS,
    SURFACE_IDS,
    utility_weight_vector,
)
