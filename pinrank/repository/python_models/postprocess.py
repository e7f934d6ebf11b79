"""Triton Python backend: utility = weighted head sum, then top-k (KIND_CPU).

Callable directly as well as from the ensemble, so it checks what it gets
(pinrank.backend.step_inputs): NaN or out-of-range probabilities, a length
mismatch or a top_k outside 1..MAX_CANDIDATES get a 400 naming the input.
"""

import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank.backend import schema  # noqa: E402
from pinrank.backend.backend_metrics import invalid_argument  # noqa: E402
from pinrank.backend.postprocess import top_k  # noqa: E402
from pinrank.backend.step_inputs import (  # noqa: E402
    StepInputError,
    check_postprocess,
    request_arrays,
)

_INPUTS = [s.name for s in schema.RANKER_OUTPUTS + schema.PASSTHROUGH]


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                x = request_arrays(request, _INPUTS)
                k = check_postprocess(x["probs"], x["pp_candidate_ids"], x["pp_top_k"])
            except StepInputError as exc:
                responses.append(invalid_argument(pb_utils, f"{schema.POSTPROCESS_MODEL}: {exc}"))
                continue
            out = top_k(x["pp_candidate_ids"], x["probs"], k)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in out.items()]))
        return responses
