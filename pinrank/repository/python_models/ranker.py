"""Triton Python backend: the ranker step of the ensemble, hosted in ONNX
Runtime (ranker.onnx) or TorchScript (ranker.pt).

The config's RUNTIME parameter picks which (`pinrank export --cpu-runtime`);
the artifact passed the export's parity gate in that runtime. The instance
runs where Triton placed it: on its GPU for KIND_GPU (the gpu profile's
`python` backend, TorchScript, optional CUDA graphs), else on the CPU.
NVIDIA's container can run the same files on native backends instead.

Callable directly as well as from the ensemble, so it checks its feed first
(pinrank.backend.step_inputs): more than MAX_CANDIDATES candidates, an index
outside its embedding table, non-finite floats or disagreeing shapes get a 400
naming the input, before the runtime allocates anything; a non-finite output
is an error, never a served score.
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

from pinrank.backend import schema  # noqa: E402
from pinrank.backend.backend_metrics import invalid_argument  # noqa: E402
from pinrank.backend.ranker_runtime import (  # noqa: E402
    ALLOW_TF32_PARAMETER,
    CUDA_GRAPHS_PARAMETER,
    flag_parameter,
    instance_device,
    load_exported_ranker,
    manifest_num_items,
    model_parameters,
    runtime_parameter,
)
from pinrank.backend.step_inputs import (  # noqa: E402
    StepInputError,
    check_probs,
    check_ranker_feed,
    request_arrays,
)

_INPUTS = [s.name for s in schema.RANKER_INPUTS]
_OUTPUT = schema.RANKER_OUTPUTS[0].name


class TritonPythonModel:
    def initialize(self, args):
        self.num_items = manifest_num_items(VERSION_DIR)
        params = model_parameters(args["model_config"])
        self.rank = load_exported_ranker(
            VERSION_DIR, runtime_parameter(args["model_config"]),
            threads=int(os.environ.get("PINRANK_RANKER_THREADS", "1")), device=instance_device(args),
            cuda_graphs=flag_parameter(params, CUDA_GRAPHS_PARAMETER),
            allow_tf32=flag_parameter(params, ALLOW_TF32_PARAMETER))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = request_arrays(request, _INPUTS)
                n = check_ranker_feed(feed, self.num_items)
            except StepInputError as exc:
                responses.append(invalid_argument(pb_utils, f"{schema.RANKER_MODEL}: {exc}"))
                continue
            try:
                probs = np.asarray(self.rank(feed))
                check_probs(_OUTPUT, probs, n)
            except Exception as exc:  # ORT and torch raise their own types on shape/type errors
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ranker: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(_OUTPUT, probs)]))
        return responses
