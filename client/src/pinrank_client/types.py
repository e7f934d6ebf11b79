"""Typed requests and responses, converted to and from the schema's tensors.

Requests are validated when they are built, with the same validator the
server's preprocessing runs, so a bad request fails in the caller's stack
frame with the message the server would have sent, without a round trip.
Action histories are stored column-wise (ActionHistory) because that is the
wire format: a load test can hand numpy arrays straight through.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pinrank_client import schema, validation
from pinrank_client.errors import InvalidRequestError, ServerError

IntArray = NDArray[np.int64]

__all__ = [
    "Action",
    "ActionHistory",
    "RankRequest",
    "RankedItem",
    "RankResponse",
    "ModelStats",
    "parse_model_stats",
    "now_ms",
]

# Tensor names this module fills; tests check they are exactly the schema's
# REQUEST_INPUTS / RESPONSE_OUTPUTS, so a contract change cannot slip past.
_ACTION_COLUMNS = ("action_item_ids", "action_types", "action_surfaces", "action_ts_ms")
_INPUT_SPECS = {s.name: s for s in schema.REQUEST_INPUTS}
_OUTPUT_SPECS = {s.name: s for s in schema.RESPONSE_OUTPUTS}
_ACTION_NAMES = {i: name for name, i in schema.ACTION_IDS.items()}
_SURFACE_NAMES = {i: name for name, i in schema.SURFACE_IDS.items()}


def now_ms() -> int:
    """The current unix time in milliseconds (the request_ts_ms default)."""
    return time.time_ns() // 1_000_000


_INT64 = np.iinfo(np.int64)


def _int(name: str, value: object) -> int:
    # bool is an int subclass, but True as a user id is always a mistake.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
    if not _INT64.min <= value <= _INT64.max:
        raise InvalidRequestError(f"{name}={value} does not fit in int64 (the wire type)")
    return int(value)


def _vocab_id(kind: str, value: object, vocab: Mapping[str, int], pad_ok: bool, field: str | None = None) -> int:
    """A name from `vocab` or an integer id (also as a digit string, as the CLI sends).

    `field` names the value in errors about integers (default: `kind`)."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in vocab:
            return vocab[key]
        # ASCII only: str.isdigit and int() also take "²" (and fail) or "٣" (and read 3).
        if key.isascii() and key.isdigit():
            return _int(field or kind, int(key))
        extra = " (or 0 = unknown)" if pad_ok else ""
        raise InvalidRequestError(
            f"unknown {kind} {value!r}; valid {kind}s are {', '.join(vocab)}{extra}, or an id in ASCII digits"
        )
    return _int(field or kind, value)


def _as_array(name: str, values: ArrayLike) -> np.ndarray:
    try:
        return np.asarray(values)
    except (OverflowError, ValueError, TypeError) as exc:  # ragged lists and the like
        raise InvalidRequestError(f"{name} must be a 1-D list of integers: {exc}") from None


def _all_ints(values: object) -> bool:
    if isinstance(values, np.ndarray) or not isinstance(values, Iterable):
        return False
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values)


def _int_vector(name: str, values: ArrayLike) -> IntArray:
    """A read-only int64 copy of `values` (copied so callers may reuse their buffer)."""
    arr = _as_array(name, values)
    if arr.ndim != 1:
        raise InvalidRequestError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.size and arr.dtype.kind in "fO" and _all_ints(values):
        # Python ints beyond int64: numpy keeps them as objects, or, mixed
        # with small ones ([7, 2**63]), silently turns them all into floats.
        raise InvalidRequestError(f"{name} holds values that do not fit in int64 (the wire type)")
    # [] parses as float64: empty is fine here, the validator judges emptiness.
    if arr.dtype.kind not in "iu" and arr.size:
        raise InvalidRequestError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > _INT64.max:
        # Cast as is, these would wrap around to negative ids.
        raise InvalidRequestError(f"{name} holds values that do not fit in int64 (the wire type)")
    out = np.array(arr, dtype=np.int64)
    out.setflags(write=False)
    return out


