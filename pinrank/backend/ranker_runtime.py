"""The exported ranker hosted in-process by a Python-backend model (the cpu
profile): ONNX Runtime on ranker.onnx or TorchScript on ranker.pt.

The pip-installed server has no onnxruntime or libtorch backend, so the
Python backend hosts the runtime itself. Vendored into each version
directory, so the runtime libraries are imported only when a ranker loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pinrank.backend import schema

#: runtime -> the file it loads from a version directory.
RUNTIME_FILES = {"onnxruntime": "ranker.onnx", "torchscript": "ranker.pt"}

RankerFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]
_INPUTS = [s.name for s in schema.RANKER_INPUTS]
_OUTPUTS = [s.name for s in schema.RANKER_OUTPUTS]


def load_exported_ranker(version_dir: str | Path, runtime: str, threads: int = 1) -> RankerFn:
    """feed (schema.RANKER_INPUTS by name) -> probs [N, heads] float32.

    One thread per model instance: requests run concurrently across
    instances, and intra-op pools on a small box fight each other instead.
    """
    if runtime not in RUNTIME_FILES:
        raise ValueError(f"unknown ranker runtime {runtime!r}; expected one of {sorted(RUNTIME_FILES)}")
    path = Path(version_dir) / RUNTIME_FILES[runtime]
    if not path.is_file():
        raise FileNotFoundError(f"ranker runtime {runtime!r} needs {path}, which is missing")
    if runtime == "onnxruntime":
        return _onnxruntime(path, threads)
    return _torchscript(path, threads)


def _onnxruntime(path: Path, threads: int) -> RankerFn:
    import onnxruntime as ort  # noqa: PLC0415 - only the runtime of the ranker this version ships is imported, when it loads

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return session.run(_OUTPUTS, {n: np.ascontiguousarray(feed[n]) for n in _INPUTS})[0]

    return run


def _torchscript(path: Path, threads: int) -> RankerFn:
    import torch  # noqa: PLC0415 - only the runtime of the ranker this version ships is imported, when it loads

    torch.set_num_threads(threads)
    model = torch.jit.load(str(path), map_location="cpu").eval()

    def run(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in _INPUTS]).numpy()

    return run


#: The Python-backend config parameter naming the runtime (pinrank/export/configs.py sets it).
RUNTIME_PARAMETER = "RUNTIME"
#: Parameters the single-model pipeline warms up with at load.
WARMUP_CANDIDATES, WARMUP_COUNT = "WARMUP_CANDIDATES", "WARMUP_COUNT"


def model_parameters(model_config_json: str) -> dict[str, str]:
    """The string parameters of the JSON model config Triton hands to initialize()."""
    params = json.loads(model_config_json).get("parameters", {})
    return {k: v.get("string_value", "") for k, v in params.items()}


def runtime_parameter(model_config_json: str) -> str:
    """The RUNTIME parameter (pinrank/export/configs.py sets it)."""
    try:
        return model_parameters(model_config_json)[RUNTIME_PARAMETER]
    except KeyError:
        raise ValueError(f"model config has no {RUNTIME_PARAMETER} parameter; re-export the repository") from None


def zero_feed(candidates: int) -> dict[str, np.ndarray]:
    """A valid ranker request of `candidates` unknown items and an empty
    history (0 is the padding/unknown id everywhere), for warmup."""
    feed = {}
    for s in schema.RANKER_INPUTS:
        shape = tuple(candidates if d == -1 else d for d in s.shape)
        feed[s.name] = np.zeros(shape, dtype=np.dtype(s.dtype))
    return feed


def warm_up(rank: RankerFn, candidates: int, count: int) -> None:
    """Run `count` zero requests: ONNX Runtime and TorchScript allocate and
    optimise over their first calls, which real requests should not pay for."""
    feed = zero_feed(candidates) if count > 0 else {}
    for _ in range(count):
        rank(feed)


#: The version manifest key holding the item count the ranker's tables were
#: built for (pinrank/export/publish.py writes it from the vocabulary).
NUM_ITEMS_KEY = "num_items"


def manifest_num_items(version_dir: str | Path) -> int:
    """Items in the ranker's embedding tables (rows = this + 1, row 0 unknown),
    from the version's manifest.json; ValueError when the manifest lacks it."""
    path = Path(version_dir) / "manifest.json"
    try:
        value = json.loads(path.read_text())[NUM_ITEMS_KEY]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: no readable {NUM_ITEMS_KEY!r} ({exc!r}); re-export the repository") from None
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: {NUM_ITEMS_KEY} must be a positive integer, got {value!r}")
    return value
