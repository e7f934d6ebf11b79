"""What each step model accepts (numpy only): exact input names, shapes,
dtypes, index ranges and finite values, checked before any work.

The step models (`ranker`, `postprocess`, and `preprocess` for names) are
callable directly, not only through the ensemble, so each defends its own
contract: a 200,000-candidate ranker call or a negative embedding index is
refused with a message naming the input, instead of a runtime allocating
gigabytes, or scoring it as the last item (ONNX Runtime and TorchScript both
wrap index -1 to the table's last row without a word).
Vendored into each version directory next to the models that call it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from pinrank.backend import schema


class StepInputError(ValueError):
    """A step model's input breaks its contract; the message names the input."""


def check_names(names: Sequence[str], required: Collection[str], optional: Collection[str] = ()) -> None:
    """`names` must be exactly the required ones plus any optional ones, each once."""
    expected = set(required) | set(optional)
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        raise StepInputError(f"input(s) {repeated} sent more than once")
    unknown = sorted(set(names) - expected)
    if unknown:
        # ascii(): a name with control characters is shown, not printed raw.
        shown = ", ".join(ascii(n) for n in unknown)
        raise StepInputError(f"unknown input(s) {shown}; expected {sorted(expected)}")
    missing = sorted(set(required) - set(names))
    if missing:
        raise StepInputError(f"missing input(s) {missing}")


def request_arrays(request: Any, required: Collection[str], optional: Collection[str] = ()) -> dict[str, np.ndarray]:
    """A Triton request's inputs by exact name, after check_names (duck-typed on
    pb_utils.InferenceRequest: this module is imported outside Triton too)."""
    tensors = request.inputs()
    check_names([t.name() for t in tensors], required, optional)
    return {t.name(): t.as_numpy() for t in tensors}


def _check_array(name: str, arr: np.ndarray, spec: schema.TensorSpec, n: int | None = None) -> None:
    if arr.dtype != np.dtype(spec.dtype):
        raise StepInputError(f"{name} must be {spec.dtype}, got {arr.dtype}")
    want = tuple(n if d == -1 else d for d in spec.shape)
    if arr.shape != want:
        raise StepInputError(f"{name} must have shape {list(want)}, got {list(arr.shape)}")


def _check_index(name: str, arr: np.ndarray, high: int) -> None:
    """Every value in 0..high (min/max: two passes, no temporaries)."""
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > high):
        bad = arr[(arr < 0) | (arr > high)]
        raise StepInputError(f"{name} holds {int(bad[0])}; valid indices are 0..{high}")


def _check_finite(name: str, arr: np.ndarray, low: float, high: float) -> None:
    """Every value finite and in [low, high]."""
    if not np.isfinite(arr).all():
        raise StepInputError(f"{name} holds non-finite values (NaN or inf)")
    if arr.size and (float(arr.min()) < low or float(arr.max()) > high):
        raise StepInputError(f"{name} must be in [{low:g}, {high:g}], got [{float(arr.min()):g}, {float(arr.max()):g}]")


def _candidates(name: str, arr: np.ndarray) -> int:
    """The candidate count of a per-candidate input: 1..MAX_CANDIDATES, the
    ensemble's contract, so a direct call cannot ask for more work than it."""
    if arr.ndim < 1:
        raise StepInputError(f"{name} must have a candidate axis, got shape {list(arr.shape)}")
    n = int(arr.shape[0])
    if not 1 <= n <= schema.MAX_CANDIDATES:
        raise StepInputError(f"{name} has {n} candidates; expected 1..MAX_CANDIDATES={schema.MAX_CANDIDATES}")
    return n


def _index_bounds(num_items: int) -> dict[str, int]:
    """Inclusive upper bound of each ranker index input."""
    return {
        "cand_idx": num_items,  # 0 = unknown item, tables hold num_items + 1 rows
        "seq_item_idx": num_items,
        "seq_action": schema.NUM_ACTION_IDS - 1,
        "seq_surface": schema.NUM_SURFACE_IDS - 1,
    }


#: Largest |user_emb| component accepted. Snapshot embeddings are unit-norm
#: (components within [-1, 1]); this leaves room for other producers while
#: staying far below where the ranker's output turns NaN (1e15 on the test
#: export, where 1e12 was still finite).
MAX_ABS_USER_EMB = 1e4
#: Oldest age preprocessing can produce (both ends inside the timestamp
#: range), in whole hours: exact in float32, so the float32 edge passes.
MAX_AGE_H = float(math.ceil((schema.MAX_TS_MS - schema.MIN_TS_MS) / 3_600_000))

#: Allowed range of each ranker float input: ages are hours before the
#: request (never negative); every context feature is a sin/cos, a [0, 1]
#: fraction or a flag (featurize.context_features).
_FLOAT_BOUNDS = {
    "user_emb": (-MAX_ABS_USER_EMB, MAX_ABS_USER_EMB),
    "seq_age_h": (0.0, MAX_AGE_H),
    "context": (-1.0, 1.0),
}


def check_ranker_feed(feed: Mapping[str, np.ndarray], num_items: int) -> int:
    """The ranker's inputs against schema.RANKER_INPUTS; returns the candidate count."""
    n = _candidates("cand_idx", feed["cand_idx"])
    bounds = _index_bounds(num_items)
    for spec in schema.RANKER_INPUTS:
        arr = feed[spec.name]
        _check_array(spec.name, arr, spec, n)
        if spec.name in bounds:
            _check_index(spec.name, arr, bounds[spec.name])
        else:
            _check_finite(spec.name, arr, *_FLOAT_BOUNDS[spec.name])
    return n


def check_probs(name: str, probs: np.ndarray, n: int | None = None) -> int:
    """Head probabilities: float32 [N, NUM_HEADS], finite, in [0, 1]; returns N."""
    n = _candidates(name, probs) if n is None else n
    _check_array(name, probs, schema.RANKER_OUTPUTS[0], n)
    _check_finite(name, probs, 0.0, 1.0)
    return n


def check_postprocess(probs: np.ndarray, candidate_ids: np.ndarray, top_k: np.ndarray) -> int:
    """postprocess's inputs (schema.RANKER_OUTPUTS + PASSTHROUGH); returns k,
    clamped to the candidate count as the public API does."""
    n = _candidates("pp_candidate_ids", candidate_ids)
    _check_array("pp_candidate_ids", candidate_ids, schema.spec("pp_candidate_ids"), n)
    if int(candidate_ids.min()) < 0:
        raise StepInputError("pp_candidate_ids must be non-negative")
    if probs.ndim < 1 or probs.shape[0] != n:
        raise StepInputError(f"probs has {probs.shape[0] if probs.ndim else 0} rows but pp_candidate_ids "
                             f"has {n}: one row per candidate")
    check_probs("probs", probs, n)
    _check_array("pp_top_k", top_k, schema.spec("pp_top_k"))
    k = int(top_k[0])
    if not 1 <= k <= schema.MAX_CANDIDATES:
        raise StepInputError(f"pp_top_k must be in 1..MAX_CANDIDATES={schema.MAX_CANDIDATES}, got {k}")
    return min(k, n)