def _vocab_vector(name: str, kind: str, values: ArrayLike, vocab: Mapping[str, int], pad_ok: bool) -> IntArray:
    arr = _as_array(name, values)
    if arr.dtype.kind in "OUS":  # names, or a mix of names and ids (numpy makes those strings)
        if arr.ndim != 1:
            raise InvalidRequestError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
        ids = (_vocab_id(kind, v, vocab, pad_ok, field=name) for v in arr.tolist())
        arr = np.fromiter(ids, np.int64, arr.shape[0])
    return _int_vector(name, arr)


@dataclass(frozen=True, init=False)
class Action:
    """One thing the user did, newest or oldest first (the server sorts).

    `action` and `surface` take schema names ("save", "home") or ids; they are
    stored as ids. surface 0 means unknown.
    """

    item_id: int
    action: int
    ts_ms: int
    surface: int = 0

    def __init__(self, item_id: int, action: str | int, ts_ms: int, surface: str | int = 0) -> None:
        object.__setattr__(self, "item_id", _int("action item_id", item_id))
        object.__setattr__(self, "action", _vocab_id("action", action, schema.ACTION_IDS, pad_ok=False))
        object.__setattr__(self, "ts_ms", _int("action ts_ms", ts_ms))
        object.__setattr__(self, "surface", _vocab_id("surface", surface, schema.SURFACE_IDS, pad_ok=True))

    @property
    def action_name(self) -> str | None:
        return _ACTION_NAMES.get(self.action)

    @property
    def surface_name(self) -> str | None:
        return _SURFACE_NAMES.get(self.surface)


@dataclass(frozen=True, init=False, eq=False)
class ActionHistory(Sequence[Action]):
    """A user's recent actions as four parallel, read-only int64 columns.

    Build it from Action objects (`from_actions`) or straight from columns;
    `types` and `surfaces` may hold names. It is a Sequence of Action.
    """

    item_ids: IntArray
    types: IntArray
    ts_ms: IntArray
    surfaces: IntArray

    def __init__(
        self,
        item_ids: ArrayLike = (),
        types: ArrayLike = (),
        ts_ms: ArrayLike = (),
        surfaces: ArrayLike | None = None,
    ) -> None:
        cols = {
            "action_item_ids": _int_vector("action_item_ids", item_ids),
            "action_types": _vocab_vector("action_types", "action", types, schema.ACTION_IDS, pad_ok=False),
            "action_ts_ms": _int_vector("action_ts_ms", ts_ms),
        }
        if surfaces is None:
            cols["action_surfaces"] = _int_vector("action_surfaces", np.zeros_like(cols["action_item_ids"]))
        else:
            cols["action_surfaces"] = _vocab_vector(
                "action_surfaces", "surface", surfaces, schema.SURFACE_IDS, pad_ok=True
            )
        lengths = {name: cols[name].shape[0] for name in _ACTION_COLUMNS}
        if len(set(lengths.values())) != 1:
            # Same wording as validate_request, which cannot see this case.
            raise InvalidRequestError(f"action arrays must have equal lengths, got {lengths}")
        object.__setattr__(self, "item_ids", cols["action_item_ids"])
        object.__setattr__(self, "types", cols["action_types"])
        object.__setattr__(self, "ts_ms", cols["action_ts_ms"])
        object.__setattr__(self, "surfaces", cols["action_surfaces"])

    @classmethod
    def from_actions(cls, actions: Iterable[Action]) -> ActionHistory:
        if isinstance(actions, (str, bytes, Mapping)) or not isinstance(actions, Iterable):
            raise InvalidRequestError(
                f"actions must be an ActionHistory or a list of Action objects, got {type(actions).__name__}"
            )
        actions = list(actions)
        for a in actions:
            if not isinstance(a, Action):
                raise InvalidRequestError(f"actions must be Action objects, got {type(a).__name__}")
        return cls(
            [a.item_id for a in actions],
            [a.action for a in actions],
            [a.ts_ms for a in actions],
            [a.surface for a in actions],
        )

    def to_arrays(self) -> dict[str, IntArray]:
        """The history's request tensors, keyed by tensor name."""
        return {
            "action_item_ids": self.item_ids,
            "action_types": self.types,
            "action_surfaces": self.surfaces,
            "action_ts_ms": self.ts_ms,
        }

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @overload
    def __getitem__(self, index: int) -> Action: ...

    @overload
    def __getitem__(self, index: slice) -> ActionHistory: ...

    def __getitem__(self, index: int | slice) -> Action | ActionHistory:
        if isinstance(index, slice):
            return ActionHistory(self.item_ids[index], self.types[index], self.ts_ms[index], self.surfaces[index])
        i = int(index)
        return Action(int(self.item_ids[i]), int(self.types[i]), int(self.ts_ms[i]), int(self.surfaces[i]))

    def __iter__(self) -> Iterator[Action]:
        cols = (self.item_ids.tolist(), self.types.tolist(), self.ts_ms.tolist(), self.surfaces.tolist())
        for item, kind, ts, surface in zip(*cols):
            yield Action(item, kind, ts, surface)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionHistory):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self.to_arrays().values(), other.to_arrays().values()))

    __hash__ = None  # type: ignore[assignment]  # equality is by content

    def __repr__(self) -> str:
        return f"ActionHistory(<{len(self)} actions>)"


