"""Checkpoint files: what training writes and every later stage (embed,
export, evaluation) reads, loaded weights-only so a file never runs code.

The config dicts of both model kinds are built here too (`ranker_config`,
`pinnerformer_config`): the writer and the readers agree on one layout.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.core.multiarray import _reconstruct

from pinrank.backend import schema

RANKER_KIND, PINNERFORMER_KIND = "ranker", "pinnerformer"


#: Marks a numpy array stored as a tensor: torch's weights-only unpickler
#: refuses numpy's own pickles, and checkpoints must never need more.
_NDARRAY_TAG = "__pinrank_ndarray__"


def _weights_only_safe(obj: Any, where: str) -> Any:
    """`obj` with numpy arrays/scalars turned into tensors/Python numbers, or
    TypeError naming the field that torch.load(weights_only=True) could not read
    back. Failing here, at save time, beats finding out when serving."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint field {where}: numpy dtype {obj.dtype} cannot be stored weights-only")
        return {_NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint field {where}: key {key!r} is not a str or int")
            out[key] = _weights_only_safe(value, f"{where}.{key}")
        if hasattr(obj, "_metadata"):  # state_dicts carry module versions here
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        items = [_weights_only_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"checkpoint field {where} holds a {type(obj).__name__}: store dicts, lists, numbers, strings, "
        "tensors or numpy arrays (dataclasses as dicts), so the file loads with weights_only=True"
    )


def _restore_arrays(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY_TAG}:
            return obj[_NDARRAY_TAG].numpy()
        return type(obj)((k, _restore_arrays(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_restore_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_restore_arrays(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, *, kind: str, config: dict[str, Any], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    extra: dict[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint (kind, config, weights, optimizer, step).

    Everything in it must load back with torch.load(weights_only=True):
    `config` and `extra` may hold plain containers, numbers, strings, tensors
    and numeric numpy arrays (stored as tensors, returned as arrays by
    load_checkpoint); anything else raises TypeError before writing.
    """
    path = Path(path)
    payload = {
        "kind": kind,
        "config": _weights_only_safe(config, "config"),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "extra": _weights_only_safe(extra or {}, "extra"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _legacy_numpy_globals() -> list[Any]:
    """What checkpoints written before numpy arrays were stored as tensors
    need: numpy's array reconstruction only (torch's documented allowlist for
    numpy arrays), never arbitrary callables."""
    dtype_classes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return [_reconstruct, np.ndarray, np.dtype, *dtype_classes]


# torch words it "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module ...".
_UNSUPPORTED_GLOBAL = re.compile(r"unsupported global:? (?:GLOBAL )?(\S+)", re.IGNORECASE)


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint weights-only and check it holds the expected model kind.

    torch.load(weights_only=True) never runs code from the file: a checkpoint
    that would need arbitrary classes or callables (a pickle payload, a model
    object pickled whole) is refused with ValueError naming what it asked for.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f" (it asks for {found.group(1).rstrip('.')})" if found else ""
        raise ValueError(
            f"{path}: refused: not a weights-only checkpoint{what}; pinrank loads checkpoints with "
            "torch.load(weights_only=True) and never unpickles arbitrary objects"
        ) from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        got = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a {kind!r} checkpoint, got {got!r}")
    for key in ("config", "extra"):
        if key in ckpt:
            ckpt[key] = _restore_arrays(ckpt[key])
    return ckpt


def ranker_config(model_config: dict[str, Any], num_items: int, train: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `config` of a ranker checkpoint: the model's config dict, the item
    table size, and the tensor contract it was trained against."""
    config = {"ranker": model_config, "num_items": int(num_items), "schema_version": schema.SCHEMA_VERSION,
              "heads": list(schema.HEADS), "realtime_seq_len": schema.REALTIME_SEQ_LEN}
    if train is not None:
        config["train"] = train
    return config


def pinnerformer_config(model_config: dict[str, Any], num_items: int,
                        train: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `config` of a PinnerFormer checkpoint."""
    config: dict[str, Any] = {"model": model_config, "num_items": int(num_items)}
    if train is not None:
        config["train"] = train
    return config
