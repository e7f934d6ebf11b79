"""Triton Python backend: validate + featurize one request (KIND_CPU, numpy only)."""

import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank.backend import schema  # noqa: E402
from pinrank.backend.backend_metrics import RequestCounters, preprocess_request  # noqa: E402
from pinrank.backend.preprocess import Preprocessor  # noqa: E402

_OUTPUTS = schema.RANKER_INPUTS + schema.PASSTHROUGH


class TritonPythonModel:
    def initialize(self, args):
        self.pre = Preprocessor.from_dir(VERSION_DIR / "artifacts")
        self.counters = RequestCounters(pb_utils, args["model_name"], args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            res, error = preprocess_request(pb_utils, self.pre, self.counters, request)
            if error is not None:
                responses.append(error)
                continue
            tensors = {**res.ranker_inputs, **res.passthrough}
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(s.name, tensors[s.name]) for s in _OUTPUTS])
            )
        return responses