@dataclass(frozen=True, init=False, eq=False)
class RankRequest:
    """One user x N candidates, validated against the serving contract on creation.

    `request_ts_ms` defaults to now (fixed at creation, so retries send the
    same request); `top_k` defaults to the server's DEFAULT_TOP_K.
    `dataclasses.replace(req, top_k=10)` works and re-validates.

    `validate=False` skips the contract check (limits, vocabularies,
    timestamps) but not the type check: use it only when the server's limits
    are known to differ from this SDK's, and let the server judge.
    """

    user_id: int
    candidate_ids: IntArray
    actions: ActionHistory
    request_ts_ms: int
    top_k: int | None
    if TYPE_CHECKING:
        # Set in __init__; declared for the type checker only, so that it is
        # not a dataclass field at runtime (fields(), replace(), asdict()).
        _arrays: dict[str, IntArray]

    def __init__(
        self,
        user_id: int,
        candidate_ids: ArrayLike,
        actions: ActionHistory | Iterable[Action] = (),
        *,
        top_k: int | None = None,
        request_ts_ms: int | None = None,
        validate: bool = True,
    ) -> None:
        history = actions if isinstance(actions, ActionHistory) else ActionHistory.from_actions(actions)
        object.__setattr__(self, "user_id", _int("user_id", user_id))
        object.__setattr__(self, "candidate_ids", _int_vector("candidate_ids", candidate_ids))
        object.__setattr__(self, "actions", history)
        object.__setattr__(
            self, "request_ts_ms", now_ms() if request_ts_ms is None else _int("request_ts_ms", request_ts_ms)
        )
        object.__setattr__(self, "top_k", None if top_k is None else _int("top_k", top_k))
        tensors: dict[str, IntArray] = {
            "user_id": np.array([self.user_id], dtype=np.int64),
            "candidate_ids": self.candidate_ids,
            **history.to_arrays(),
            "request_ts_ms": np.array([self.request_ts_ms], dtype=np.int64),
        }
        if self.top_k is not None:
            tensors["top_k"] = np.array([self.top_k], dtype=np.int64)
        if validate:
            try:
                checked = validation.validate_request(tensors)
            except validation.InvalidRequestError as exc:
                raise InvalidRequestError(str(exc)) from None
        else:
            checked = tensors
        # Cast per the schema, so a dtype change there reaches the wire.
        object.__setattr__(
            self, "_arrays", {name: arr.astype(_INPUT_SPECS[name].dtype, copy=False) for name, arr in checked.items()}
        )

    @classmethod
    def from_arrays(
        cls,
        user_id: int,
        candidate_ids: ArrayLike,
        *,
        action_item_ids: ArrayLike = (),
        action_types: ArrayLike = (),
        action_ts_ms: ArrayLike = (),
        action_surfaces: ArrayLike | None = None,
        request_ts_ms: int | None = None,
        top_k: int | None = None,
        validate: bool = True,
    ) -> RankRequest:
        """Build from parallel arrays (numpy or lists), skipping per-action objects."""
        history = ActionHistory(action_item_ids, action_types, action_ts_ms, action_surfaces)
        return cls(user_id, candidate_ids, history, request_ts_ms=request_ts_ms, top_k=top_k, validate=validate)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, validate: bool = True) -> RankRequest:
        """Build from a JSON-style mapping (the CLI's --request-file format).

        Keys: user_id, candidate_ids, optional request_ts_ms and top_k, and the
        history either as `actions` (a list of {item_id, action, ts_ms[, surface]})
        or as the four columns action_item_ids, action_types, action_ts_ms[,
        action_surfaces]. Action types and surfaces may be names or ids.
        """
        if not isinstance(data, Mapping):
            raise InvalidRequestError(f"a request must be a JSON object, got {type(data).__name__}")
        allowed = {"user_id", "candidate_ids", "actions", "request_ts_ms", "top_k", *_ACTION_COLUMNS}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidRequestError(f"unknown request field(s) {unknown}; expected some of {sorted(allowed)}")
        for required in ("user_id", "candidate_ids"):
            if required not in data:
                raise InvalidRequestError(f"request field {required!r} is missing")
        columns = [c for c in _ACTION_COLUMNS if c in data]
        if "actions" in data and columns:
            raise InvalidRequestError(f"give the history as 'actions' or as columns, not both (got {columns})")
        history: ActionHistory
        if columns:
            history = ActionHistory(
                data.get("action_item_ids", ()),
                data.get("action_types", ()),
                data.get("action_ts_ms", ()),
                data.get("action_surfaces"),
            )
        else:
            raw_actions = data.get("actions") or []
            if not isinstance(raw_actions, list):
                raise InvalidRequestError(
                    f"request field 'actions' must be a list of {{item_id, action, ts_ms[, surface]}} objects, "
                    f"got {type(raw_actions).__name__}"
                )
            history = ActionHistory.from_actions([_action_from_dict(i, a) for i, a in enumerate(raw_actions)])
        return cls(
            data["user_id"],
            data["candidate_ids"],
            history,
            request_ts_ms=data.get("request_ts_ms"),
            top_k=data.get("top_k"),
            validate=validate,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that from_dict reads back (names, not ids)."""
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "candidate_ids": self.candidate_ids.tolist(),
            "actions": [
                {
                    "item_id": a.item_id,
                    "action": a.action_name or a.action,
                    "ts_ms": a.ts_ms,
                    "surface": a.surface_name or a.surface,
                }
                for a in self.actions
            ],
            "request_ts_ms": self.request_ts_ms,
        }
        if self.top_k is not None:
            out["top_k"] = self.top_k
        return out

    def to_arrays(self) -> dict[str, IntArray]:
        """The request's tensors keyed by schema name (read-only arrays; top_k only if set)."""
        return dict(self._arrays)

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_ids.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RankRequest):
            return NotImplemented
        mine, theirs = self.to_arrays(), other.to_arrays()
        return mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)

    __hash__ = None  # type: ignore[assignment]  # equality is by content; typeshed types __hash__ as a method

    def __repr__(self) -> str:
        return (
            f"RankRequest(user_id={self.user_id}, candidates={self.num_candidates}, actions={len(self.actions)}, "
            f"request_ts_ms={self.request_ts_ms}, top_k={self.top_k})"
        )


