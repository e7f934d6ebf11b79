"""The matrix: every case in run order, the runner that judges each one and
checks the server after it, and the command line
(`python -m reliability.bad_inputs`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

from pinrank.serving.tritonserver import running_server
from reliability.bad_inputs.case import SURFACES, Case, Context, Outcome
from reliability.bad_inputs.checkpoint_cases import checkpoint_cases
from reliability.bad_inputs.client_cli_cases import client_cli_cases
from reliability.bad_inputs.config_cases import config_cases
from reliability.bad_inputs.fixtures import Fixtures
from reliability.bad_inputs.helpers import short_message
from reliability.bad_inputs.importer_cases import importer_cases
from reliability.bad_inputs.pinrank_cli_cases import pinrank_cli_cases
from reliability.bad_inputs.raw_cases import grpc_bytes_cases, http_body_cases, raw_cases
from reliability.bad_inputs.sdk_cases import sdk_cases


def cases() -> list[Case]:
    """Every case, in run order (fast server-facing ones first)."""
    out = [
        *raw_cases("grpc"), *grpc_bytes_cases(), *raw_cases("http"), *http_body_cases(),
        *sdk_cases(), *client_cli_cases(), *pinrank_cli_cases(), *importer_cases(), *config_cases(),
        *checkpoint_cases(),
    ]
    ids = [c.id for c in out]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert all(c.surface in SURFACES for c in out)
    return out


def server_ready(http_url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_case(case: Case, ctx: Context) -> dict[str, Any]:
    """One case's row: what it answered, whether that is clear, the server after it."""
    t0 = time.perf_counter()
    try:
        outcome = case.perform(ctx)
    except Exception as exc:  # an unanticipated failure is, by definition, not a clear answer
        outcome = Outcome(error=f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    seconds = time.perf_counter() - t0
    clear = case.judge(outcome)
    return {
        "id": case.id,
        "surface": case.surface,
        "problem": case.problem,
        "expected": "served correctly" if case.served else list(case.expect),
        "answer": "served" if outcome.served and outcome.error is None else "error",
        "message": short_message(outcome.error or outcome.problem or "served as expected"),
        "clear_error": clear,
        "server_ready_after": server_ready(ctx.http_url),
        "seconds": round(seconds, 3),
    }


def run_matrix(http_url: str, grpc_url: str, workdir: str | Path,
               only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every case (or those whose id is in `only`) against a live pinrank
    server (host:port URLs) and return counts plus one row per case."""
    ctx = Context(http_url.removeprefix("http://"), grpc_url.removeprefix("grpc://"), Path(workdir))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    selected = [c for c in cases() if only is None or c.id in only]
    if not server_ready(ctx.http_url):
        raise RuntimeError(f"the server at {ctx.http_url} is not ready before the first case")
    t0 = time.perf_counter()
    with _quiet_env():
        rows = [run_case(case, ctx) for case in selected]
    by_surface: dict[str, dict[str, int]] = {}
    for row in rows:
        s = by_surface.setdefault(row["surface"], {"total": 0, "clear_error": 0})
        s["total"] += 1
        s["clear_error"] += int(row["clear_error"])
    return {
        "bad_inputs_total": len(rows),
        "bad_inputs_clear_error": sum(r["clear_error"] for r in rows),
        "server_ready_after_all": bool(rows) and all(r["server_ready_after"] for r in rows),
        "by_surface": by_surface,
        "unclear": [r["id"] for r in rows if not r["clear_error"]],
        "seconds": round(time.perf_counter() - t0, 2),
        "cases": rows,
    }


@contextlib.contextmanager
def _quiet_env() -> Iterator[None]:
    """Cases must not pick up (or leak) an operator's admin key or client URL."""
    saved = {k: os.environ.pop(k) for k in ("PINRANK_ADMIN_KEY", "PINRANK_URL") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def run_with_server(workdir: str | Path, repository: str | Path | None = None,
                    log_path: str | Path | None = None) -> dict[str, Any]:
    """Serve `repository` (default: an untrained export built in `workdir`)
    on free localhost ports and run the matrix against it."""
    workdir = Path(workdir)
    repo = Path(repository) if repository is not None else Fixtures(workdir / "fixtures").repository
    log = Path(log_path) if log_path is not None else workdir / "tritonserver.log"
    with _quiet_env(), running_server(repo, log_path=log) as server:
        result = run_matrix(server.http_url, server.grpc_url, workdir)
        result["server_ready_after_all"] = result["server_ready_after_all"] and server.is_ready()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """python -m reliability.bad_inputs [--http-url H:P --grpc-url H:P] [--out FILE]"""
    # Named explicitly: run with -m, argparse would call the program "__main__.py".
    ap = argparse.ArgumentParser(prog="python -m reliability.bad_inputs",
                                 description="Run the bad-input matrix against a pinrank server.")
    ap.add_argument("--http-url", help="host:port of a running server's HTTP endpoint (else one is started)")
    ap.add_argument("--grpc-url", help="host:port of its gRPC endpoint")
    ap.add_argument("--repository", type=Path, help="repository to serve when no URLs are given")
    ap.add_argument("--workdir", type=Path, default=Path("artifacts/reliability"))
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args(argv)
    if bool(args.http_url) != bool(args.grpc_url):
        ap.error("give both --http-url and --grpc-url, or neither")
    if args.http_url:
        result = run_matrix(args.http_url, args.grpc_url, args.workdir)
    else:
        result = run_with_server(args.workdir, args.repository)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    for row in result["cases"]:
        mark = "ok " if row["clear_error"] and row["server_ready_after"] else "BAD"
        print(f"{mark} {row['surface']:<12} {row['id']:<44} {row['message'][:100]}")
    print(f"{result['bad_inputs_clear_error']}/{result['bad_inputs_total']} clear, server ready after all: "
          f"{result['server_ready_after_all']} ({result['seconds']} s)")
    ok = result["bad_inputs_clear_error"] == result["bad_inputs_total"] and result["server_ready_after_all"]
    return 0 if ok else 1
