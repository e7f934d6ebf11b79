"""Triton Python backend: utility = weighted head sum, then top-k (KIND_CPU)."""

import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank.serving.postprocess import top_k  # noqa: E402


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            probs = pb_utils.get_input_tensor_by_name(request, "probs").as_numpy()
            ids = pb_utils.get_input_tensor_by_name(request, "pp_candidate_ids").as_numpy()
            k = int(pb_utils.get_input_tensor_by_name(request, "pp_top_k").as_numpy()[0])
            try:
                out = top_k(ids, probs, k)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in out.items()]))
        return responses