def _check_response_values(ids: np.ndarray, scores: np.ndarray, probs: np.ndarray) -> None:
    # A ranking by NaN is no ranking: better a ServerError the caller can fall
    # back on than a silently arbitrary order.
    if ids.dtype.kind not in "iu" and ids.size:
        raise ServerError(f"malformed response: item_ids has dtype {ids.dtype}, expected integers")
    for name, values in (("scores", scores), ("head_probs", probs)):
        if values.dtype.kind not in "fiu" and values.size:
            raise ServerError(f"malformed response: {name} has dtype {values.dtype}, expected numbers")
        if not np.isfinite(values).all():
            raise ServerError(f"malformed response: {name} holds NaN or infinite values")
    if ((probs < 0) | (probs > 1)).any():
        raise ServerError("malformed response: head_probs holds values outside [0, 1]")


def _action_from_dict(index: int, raw: object) -> Action:
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"actions[{index}] must be an object like {{item_id, action, ts_ms, surface}}")
    unknown = sorted(set(raw) - {"item_id", "action", "ts_ms", "surface"})
    missing = [k for k in ("item_id", "action", "ts_ms") if k not in raw]
    if unknown or missing:
        raise InvalidRequestError(
            f"actions[{index}]: missing {missing}, unknown {unknown}; expected item_id, action, ts_ms[, surface]"
        )
    return Action(raw["item_id"], raw["action"], raw["ts_ms"], raw.get("surface", 0))


