"""Request validation shared by the SDK (before sending) and the server's
preprocessing model (on arrival), so both say the same thing about bad input.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from pinrank_client import schema


class InvalidRequestError(ValueError):
    """The request breaks the serving contract; the message says how."""


def _as_int64_vector(name: str, value: object) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise InvalidRequestError(f"{name} must be a 1-D array of integers ({exc})") from None
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return np.zeros((0,), dtype=np.int64)
        raise InvalidRequestError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidRequestError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        # The cast below would wrap these around to negative values.
        raise InvalidRequestError(f"{name} holds values that do not fit in int64")
    return arr.astype(np.int64, copy=False)


def validate_request(arrays: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Check a request's tensors against the contract and return them as int64.

    Raises InvalidRequestError with a message naming the offending field. The
    history may be longer than REALTIME_SEQ_LEN (the newest are kept), but not
    longer than MAX_REQUEST_ACTIONS; candidates are never truncated.
    """
    known = {s.name for s in schema.REQUEST_INPUTS}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise InvalidRequestError(f"unknown input(s) {unknown}; expected {sorted(known)}")
    out: dict[str, np.ndarray] = {}
    for s in schema.REQUEST_INPUTS:
        if s.name not in arrays or arrays[s.name] is None:
            if s.optional:
                continue
            raise InvalidRequestError(f"missing input {s.name!r}")
        out[s.name] = _as_int64_vector(s.name, arrays[s.name])

    for name in ("user_id", "request_ts_ms", "top_k"):
        if name in out and out[name].shape != (1,):
            raise InvalidRequestError(f"{name} must have exactly one element, got {out[name].shape[0]}")

    # Ids are unsigned in every source we import; a negative one is a client
    # bug (or a -1 "none" sentinel) that would otherwise pass as a cold start.
    if out["user_id"][0] < 0:
        raise InvalidRequestError(f"user_id must be non-negative, got {int(out['user_id'][0])}")

    n = out["candidate_ids"].shape[0]
    if n == 0:
        raise InvalidRequestError("candidate_ids is empty: send at least one candidate")
    if n > schema.MAX_CANDIDATES:
        raise InvalidRequestError(
            f"too many candidates: {n} > MAX_CANDIDATES={schema.MAX_CANDIDATES} (split the request)"
        )
    if (out["candidate_ids"] < 0).any():
        raise InvalidRequestError("candidate_ids must be non-negative")

    history = ("action_item_ids", "action_types", "action_surfaces", "action_ts_ms")
    lengths = {h: out[h].shape[0] for h in history}
    if len(set(lengths.values())) != 1:
        raise InvalidRequestError(f"action arrays must have equal lengths, got {lengths}")
    length = lengths["action_item_ids"]
    if length > schema.MAX_REQUEST_ACTIONS:
        raise InvalidRequestError(
            f"too many actions: {length} > MAX_REQUEST_ACTIONS={schema.MAX_REQUEST_ACTIONS}"
        )
    types = out["action_types"]
    if ((types < 1) | (types >= schema.NUM_ACTION_IDS)).any():
        bad = int(types[(types < 1) | (types >= schema.NUM_ACTION_IDS)][0])
        raise InvalidRequestError(
            f"action_types holds {bad}; valid ids are 1..{schema.NUM_ACTION_IDS - 1} ({dict(schema.ACTION_IDS)})"
        )
    surfaces = out["action_surfaces"]
    if ((surfaces < 0) | (surfaces >= schema.NUM_SURFACE_IDS)).any():
        raise InvalidRequestError(
            f"action_surfaces must be in 0..{schema.NUM_SURFACE_IDS - 1} ({dict(schema.SURFACE_IDS)}, 0 = unknown)"
        )
    if (out["action_item_ids"] < 0).any():
        raise InvalidRequestError("action_item_ids must be non-negative")

    req_ts = int(out["request_ts_ms"][0])
    if not schema.MIN_TS_MS <= req_ts <= schema.MAX_TS_MS:
        raise InvalidRequestError(f"request_ts_ms={req_ts} is not a plausible unix time in milliseconds")
    ts = out["action_ts_ms"]
    if length and (ts < schema.MIN_TS_MS).any():
        raise InvalidRequestError("action_ts_ms holds values that are not unix milliseconds (too small)")
    if length and (ts > req_ts + schema.MAX_FUTURE_SKEW_MS).any():
        raise InvalidRequestError("action_ts_ms holds actions after request_ts_ms (beyond allowed clock skew)")

    if "top_k" in out and out["top_k"][0] < 1:
        raise InvalidRequestError(f"top_k must be >= 1, got {int(out['top_k'][0])}")
    return out
