"""Triton Python backend: validate + featurize one request (KIND_CPU, numpy only)."""

import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

# The writer vendors the numpy-only serving modules next to model.py, so the
# repository runs wherever Triton and numpy do, without installing pinrank.
VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR / "_vendor"))

from pinrank import schema  # noqa: E402
from pinrank.serving.preprocess import Preprocessor  # noqa: E402
from pinrank_client.validation import InvalidRequestError  # noqa: E402

_OUTPUTS = schema.RANKER_INPUTS + schema.PASSTHROUGH


class TritonPythonModel:
    def initialize(self, args):
        self.pre = Preprocessor.from_dir(VERSION_DIR / "artifacts")
        labels = {"model": args["model_name"], "version": args["model_version"]}
        # Families must outlive their metrics (the stub refuses increments
        # otherwise), so keep both.
        self.metric_families = {}
        self.metrics = {}
        for name, description in (
            ("pinrank_unknown_users_total", "Requests whose user had no snapshot embedding (cold start)"),
            ("pinrank_unknown_items_total", "Candidate ids missing from the item vocabulary (OOV embedding)"),
            ("pinrank_rejected_requests_total", "Requests rejected by validation"),
        ):
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            self.metric_families[name] = family
            self.metrics[name] = family.Metric(labels=labels)

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = {}
            for s in schema.REQUEST_INPUTS:
                t = pb_utils.get_input_tensor_by_name(request, s.name)
                if t is not None:
                    raw[s.name] = t.as_numpy()
            try:
                res = self.pre(raw)
            except InvalidRequestError as exc:
                self.metrics["pinrank_rejected_requests_total"].increment(1)
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"invalid request: {exc}", pb_utils.TritonError.INVALID_ARG)
                    )
                )
                continue
            if res.unknown_user:
                self.metrics["pinrank_unknown_users_total"].increment(1)
            if res.unknown_items:
                self.metrics["pinrank_unknown_items_total"].increment(res.unknown_items)
            tensors = {**res.ranker_inputs, **res.passthrough}
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(s.name, tensors[s.name]) for s in _OUTPUTS])
            )
        return responses
