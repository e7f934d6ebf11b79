"""Bad inputs for the step models called directly (issue 16, row 6): each
case is (what it is, the arrays, the text the refusal must hold). Shared by
the real-server tests and `make reliability`'s hostile phase."""

from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient

from pinrank.backend import schema
from pinrank.backend.ranker_runtime import zero_feed


def ranker_feed(n: int = 8) -> dict[str, np.ndarray]:
    feed = zero_feed(n)
    feed["cand_idx"] = np.arange(n, dtype=np.int64)
    feed["user_emb"] = np.full(schema.USER_EMB_DIM, 0.1, np.float32)
    return feed


def with_value(feed: dict[str, np.ndarray], name: str, value: float, index: int = 0) -> dict[str, np.ndarray]:
    out = dict(feed)
    out[name] = feed[name].copy()
    out[name][index] = value
    return out


def postprocess_inputs(n: int = 6, k: int = 3) -> dict[str, np.ndarray]:
    return {
        "probs": np.random.default_rng(0).uniform(size=(n, schema.NUM_HEADS)).astype(np.float32),
        "pp_candidate_ids": np.arange(100, 100 + n, dtype=np.int64),
        "pp_top_k": np.asarray([k], dtype=np.int64),
    }


def bad_ranker_feeds(num_items: int) -> list[tuple[str, dict[str, np.ndarray], str]]:
    feed = ranker_feed()
    return [
        ("200k candidates", {**feed, "cand_idx": np.zeros(200_000, np.int64)}, "cand_idx has 200000 candidates"),
        ("negative cand_idx", with_value(feed, "cand_idx", -1, 3), "cand_idx holds -1"),
        ("cand_idx past the table", with_value(feed, "cand_idx", num_items + 1), f"cand_idx holds {num_items + 1}"),
        ("negative seq_item_idx", with_value(feed, "seq_item_idx", -5), "seq_item_idx holds -5"),
        ("negative seq_surface", with_value(feed, "seq_surface", -1), "seq_surface holds -1"),
        ("seq_surface past its vocabulary", with_value(feed, "seq_surface", schema.NUM_SURFACE_IDS),
         "seq_surface holds"),
        ("seq_action past its vocabulary", with_value(feed, "seq_action", 2**40), "seq_action holds"),
        ("inf user_emb", with_value(feed, "user_emb", np.inf), "user_emb holds non-finite"),
        ("huge user_emb", with_value(feed, "user_emb", 1e30), "user_emb must be in"),
        ("NaN context", with_value(feed, "context", np.nan, 2), "context holds non-finite"),
        ("context out of range", with_value(feed, "context", 1e30, 2), "context must be in"),
        ("NaN seq_age_h", with_value(feed, "seq_age_h", np.nan, 7), "seq_age_h holds non-finite"),
        ("negative seq_age_h", with_value(feed, "seq_age_h", -1.0, 7), "seq_age_h must be in"),
    ]


def bad_postprocess_inputs() -> list[tuple[str, dict[str, np.ndarray], str]]:
    ok = postprocess_inputs()
    return [
        ("top_k 0", {**ok, "pp_top_k": np.asarray([0], np.int64)}, "pp_top_k must be in"),
        ("top_k -5", {**ok, "pp_top_k": np.asarray([-5], np.int64)},
         f"pp_top_k must be in 1..MAX_CANDIDATES={schema.MAX_CANDIDATES}, got -5"),
        ("top_k past MAX_CANDIDATES", {**ok, "pp_top_k": np.asarray([2**62], np.int64)}, "pp_top_k must be in"),
        ("NaN probs", {**ok, "probs": np.full_like(ok["probs"], np.nan)}, "probs holds non-finite"),
        ("probs above 1", {**ok, "probs": ok["probs"] + 1.0}, "probs must be in [0, 1]"),
        ("length mismatch", {**ok, "probs": ok["probs"][:2]}, "probs has 2 rows but pp_candidate_ids has 6"),
        ("200k candidates", {"probs": np.zeros((200_000, schema.NUM_HEADS), np.float32),
                             "pp_candidate_ids": np.arange(200_000, dtype=np.int64), "pp_top_k": ok["pp_top_k"]},
         "pp_candidate_ids has 200000 candidates"),
    ]


def infer_binary(http_url: str, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One binary-tensor HTTP inference straight to `model` (NaN and inf travel
    as they are); its outputs. Refusals raise tritonclient's InferenceServerException."""
    inputs = []
    for name, value in arrays.items():
        t = httpclient.InferInput(name, list(value.shape), schema.NUMPY_TO_TRITON[value.dtype.name])
        t.set_data_from_numpy(value, binary_data=True)
        inputs.append(t)
    with httpclient.InferenceServerClient(http_url, network_timeout=60) as client:
        result = client.infer(model, inputs)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
