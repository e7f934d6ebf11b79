"""What every answer of a canary must satisfy, whatever the model learned:
the serving contract seen from the caller (docs: the SDK's RankResponse).

The SDK already refuses malformed tensors (shapes, NaN, head probabilities
outside [0, 1]) with a ServerError; these are the checks that need the
request beside the answer."""

from __future__ import annotations

import numpy as np

from pinrank_client import schema
from pinrank_client.types import RankRequest, RankResponse


def contract_problems(request: RankRequest, response: RankResponse) -> list[str]:
    """How `response` breaks the contract for `request` (empty: it keeps it)."""
    problems = []
    ids = np.asarray(response.item_ids, dtype=np.int64)
    scores = np.asarray([item.utility for item in response.items], dtype=np.float64)
    candidates = np.unique(request.candidate_ids)  # the server ranks each candidate once
    top_k = schema.DEFAULT_TOP_K if request.top_k is None else request.top_k
    if ids.size != min(top_k, candidates.size):
        problems.append(f"{ids.size} items for top_k={top_k} over {candidates.size} candidates")
    strangers = np.setdiff1d(ids, candidates)
    if strangers.size:
        problems.append(f"{strangers.size} item(s) that are not candidates, e.g. {int(strangers[0])}")
    if np.unique(ids).size != ids.size:
        problems.append("an item ranked twice")
    if not np.isfinite(scores).all():
        problems.append("a score that is NaN or infinite")
    elif (np.diff(scores) > 0).any():
        problems.append("items not sorted by utility (best first)")
    return problems
