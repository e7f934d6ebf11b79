"""Triton Python backend: the ranker as ONNX in ONNX Runtime on CPU (the
`cpu` profile with `pinrank export --cpu-runtime onnxruntime`).

The same `ranker.onnx` passed the export's parity gate in ONNX Runtime's
CPU provider; the pip-installed server has no onnxruntime backend, so the
Python backend hosts the session itself. onnxruntime is imported from the
environment the stub runs in (pinrank.serving.tritonserver puts the
virtualenv first), next to numpy < 2.
"""

import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank import schema  # noqa: E402

_INPUTS = [s.name for s in schema.RANKER_INPUTS]
_OUTPUTS = [s.name for s in schema.RANKER_OUTPUTS]


class TritonPythonModel:
    def initialize(self, args):
        so = ort.SessionOptions()
        # One thread per model instance, like the TorchScript ranker: requests
        # run concurrently across instances, and intra-op threads on a small
        # box fight each other instead.
        so.intra_op_num_threads = int(os.environ.get("PINRANK_ORT_THREADS", "1"))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(VERSION_DIR / "ranker.onnx"), so, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {
                n: np.ascontiguousarray(pb_utils.get_input_tensor_by_name(request, n).as_numpy()) for n in _INPUTS
            }
            try:
                outputs = self.session.run(_OUTPUTS, feed)
            except Exception as exc:  # ORT raises its own exception types (shape/type errors)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ranker: {exc}")))
                continue
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(n, np.asarray(v)) for n, v in zip(_OUTPUTS, outputs)])
            )
        return responses
