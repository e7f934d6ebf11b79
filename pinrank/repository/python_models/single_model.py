"""Triton Python backend: the whole request in one model (the cpu profile's
`--pipeline single` layout): validate + featurize, rank, utility + top-k.

On CPU every ensemble step is a Python-backend model, and each hop between
them is a round trip through the stub's shared memory (0.4-0.5 ms per step on
the 2-core box, docs/benchmarks.md) that buys nothing when all three run on the
same cores. Same code, same contract, same public model name as the ensemble;
user-side work still runs once per request.
"""

import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank.backend.backend_metrics import RequestCounters, preprocess_request  # noqa: E402
from pinrank.backend.postprocess import top_k  # noqa: E402
from pinrank.backend.preprocess import Preprocessor  # noqa: E402
from pinrank.backend.ranker_runtime import (  # noqa: E402
    WARMUP_CANDIDATES,
    WARMUP_COUNT,
    load_exported_ranker,
    model_parameters,
    runtime_parameter,
    warm_up,
)
from pinrank.backend.step_inputs import check_probs  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.pre = Preprocessor.from_dir(VERSION_DIR / "artifacts")
        self.rank = load_exported_ranker(VERSION_DIR, runtime_parameter(args["model_config"]),
                                threads=int(os.environ.get("PINRANK_RANKER_THREADS", "1")))
        self.counters = RequestCounters(pb_utils, args["model_name"], args["model_version"])
        params = model_parameters(args["model_config"])
        warm_up(self.rank, int(params.get(WARMUP_CANDIDATES, "1")), int(params.get(WARMUP_COUNT, "0")))

    def execute(self, requests):
        responses = []
        for request in requests:
            res, error = preprocess_request(pb_utils, self.pre, self.counters, request)
            if error is not None:
                responses.append(error)
                continue
            try:
                probs = np.asarray(self.rank(res.ranker_inputs))
                check_probs("probs", probs, int(res.ranker_inputs["cand_idx"].shape[0]))
                out = top_k(res.passthrough["pp_candidate_ids"], probs, int(res.passthrough["pp_top_k"][0]))
            except Exception as exc:  # ORT and torch raise their own types; check_probs a non-finite output
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ranker: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in out.items()]))
        return responses
