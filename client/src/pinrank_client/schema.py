"""The single source of truth for pinrank's vocabulary and serving contract.

Everything else derives from this module: the generated Triton configs, the
preprocessing/postprocessing models, the training data pipeline, the SDK's
request/response types and the load-test payloads. It lives in the client
distribution (numpy only) because the contract *is* the API: the server side
(`pinrank.backend.schema` re-exports it) depends on the client package, never the other
way round, so the SDK installs without torch.

Index conventions shared by every model: index 0 of every categorical
vocabulary (actions, surfaces, items) is padding / out-of-vocabulary, so real
values start at 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

SCHEMA_VERSION = 1

# --- vocabularies -----------------------------------------------------------

#: Action types a user can take on an item. Id = position + 1 (0 = padding).
ACTIONS: tuple[str, ...] = ("click", "closeup", "save", "hide", "purchase", "impression")
#: Actions that count as positive engagement (PinnerFormer's training labels).
POSITIVE_ACTIONS: tuple[str, ...] = ("click", "closeup", "save", "purchase")
#: Surfaces an action happened on. Id = position + 1 (0 = padding / unknown).
SURFACES: tuple[str, ...] = ("home", "search", "related", "profile")

PAD_ID = 0
ACTION_IDS: Mapping[str, int] = {name: i + 1 for i, name in enumerate(ACTIONS)}
SURFACE_IDS: Mapping[str, int] = {name: i + 1 for i, name in enumerate(SURFACES)}
NUM_ACTION_IDS = len(ACTIONS) + 1  # embedding-table sizes include padding
NUM_SURFACE_IDS = len(SURFACES) + 1

# --- ranker heads and utility ------------------------------------------------

#: Ranker heads, in output column order of `head_probs`.
HEADS: tuple[str, ...] = ("save", "click", "closeup", "hide")
#: Utility = sum_h UTILITY_WEIGHTS[h] * P(h). Hides are penalised.
UTILITY_WEIGHTS: Mapping[str, float] = {"save": 1.0, "click": 0.4, "closeup": 0.6, "hide": -2.0}
NUM_HEADS = len(HEADS)


def utility_weight_vector() -> np.ndarray:
    """Utility weights as a float32 vector aligned with HEADS."""
    return np.asarray([UTILITY_WEIGHTS[h] for h in HEADS], dtype=np.float32)


# --- sequence lengths and dimensions ----------------------------------------

#: Realtime (ranker) sequence length L: the most recent actions kept per request.
REALTIME_SEQ_LEN = 100
#: Long-term (PinnerFormer) sequence length M.
LONG_SEQ_LEN = 256
#: PinnerFormer's future window for the dense all-action loss, in days.
FUTURE_WINDOW_DAYS = 28
#: Frozen item content embedding dim (the PinSage stand-in).
ITEM_EMB_DIM = 32
#: PinnerFormer user embedding dim D (what the daily snapshot stores).
USER_EMB_DIM = 64
#: Context features computed from the request by preprocessing.
CONTEXT_FEATURES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "log_history_len",
    "user_known",
)
CONTEXT_DIM = len(CONTEXT_FEATURES)

# --- serving limits ------------------------------------------------------------

#: Most candidates one request may carry; more is rejected (never truncated).
MAX_CANDIDATES = 1000
#: Most actions one request may carry; the newest REALTIME_SEQ_LEN are used.
MAX_REQUEST_ACTIONS = 10 * REALTIME_SEQ_LEN
#: Timestamps must be plausible unix milliseconds (2001-09-09 .. 2286-11-20).
MIN_TS_MS = 1_000_000_000_000
MAX_TS_MS = 9_999_999_999_999
#: Actions may be at most this far after request_ts_ms (client clock skew).
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
#: Default top_k when the request omits it.
DEFAULT_TOP_K = 100

# --- the tensor contract -------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a Triton model's interface (shape excludes batching)."""

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # -1 = variable
    optional: bool = False
    doc: str = ""

    @property
    def triton_dtype(self) -> str:
        """Triton wire dtype (`INT64`, `FP32`, ...)."""
        return NUMPY_TO_TRITON[self.dtype]


NUMPY_TO_TRITON: Mapping[str, str] = {
    "int64": "INT64",
    "int32": "INT32",
    "float32": "FP32",
    "float16": "FP16",
    "bool": "BOOL",
}

#: Name of the ensemble that services call.
ENSEMBLE_MODEL = "pinrank"
PREPROCESS_MODEL = "preprocess"
RANKER_MODEL = "ranker"
POSTPROCESS_MODEL = "postprocess"

#: Inputs of the `pinrank` ensemble (the public API).
REQUEST_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("user_id", "int64", (1,), doc="user id"),
    TensorSpec("candidate_ids", "int64", (-1,), doc=f"1..{MAX_CANDIDATES} candidate item ids"),
    TensorSpec("action_item_ids", "int64", (-1,), doc="item id of each recent action"),
    TensorSpec("action_types", "int64", (-1,), doc="action type id (schema.ACTION_IDS)"),
    TensorSpec("action_surfaces", "int64", (-1,), doc="surface id (schema.SURFACE_IDS), 0 = unknown"),
    TensorSpec("action_ts_ms", "int64", (-1,), doc="unix ms of each action"),
    TensorSpec("request_ts_ms", "int64", (1,), doc="unix ms of the request"),
    TensorSpec("top_k", "int64", (1,), optional=True, doc=f"items to return (default {DEFAULT_TOP_K})"),
)

#: Outputs of the `pinrank` ensemble.
RESPONSE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("item_ids", "int64", (-1,), doc="ranked item ids, best first"),
    TensorSpec("scores", "float32", (-1,), doc="utility of each ranked item"),
    TensorSpec("head_probs", "float32", (-1, NUM_HEADS), doc="per-head probabilities, columns = HEADS"),
)

#: What preprocessing hands the ranker model (request-level: one user x N candidates).
RANKER_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("cand_idx", "int64", (-1,), doc="candidate item index, 0 = unknown item"),
    TensorSpec("user_emb", "float32", (USER_EMB_DIM,), doc="PinnerFormer snapshot embedding"),
    TensorSpec("seq_item_idx", "int64", (REALTIME_SEQ_LEN,), doc="newest first, 0-padded"),
    TensorSpec("seq_action", "int64", (REALTIME_SEQ_LEN,), doc="action id, 0 = padding"),
    TensorSpec("seq_surface", "int64", (REALTIME_SEQ_LEN,), doc="surface id, 0 = unknown/padding"),
    TensorSpec("seq_age_h", "float32", (REALTIME_SEQ_LEN,), doc="hours before the request, >= 0"),
    TensorSpec("context", "float32", (CONTEXT_DIM,), doc="schema.CONTEXT_FEATURES"),
)
RANKER_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("probs", "float32", (-1, NUM_HEADS), doc="per-candidate head probabilities"),
)

#: Extra preprocess outputs that bypass the ranker and reach postprocessing.
PASSTHROUGH: tuple[TensorSpec, ...] = (
    TensorSpec("pp_candidate_ids", "int64", (-1,)),
    TensorSpec("pp_top_k", "int64", (1,)),
)


def spec(name: str) -> TensorSpec:
    """Look a tensor up by name across every interface in this module."""
    for group in (REQUEST_INPUTS, RESPONSE_OUTPUTS, RANKER_INPUTS, RANKER_OUTPUTS, PASSTHROUGH):
        for s in group:
            if s.name == name:
                return s
    raise KeyError(name)