@dataclass(frozen=True)
class RankedItem:
    """One ranked candidate: its utility (the sort key) and each head's probability."""

    item_id: int
    utility: float
    head_probs: dict[str, float]


@dataclass(frozen=True)
class RankResponse:
    """The ranked items, best first, and where/how fast they came from.

    `latency_ms` is the wall time of the inference call(s), retries included,
    excluding request building and response parsing. `url` is the server that
    answered and `attempts` how many tries it took (1 = no retry), which is
    what you want in a log line when a fleet misbehaves.
    """

    items: list[RankedItem]
    model_name: str
    model_version: str
    latency_ms: float
    url: str = ""
    attempts: int = 1

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, ArrayLike | None],
        *,
        model_name: str = schema.ENSEMBLE_MODEL,
        model_version: str = "",
        latency_ms: float = 0.0,
        url: str = "",
        attempts: int = 1,
    ) -> RankResponse:
        """Parse the ensemble's output tensors; raises ServerError if they break the contract."""
        missing = [name for name in _OUTPUT_SPECS if arrays.get(name) is None]
        if missing:
            raise ServerError(f"malformed response: missing output(s) {missing}")
        ids, scores, probs = (np.asarray(arrays[name]) for name in ("item_ids", "scores", "head_probs"))
        k = ids.shape[0] if ids.ndim == 1 else -1
        if k < 0 or scores.shape != (k,) or probs.shape != (k, schema.NUM_HEADS):
            raise ServerError(
                "malformed response: expected item_ids [K], scores [K], head_probs "
                f"[K, {schema.NUM_HEADS}], got {ids.shape}, {scores.shape}, {probs.shape}"
            )
        _check_response_values(ids, scores, probs)
        items = [
            RankedItem(item, utility, dict(zip(schema.HEADS, row)))
            for item, utility, row in zip(
                ids.astype(np.int64).tolist(), scores.astype(np.float64).tolist(), probs.astype(np.float64).tolist()
            )
        ]
        return cls(items, model_name, model_version, float(latency_ms), url, int(attempts))

    @property
    def item_ids(self) -> list[int]:
        return [item.item_id for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RankedItem]:
        return iter(self.items)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `pinrank-client rank --json` prints)."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "latency_ms": round(self.latency_ms, 3),
            "url": self.url,
            "attempts": self.attempts,
            "heads": list(schema.HEADS),
            "items": [
                {
                    "rank": i + 1,
                    "item_id": it.item_id,
                    "utility": _short(it.utility),
                    "head_probs": {h: _short(p) for h, p in it.head_probs.items()},
                }
                for i, it in enumerate(self.items)
            ],
        }


