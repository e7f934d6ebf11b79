"""The whole request path in one process (preprocess -> eager ranker ->
postprocess): the reference the served ensemble must match, and the
in-process baseline for latency comparisons."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from pinrank.backend import schema
from pinrank.backend.postprocess import top_k
from pinrank.backend.preprocess import Preprocessor


class InProcessRanker:
    def __init__(self, preprocessor: Preprocessor, model: torch.nn.Module) -> None:
        self.pre = preprocessor
        self.model = model.eval()

    def rank(self, raw: Mapping[str, object]) -> dict[str, np.ndarray]:
        res = self.pre(raw)
        with torch.inference_mode():
            probs = self.model(*[torch.from_numpy(res.ranker_inputs[s.name]) for s in schema.RANKER_INPUTS])
        return top_k(res.passthrough["pp_candidate_ids"], probs.numpy(), int(res.passthrough["pp_top_k"][0]))
