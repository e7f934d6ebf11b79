"""Triton Python backend: the ranker as TorchScript on CPU (the `cpu` profile).

NVIDIA's container runs the same `ranker.pt` with the native pytorch_libtorch
backend (the `gpu` profile); the pip-installed server has no such backend, so
on CPU the Python backend hosts torch itself.
"""

import os
import sys
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank import schema  # noqa: E402

_INPUTS = [s.name for s in schema.RANKER_INPUTS]


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(int(os.environ.get("PINRANK_TORCH_THREADS", "1")))
        self.model = torch.jit.load(str(VERSION_DIR / "ranker.pt"), map_location="cpu").eval()

    def execute(self, requests):
        responses = []
        with torch.inference_mode():
            for request in requests:
                args = [
                    torch.from_numpy(pb_utils.get_input_tensor_by_name(request, n).as_numpy()) for n in _INPUTS
                ]
                try:
                    probs = self.model(*args)
                except RuntimeError as exc:
                    responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ranker: {exc}")))
                    continue
                responses.append(
                    pb_utils.InferenceResponse([pb_utils.Tensor("probs", probs.numpy())])
                )
        return responses
