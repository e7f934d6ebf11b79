"""Cost of one ranking request (1 user x N candidates, L realtime actions).

GFLOP come from PyTorch's own operator-level counter (`FlopCounterMode`:
matmuls, convolutions and attention, the terms that scale with N and L);
elementwise work is not counted, as in most published FLOP figures.
Milliseconds are measured in-process on the serving module, median of
`repeats` timed calls after warm-up, on whatever threads torch is set to.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pinrank.backend import schema
from pinrank.models.ranker import Ranker, RankerServing, example_serving_inputs


def request_inputs(model: Ranker, n: int, history: int = schema.REALTIME_SEQ_LEN,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One request's serving inputs: N candidates and a full history of `history` actions."""
    return example_serving_inputs(n, model.num_items, history=history, seed=seed)


@torch.inference_mode()
def gflop_per_request(model: Ranker, n: int, history: int = schema.REALTIME_SEQ_LEN) -> float:
    """Counted GFLOP of one serving call with N candidates."""
    serving = RankerServing(model).eval()
    inputs = request_inputs(model, n, history)
    counter = FlopCounterMode(display=False)
    with counter:
        serving(*inputs)
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def ms_per_request(model: Ranker, n: int, history: int = schema.REALTIME_SEQ_LEN, repeats: int = 20,
                   warmup: int = 3) -> float:
    """Median wall-clock milliseconds of one serving call with N candidates."""
    serving = RankerServing(model).eval()
    inputs = request_inputs(model, n, history)
    for _ in range(warmup):
        serving(*inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        serving(*inputs)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


__all__ = ["gflop_per_request", "ms_per_request", "request_inputs"]
