"""The exported TorchScript ranker (ranker.pt) on a torch device: the cpu
profile's `torchscript` runtime, and the gpu profile's Python-backend ranker
(`pinrank export --gpu-backend python`) on its model instance's CUDA device.

Imported only when such a ranker loads (pinrank.backend.ranker_runtime), so
the other vendored modules stay numpy-only.

On CUDA, optional CUDA graphs: one graph per candidate-count bucket, captured
at load; a request's candidates are padded with the unknown id (0) up to its
bucket and the padded rows' scores dropped. Candidates are scored
independently of each other (the user side is shared, nothing mixes
candidates), so padding changes no real candidate's score; the tests check
that on CPU, where the same padding runs without graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from pinrank.backend import schema
from pinrank.backend.ranker_runtime import zero_feed

#: Candidate counts a graph is captured for: powers of two up to the contract's maximum.
GRAPH_BUCKETS: tuple[int, ...] = (128, 256, 512, schema.MAX_CANDIDATES)
_INPUTS = [s.name for s in schema.RANKER_INPUTS]
_CANDIDATES = schema.RANKER_INPUTS[0].name  # cand_idx: the one input whose length is N


def bucket_for(n: int, buckets: tuple[int, ...] = GRAPH_BUCKETS) -> int:
    """The smallest bucket holding `n` candidates."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"{n} candidates exceed the largest bucket {max(buckets)}")


def padded_feed(feed: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """`feed` with its candidates padded by the unknown id to `size`."""
    cand = feed[_CANDIDATES]
    out = dict(feed)
    out[_CANDIDATES] = np.concatenate([cand, np.zeros(size - cand.shape[0], cand.dtype)])
    return out


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


class TorchScriptRanker:
    """feed (schema.RANKER_INPUTS by name, numpy) -> probs [N, heads] float32 numpy."""

    def __init__(self, path: str | Path, device: str = "cpu", *, threads: int = 1, cuda_graphs: bool = False,
                 allow_tf32: bool = False, buckets: tuple[int, ...] = GRAPH_BUCKETS) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # TF32 matmuls change scores in the 4th digit: off unless the deployment opts in.
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
            torch.backends.cudnn.allow_tf32 = allow_tf32
        else:
            torch.set_num_threads(threads)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.graphs: dict[int, _Graph] = {}
        if cuda_graphs:
            if self.device.type != "cuda":
                raise ValueError(f"CUDA graphs need a CUDA device; this ranker runs on {self.device}")
            self.graphs = {b: self._capture(b) for b in sorted(buckets)}

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _capture(self, size: int) -> _Graph:
        feed = zero_feed(size)
        static = {name: self._tensor(feed[name]) for name in _INPUTS}
        args = [static[name] for name in _INPUTS]
        # TorchScript's profiling executor rewrites the graph over its first
        # calls: run those outside the capture, on a side stream as capture wants.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self.model(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            output = self.model(*args)
        return _Graph(graph, static, output)

    def __call__(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        n = int(feed[_CANDIDATES].shape[0])
        if self.graphs and 0 < n <= max(self.graphs):
            return self._replay(feed, n)
        with torch.inference_mode():
            out = self.model(*[self._tensor(feed[name]) for name in _INPUTS])
            return out.cpu().numpy()

    def _replay(self, feed: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        g = self.graphs[bucket_for(n, tuple(self.graphs))]
        with torch.inference_mode():
            for name, dst in g.inputs.items():
                src = torch.from_numpy(np.ascontiguousarray(feed[name]))
                if name == _CANDIDATES:
                    dst[:n].copy_(src)
                    dst[n:].zero_()
                else:
                    dst.copy_(src)
            g.graph.replay()
            return g.output[:n].cpu().numpy()  # .cpu() waits for the replay

