"""SDK cases: RankingClient misuse its own validation must name, requests
only the server can reject (validate=False), and legitimate cold-start and
duplicate-candidate traffic it must serve."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_HOUR
from pinrank_client import Action, PinrankError, RankingClient
from reliability.bad_inputs.case import REQ_TS, Case, Context, Outcome
from reliability.bad_inputs.helpers import TIMEOUT_S, closed_port, raises, served_outcome


def _sdk(ctx: Context, protocol: str = "grpc", **kw: Any) -> Any:
    url = f"grpc://{ctx.grpc_url}" if protocol == "grpc" else f"http://{ctx.http_url}"
    return RankingClient(url, timeout_s=TIMEOUT_S, retries=0, **kw)


def _sdk_rank(protocol: str = "grpc", *, validate: bool = True, **request: Any) -> Callable[[Context], None]:
    def call(ctx: Context) -> None:
        args: dict[str, Any] = {"user_id": 1, "candidate_ids": [7, 14, 21], "actions": [], "top_k": 2,
                                "request_ts_ms": REQ_TS}
        args.update(request)
        with _sdk(ctx, protocol, validate=validate) as client:
            client.rank(**args)

    return call


def _action(*args: Any) -> Any:
    return Action(*args)


def _sdk_served(protocol: str, candidates: list[int], user_id: int, k: int) -> Callable[[Context], Outcome]:
    def perform(ctx: Context) -> Outcome:
        try:
            with _sdk(ctx, protocol) as client:
                resp = client.rank(user_id, candidates, [_action(candidates[0], "click", REQ_TS - MS_PER_HOUR)],
                                   top_k=k, request_ts_ms=REQ_TS)
        except PinrankError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}")
        out = {"item_ids": np.asarray(resp.item_ids, np.int64),
               "scores": np.asarray([i.utility for i in resp], np.float32),
               "head_probs": np.asarray([[i.head_probs[h] for h in schema.HEADS] for i in resp], np.float32)
               .reshape(-1, schema.NUM_HEADS)}
        return served_outcome(out, candidates, min(k, len(set(candidates))))

    return perform


def _sdk_list_models_without_key(ctx: Context) -> None:
    with _sdk(ctx, "grpc") as client:
        client.list_models()


def sdk_cases() -> list[Case]:
    err = (PinrankError, ValueError)
    over = list(range(1, schema.MAX_CANDIDATES + 2))
    return [
        Case("sdk_empty_candidates", "sdk", "empty candidate list",
             raises(_sdk_rank(candidate_ids=[]), *err), ("candidate_ids is empty",)),
        Case("sdk_too_many_candidates", "sdk", f"{len(over)} candidates (> MAX_CANDIDATES)",
             raises(_sdk_rank(candidate_ids=over), *err), ("too many candidates", str(schema.MAX_CANDIDATES))),
        Case("sdk_float_candidate_ids", "sdk", "float candidate ids",
             raises(_sdk_rank(candidate_ids=[1.5, 2.0]), *err), ("candidate_ids", "integers")),
        Case("sdk_2d_candidate_ids", "sdk", "candidate ids as a 2-D array",
             raises(_sdk_rank(candidate_ids=[[7, 14]]), *err), ("candidate_ids", "1-D")),
        Case("sdk_unknown_action_type", "sdk", "action type 'like' is not in the schema",
             raises(lambda ctx: _sdk_rank(actions=[_action(7, "like", REQ_TS - MS_PER_HOUR)])(ctx), *err),
             ("unknown action", "'like'")),
        Case("sdk_negative_action_ts", "sdk", "negative action timestamp",
             raises(lambda ctx: _sdk_rank(actions=[_action(7, "save", -5)])(ctx), *err),
             ("action_ts_ms", "too small")),
        Case("sdk_far_future_action", "sdk", "an action a day after the request",
             raises(lambda ctx: _sdk_rank(actions=[_action(7, "save", REQ_TS + 24 * MS_PER_HOUR)])(ctx), *err),
             ("action_ts_ms", "after request_ts_ms")),
        Case("sdk_far_future_request_ts", "sdk", "request_ts_ms in microseconds (far future)",
             raises(_sdk_rank(request_ts_ms=REQ_TS * 1000), *err), ("request_ts_ms", "plausible")),
        Case("sdk_negative_user_id", "sdk", "negative user id",
             raises(_sdk_rank(user_id=-1), *err), ("user_id", "non-negative")),
        Case("sdk_top_k_zero", "sdk", "top_k = 0",
             raises(_sdk_rank(top_k=0), *err), ("top_k", ">= 1")),
        Case("sdk_bad_url_scheme", "sdk", "ftp:// server URL",
             raises(lambda ctx: _sdk_url(ctx, "ftp://127.0.0.1:1"), *err), ("unsupported url scheme", "ftp")),
        Case("sdk_bad_timeout", "sdk", "timeout_s = 0",
             raises(_sdk_timeout, *err),
             ("timeout_s", "> 0")),
        Case("sdk_unreachable_server", "sdk", "nothing listens at the URL",
             raises(_sdk_unreachable, *err), ("unavailable",)),
        Case("sdk_server_rejects_unvalidated", "sdk",
             "validate=False, 1001 candidates: the server's own check answers",
             raises(_sdk_rank(validate=False, candidate_ids=over), *err),
             ("InvalidRequestError", "too many candidates")),
        Case("sdk_unknown_ids_served", "sdk", "unknown user and items (cold start): served, not an error",
             _sdk_served("grpc", [10**12 + i for i in range(5)], 10**12, 3), served=True),
        Case("sdk_duplicate_candidates_served_once", "sdk", "duplicated candidates: each item ranked once",
             _sdk_served("http", [7, 7, 14, 21, 14], 1, 5), served=True),
        Case("sdk_model_listing_without_admin_key", "sdk", "repository index without the admin key",
             raises(_sdk_list_models_without_key, *err), ("AccessDeniedError", "restricted", "pinrank-admin-key")),
        # Issue 16 row 9: each must be a PinrankError (not a bare ValueError,
        # OverflowError or transport error) naming the field or the URL problem.
        Case("sdk_top_k_beyond_int64", "sdk", "top_k = 2**63",
             raises(_sdk_rank(top_k=2**63), PinrankError), ("top_k", "int64")),
        Case("sdk_user_id_beyond_int64", "sdk", "user_id = 2**64",
             raises(_sdk_rank(user_id=2**64), PinrankError), ("user_id", "int64")),
        Case("sdk_unicode_digit_action", "sdk", "action type '\u0663' (Arabic-Indic three)",
             raises(lambda ctx: _sdk_rank(actions=[_action(7, "\u0663", REQ_TS - MS_PER_HOUR)])(ctx), PinrankError),
             ("unknown action", "ASCII digits")),
        Case("sdk_superscript_action", "sdk", "action type '\u00b2' (superscript two)",
             raises(lambda ctx: _sdk_rank(actions=[_action(7, "\u00b2", REQ_TS - MS_PER_HOUR)])(ctx), PinrankError),
             ("unknown action",)),
        Case("sdk_nan_timeout", "sdk", "timeout_s = NaN",
             raises(lambda ctx: _sdk_url(ctx, f"grpc://{ctx.grpc_url}", timeout_s=float("nan")), PinrankError),
             ("timeout_s", "finite")),
        Case("sdk_url_with_api_path", "sdk", "http://host:port/v2 (the SDK adds the API path)",
             raises(lambda ctx: _sdk_url(ctx, f"http://{ctx.http_url}/v2"), PinrankError), ("/v2",)),
        Case("sdk_http_at_grpc_port", "sdk", "the HTTP client pointed at the gRPC port",
             raises(_sdk_http_at_grpc_port, PinrankError), ("InvalidArgumentError", "is it a gRPC port")),
    ]


def _sdk_url(ctx: Context, url: str, **kw: Any) -> None:
    RankingClient(url, **kw)


def _sdk_http_at_grpc_port(ctx: Context) -> None:
    with RankingClient(f"http://{ctx.grpc_url}", timeout_s=5, retries=0) as client:
        client.rank(1, [7], [], request_ts_ms=REQ_TS)


def _sdk_timeout(ctx: Context) -> None:
    RankingClient(f"grpc://{ctx.grpc_url}", timeout_s=0)


def _sdk_unreachable(ctx: Context) -> None:
    with RankingClient(f"grpc://127.0.0.1:{closed_port()}", timeout_s=5, retries=0) as client:
        client.rank(1, [7], [], request_ts_ms=REQ_TS)
