"""The load test's verdict, one rule for `run_loadtest.py` and a plain
`locust -f loadtest/locustfile.py` run: a run that sent nothing, or whose
calls all failed, fails whatever the thresholds; then the optional p99 and
failure-ratio gates. Every exception a call raised counts as a failure."""

from __future__ import annotations

import math
import os

#: Environment variables a plain locust run reads its gates from (run_loadtest passes its options down).
MAX_P99_ENV, MAX_FAILURE_RATIO_ENV = "PINRANK_MAX_P99_MS", "PINRANK_MAX_FAILURE_RATIO"


def violations(requests: int, failures: int, p99_ms: float, *, max_p99_ms: float | None = None,
               max_failure_ratio: float | None = None) -> list[str]:
    """Why the run fails its gate (empty: it passes)."""
    if requests == 0:
        return ["no request was sent (did every user fail to start?)"]
    if failures >= requests:
        return [f"no request succeeded ({failures}/{requests} failed)"]
    out = []
    if max_p99_ms is not None and not (not math.isnan(p99_ms) and p99_ms <= max_p99_ms):
        out.append(f"p99 {p99_ms:.1f} ms > {max_p99_ms:g} ms")
    ratio = failures / requests
    if max_failure_ratio is not None and not ratio <= max_failure_ratio:
        out.append(f"failure ratio {ratio:.4f} ({failures}/{requests}) > {max_failure_ratio:g}")
    return out


def gates_from_env(environ: dict[str, str] | None = None) -> dict[str, float | None]:
    """The optional gates from the environment; ValueError naming a malformed one."""
    env = os.environ if environ is None else environ
    out: dict[str, float | None] = {}
    for key, name in ((MAX_P99_ENV, "max_p99_ms"), (MAX_FAILURE_RATIO_ENV, "max_failure_ratio")):
        raw = env.get(key)
        try:
            out[name] = float(raw) if raw not in (None, "") else None
        except ValueError:
            raise ValueError(f"{key}={raw!r} is not a number") from None
    return out
