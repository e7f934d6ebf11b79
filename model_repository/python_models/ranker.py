"""Triton Python backend: the ranker on CPU (the `cpu` profile's ensemble step),
hosted in ONNX Runtime (ranker.onnx) or TorchScript (ranker.pt).

The config's RUNTIME parameter picks which (`pinrank export --cpu-runtime`);
the artifact passed the export's parity gate in that runtime. NVIDIA's
container runs the same files on native backends instead (the `gpu` profile).
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

from pinrank import schema  # noqa: E402
from pinrank.serving.ranker_runtime import load_ranker, runtime_parameter  # noqa: E402

_INPUTS = [s.name for s in schema.RANKER_INPUTS]
_OUTPUT = schema.RANKER_OUTPUTS[0].name


class TritonPythonModel:
    def initialize(self, args):
        self.rank = load_ranker(VERSION_DIR, runtime_parameter(args["model_config"]),
                                threads=int(os.environ.get("PINRANK_RANKER_THREADS", "1")))

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in _INPUTS}
            try:
                probs = self.rank(feed)
            except Exception as exc:  # ORT and torch raise their own types on shape/type errors
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ranker: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(_OUTPUT, np.asarray(probs))]))
        return responses
