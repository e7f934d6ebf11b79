"""The exported ranker hosted in-process by a Python-backend model: ONNX
Runtime on ranker.onnx or TorchScript on ranker.pt (the cpu profile), or
TorchScript on the instance's CUDA device (the gpu profile's `python` backend).

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


def load_exported_ranker(version_dir: str | Path, runtime: str, threads: int = 1, *, device: str = "cpu",
                         cuda_graphs: bool = False, allow_tf32: bool = False) -> RankerFn:
    """feed (schema.RANKER_INPUTS by name) -> probs [N, heads] float32.

    One thread per model instance: requests run concurrently across
    instances, and intra-op pools on a small box fight each other instead.
    `device` ("cpu" or "cuda:<i>"), `cuda_graphs` and `allow_tf32` are the
    torchscript runtime's (pinrank.backend.torchscript_ranker).
    """
    if runtime not in RUNTIME_FILES:
        raise ValueError(f"unknown ranker runtime {runtime!r}; expected one of {sorted(RUNTIME_FILES)}")
    if runtime == "onnxruntime" and device != "cpu":
        raise ValueError(f"the onnxruntime ranker runs on CPU only, not {device}; use torchscript on a GPU")
    path = Path(version_dir) / RUNTIME_FILES[runtime]
    if not path.is_file():
        raise FileNotFoundError(f"ranker runtime {runtime!r} needs {path}, which is missing")
    if runtime == "onnxruntime":
        return _onnxruntime(path, threads)
    from pinrank.backend.torchscript_ranker import TorchScriptRanker  # noqa: PLC0415 - torch only when such a ranker loads

    return TorchScriptRanker(path, device, threads=threads, cuda_graphs=cuda_graphs, allow_tf32=allow_tf32)


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


#: The Python-backend config parameter naming the runtime (pinrank/export/configs.py sets it).
RUNTIME_PARAMETER = "RUNTIME"
#: Ranker parameters of the gpu profile's python backend: CUDA graphs per
#: candidate bucket, TF32 matmuls ("true"/"false"; both off by default).
CUDA_GRAPHS_PARAMETER, ALLOW_TF32_PARAMETER = "CUDA_GRAPHS", "ALLOW_TF32"
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


def flag_parameter(params: Mapping[str, str], key: str) -> bool:
    """A "true"/"false" model parameter (absent: false); anything else is a config error."""
    value = params.get(key, "false").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"model parameter {key} must be 'true' or 'false', got {params[key]!r}")
    return value == "true"


def instance_device(args: Mapping[str, str]) -> str:
    """The torch device of the model instance Triton's initialize(args)
    describes: its GPU for a KIND_GPU instance, else the CPU."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


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
