"""The request-facing half of the Python-backend models that see raw
requests (`preprocess` in the ensemble, `pinrank` in the single-model layout):
validation + featurization with its error response, and custom Prometheus
counters."""

from __future__ import annotations

from typing import Any

from pinrank.backend import schema
from pinrank.backend.step_inputs import StepInputError, request_arrays
from pinrank_client.validation import InvalidRequestError

_REQUEST_NAMES = [s.name for s in schema.REQUEST_INPUTS]

REQUEST_COUNTERS = (
    ("pinrank_unknown_users_total", "Requests whose user had no snapshot embedding (cold start)"),
    ("pinrank_unknown_items_total", "Candidate ids missing from the item vocabulary (OOV embedding)"),
    ("pinrank_rejected_requests_total", "Requests rejected by validation"),
)


class RequestCounters:
    """`pb_utils` is passed in: this module is vendored and imported outside
    Triton too, where triton_python_backend_utils does not exist."""

    def __init__(self, pb_utils: Any, model_name: str, model_version: str) -> None:
        labels = {"model": model_name, "version": model_version}
        # Families must outlive their metrics (the stub refuses increments
        # otherwise), so keep both.
        self.families = {}
        self.metrics = {}
        for name, description in REQUEST_COUNTERS:
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            self.families[name] = family
            self.metrics[name] = family.Metric(labels=labels)

    def rejected(self) -> None:
        self.metrics["pinrank_rejected_requests_total"].increment(1)

    def served(self, unknown_user: bool, unknown_items: int) -> None:
        if unknown_user:
            self.metrics["pinrank_unknown_users_total"].increment(1)
        if unknown_items:
            self.metrics["pinrank_unknown_items_total"].increment(unknown_items)


def invalid_argument(pb_utils: Any, message: str) -> Any:
    """An error response Triton answers with 400 (HTTP) / INVALID_ARGUMENT (gRPC)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def preprocess_request(pb_utils: Any, pre: Any, counters: RequestCounters, request: Any) -> tuple[Any, Any]:
    """(PreprocessResult, None), or (None, an INVALID_ARG error response naming the problem)."""
    try:
        # Every input optional here: validate_request names a missing one.
        res = pre(request_arrays(request, (), _REQUEST_NAMES))
    except (InvalidRequestError, StepInputError) as exc:
        counters.rejected()
        return None, invalid_argument(pb_utils, f"invalid request: {exc}")
    counters.served(res.unknown_user, res.unknown_items)
    return res, None