def _short(value: float) -> float:
    # The server computes in float32: print the shortest decimal that maps back
    # to the same float32 (0.1, not 0.10000000149011612).
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class ModelStats:
    """One model version's inference statistics, cumulative since the server started.

    `requests` and `failures` count inference requests that succeeded and
    failed (a step can count more than the ensemble: requests the server
    sends itself, such as warm-up at load, count too); `executions` counts
    model executions, fewer than requests when the server batches them. The
    `*_ms` fields are means per successful request in milliseconds: each
    cumulative time divided by `requests` (0.0 while it is 0). `total_ms` is
    arrival to response. For a step, queue + compute_input + compute_infer +
    compute_output add up to about `total_ms`; for the ensemble they need not
    (Triton's own accounting for ensembles): its steps' rows show where the
    time went. `url` is the server that reported them. Triton records a
    request when it releases it, which can be a moment after its response
    was sent: a read right after a call may not count that call yet.
    """

    model: str
    version: str
    requests: int
    failures: int
    executions: int
    queue_ms: float  # waiting for a model instance (scheduler and batcher queues)
    compute_input_ms: float  # preparing the inputs for the backend (e.g. copying them to the GPU)
    compute_infer_ms: float  # running the model
    compute_output_ms: float  # extracting the outputs from the backend
    total_ms: float
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `pinrank-client stats --json` prints, one per model)."""
        # Rounded to the nanosecond: the server counts no finer.
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _stats_error(url: str, path: str, problem: str) -> ServerError:
    source = f" from {url}" if url else ""
    return ServerError(f"malformed statistics{source}: {path} {problem}")


def _stats_mapping(value: object, path: str, url: str) -> Mapping[str, Any]:
    # gRPC's JSON leaves out what is zero or empty, so a missing object reads as an empty one.
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _stats_error(url, path, f"must be an object, got {type(value).__name__}")
    return value


def _stats_count(value: object, path: str, url: str) -> int:
    """A count or nanosecond total: an int, or (gRPC's JSON renders 64-bit numbers so) a string of digits."""
    if value is None:
        return 0  # left out by gRPC's JSON because it is 0
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _stats_error(url, path, f"must be a non-negative integer, got {value!r}")


def _duration(stats: Mapping[str, Any], key: str, path: str, url: str) -> tuple[int, int]:
    """(count, ns) of one entry of a model's inference_stats ("success", "queue"...)."""
    where = f"{path}.inference_stats.{key}"
    item = _stats_mapping(stats.get(key), where, url)
    return _stats_count(item.get("count"), f"{where}.count", url), _stats_count(item.get("ns"), f"{where}.ns", url)


def _mean_ms(total_ns: int, count: int) -> float:
    return total_ns / count / 1e6 if count else 0.0


def _model_stats(entry: object, path: str, url: str) -> ModelStats:
    model = _stats_mapping(entry, path, url)
    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise _stats_error(url, f"{path}.name", f"must be a model name, got {name!r}")
    version = model.get("version", "")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str):
        raise _stats_error(url, f"{path}.version", f"must be a version string, got {version!r}")
    stats = _stats_mapping(model.get("inference_stats"), f"{path}.inference_stats", url)
    requests, total_ns = _duration(stats, "success", path, url)
    failures, _ = _duration(stats, "fail", path, url)
    # Per successful request (Triton times these phases for successful requests only).
    queue, compute_input, compute_infer, compute_output = (
        _mean_ms(_duration(stats, key, path, url)[1], requests)
        for key in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    return ModelStats(
        model=name,
        version=version,
        requests=requests,
        failures=failures,
        executions=_stats_count(model.get("execution_count"), f"{path}.execution_count", url),
        queue_ms=queue,
        compute_input_ms=compute_input,
        compute_infer_ms=compute_infer,
        compute_output_ms=compute_output,
        total_ms=_mean_ms(total_ns, requests),
        url=url,
    )


def parse_model_stats(data: object, *, url: str = "") -> list[ModelStats]:
    """One ModelStats per model version in Triton's statistics JSON, in the server's order.

    `data` is what tritonclient's get_inference_statistics() returns: HTTP's
    JSON, or gRPC's with as_json=True, where 64-bit numbers are strings and
    zero-valued fields are left out (both are read). `url` names the server
    in the result and in errors. Raises ServerError if `data` is not that shape.
    """
    if not isinstance(data, Mapping):
        raise _stats_error(url, "the response", f"must be an object, got {type(data).__name__}")
    entries = data.get("model_stats", [])
    if not isinstance(entries, list):
        raise _stats_error(url, "model_stats", f"must be a list, got {type(entries).__name__}")
    return [_model_stats(entry, f"model_stats[{i}]", url) for i, entry in enumerate(entries)]
