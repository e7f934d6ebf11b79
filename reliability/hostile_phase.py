"""`make reliability`'s hostile-input phase: the requests that crash or bloat
Triton 2.51 (reliability.hostile) sent to `pinrank serve` as users
run it (a subprocess: supervisor, health view, stub watchdog), under steady
valid load through the SDK with its retries on.

What it measures (issue 16, "Prove it"):
- server_crashes_contained: crash requests after which the service was
  ready again (of crash_requests sent);
- valid_failures_during_crashes: valid SDK calls that failed (retries spent);
- crash_recovery_s: per crash request, seconds until a valid call succeeded again;
- stub_processes_leaked / rss_growth_after_reloads_pct: after forced reloads
  of every Python-backend model (the stub watchdog's repair), processes and
  RSS of the server tree against before;
- step_model_bad_inputs_rejected: bad inputs sent straight to the step
  models that got a 400 naming the input.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from pinrank.backend import schema
from pinrank.backend.ranker_runtime import manifest_num_items
from pinrank.serving import health, model_control
from reliability import faults, hostile
from reliability.step_models import (
    bad_postprocess_inputs,
    bad_ranker_feeds,
    infer_binary,
)
from testkit.serve_process import ServeProcess

#: Valid calls: short timeouts and enough retries to span a server restart.
LOAD_TIMEOUT_S = 5.0
LOAD_RETRIES = 4


@dataclass(frozen=True)
class CrashRequest:
    row: int
    name: str
    send: Callable[[ServeProcess, Path], str]


def _post(body: Callable[[Path], bytes]) -> Callable[[ServeProcess, Path], str]:
    return lambda serve, cache: hostile.send_http("127.0.0.1", serve.ports[0], body(cache))


def _post_binary(serve: ServeProcess, _cache: Path) -> str:
    body, headers = hostile.wrapped_shape_binary()
    return hostile.send_http("127.0.0.1", serve.ports[0], body, headers=headers)


def crash_requests() -> list[CrashRequest]:
    """Rows 1-4: each takes the server, or a stub, down in Triton 2.51."""
    return [
        CrashRequest(1, "shape [2**40] in a 95-byte JSON body", _post(lambda _c: hostile.huge_shape_json())),
        CrashRequest(2, "JSON nested 100,000 levels", _post(lambda _c: hostile.deep_json())),
        CrashRequest(3, "2 MB gzip body inflating to 2 GiB",
                     lambda serve, cache: hostile.send_http("127.0.0.1", serve.ports[0], hostile.gzip_bomb(
                         cache_dir=cache), headers={"Content-Encoding": "gzip"})),
        CrashRequest(4, "binary tensor, shape x 8 wraps to its 40 bytes (HTTP)", _post_binary),
        CrashRequest(4, "raw tensor, shape x 8 wraps to its 40 bytes (gRPC)",
                     lambda serve, _c: hostile.wrapped_shape_grpc(serve.grpc_url)),
    ]


def _failures_by_case(outcomes: list[faults.Outcome], sent_at: list[float]) -> list[int]:
    """Failed valid calls, each charged to the last crash request sent before it ended."""
    per_case = [0] * len(sent_at)
    for o in outcomes:
        if o.label != "ok":
            before = [i for i, t in enumerate(sent_at) if t <= o.t_end]
            if before:
                per_case[before[-1]] += 1
    return per_case


def _watch_crash(serve: ServeProcess, pid: int, stub_pids: set[int], done: threading.Event,
                 timeout_s: float = 120.0) -> tuple[str, float | None, float | None]:
    """While the hostile request is out: ("server" | "stub" | "none", when the
    server or a stub was seen dead, when the replacement was back), polled every 20 ms."""
    t0 = time.monotonic()
    kind, t_dead = "none", None
    while time.monotonic() - t0 < timeout_s:
        if kind == "none":
            if not health.is_running(pid):
                kind, t_dead = "server", time.monotonic()
            elif any(not health.is_running(p) for p in stub_pids):
                kind, t_dead = "stub", time.monotonic()
            elif done.is_set():
                return kind, None, None
        else:
            now_pid = serve.server_pid()
            if kind == "server" and now_pid not in (None, pid) and serve.ready():
                return kind, t_dead, time.monotonic()
            if kind == "stub":
                now_stubs = {st.pid for st in model_control.stubs(pid)}
                if now_stubs - stub_pids and len(now_stubs) >= len(stub_pids) and serve.ready():
                    return kind, t_dead, time.monotonic()
        time.sleep(0.02)
    return kind, t_dead, None


def crashes(serve: ServeProcess, probes: list[dict], users: int, phase_s: float, cache: Path,
            log: Callable[[str], object] = print) -> dict[str, Any]:
    """Each crash request under load; what the valid calls saw.

    The request is sent from a thread while this one watches the server and
    its stubs: recovery runs from the moment the server (or a stub) was seen
    dead to the end of the first valid call that started after that and
    succeeded; for a stub, no sooner than its replacement is running.
    """
    load = faults.LoadGenerator(serve.http_url, probes, faults.any_answer, users=users, retries=LOAD_RETRIES,
                                timeout_s=LOAD_TIMEOUT_S)
    cases, sent_at = [], []
    with load:
        time.sleep(phase_s)
        for req in crash_requests():
            pid = serve.server_pid()
            if pid is None:
                raise RuntimeError("no tritonserver behind pinrank serve before a crash request")
            stub_pids = {st.pid for st in model_control.stubs(pid)}
            answer: list[str] = []
            done = threading.Event()

            def send(req: CrashRequest = req) -> None:
                try:
                    answer.append(req.send(serve, cache))
                finally:
                    done.set()

            sent_at.append(time.monotonic())
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            kind, t_dead, t_back = _watch_crash(serve, pid, stub_pids, done)
            recovery = None
            if t_dead is not None and t_back is not None:
                faults.wait_for(lambda: faults.first_success_after(load.snapshot(), t_back) is not None,
                                timeout_s=60)
                first = faults.first_success_after(load.snapshot(), t_back)
                recovery = round(t_back - t_dead + first, 3) if first is not None else None
            sender.join(60)
            said = answer[0] if answer else "no answer within 60 s"
            cases.append({"row": req.row, "request": req.name, "answer": said[:200], "crashed": kind,
                          "contained": kind == "none" or recovery is not None, "recovery_s": recovery})
            log(f"  row {req.row}: {req.name}: {said[:60]!r} -> {kind} crash"
                + (f", back in {recovery} s" if kind != "none" else ""))
            time.sleep(phase_s)
    out = load.snapshot()
    counts = faults.count(out)
    for case, failed in zip(cases, _failures_by_case(out, sent_at)):
        case["valid_failures"] = failed
    recoveries = [c["recovery_s"] for c in cases if c["recovery_s"] is not None]
    return {"cases": cases, "crash_requests": len(cases),
            "server_crashes_contained": sum(c["contained"] for c in cases),
            "valid_requests": len(out), "valid_failures_during_crashes": len(out) - counts.get("ok", 0),
            "valid_answers": counts, "crash_recovery_s": max(recoveries) if recoveries else None,
            "crash_recovery_s_each": recoveries}


def _stub_count_and_rss(serve: ServeProcess) -> tuple[int, float]:
    pid = serve.server_pid()
    if pid is None:
        raise RuntimeError("no tritonserver found behind pinrank serve")
    return len(model_control.stubs(pid)), faults.process_tree_rss_mb(pid)


def _settled(serve: ServeProcess, timeout_s: float = 30.0) -> tuple[int, float]:
    """Stub count and RSS once the count held for 3 s: stubs replaced by the
    crash phase (or the reloads) are still exiting for a few seconds."""
    counts: list[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        counts.append(_stub_count_and_rss(serve)[0])
        if len(counts) >= 4 and len(set(counts[-4:])) == 1:
            break
        time.sleep(1.0)
    return _stub_count_and_rss(serve)


def forced_reloads(serve: ServeProcess, repository: Path, count: int,
                   log: Callable[[str], object] = print) -> dict[str, Any]:
    """Reload every Python-backend model `count` times, as the watchdog does;
    stub processes and server-tree RSS before and after (settled)."""
    pid = serve.server_pid()
    models = sorted({s.model for s in model_control.stubs(pid)}) if pid else []
    client = httpclient.InferenceServerClient(serve.http_url, network_timeout=120)
    stubs_before, rss_before = _settled(serve)
    for i in range(count):
        for model in models:
            versions = model_control.loaded_versions(client, (model,), serve.headers)[model]
            config = model_control.pinned_config_json(repository, model, int(versions[-1]), reload_nonce=f"{i}")
            client.load_model(model, headers=serve.headers, config=config)
    faults.wait_for(serve.ready, timeout_s=60)
    # Triton ends the stubs it replaced by itself, but slowly (after 60 quick
    # reloads: 20 stubs at once, 7 at 2 s, 5 from 5 s on): give it 30 s to get
    # back to the count before; what is still there then has leaked.
    faults.wait_for(lambda: _stub_count_and_rss(serve)[0] <= stubs_before, timeout_s=30, every_s=0.5)
    stubs_after, rss_after = _settled(serve)
    client.close()
    growth = (rss_after - rss_before) / rss_before * 100
    log(f"  {count} reloads of {models}: stubs {stubs_before} -> {stubs_after}, "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB ({growth:+.1f}%)")
    return {"reloads": count, "models": models, "stubs_before": stubs_before, "stubs_after": stubs_after,
            "stub_processes_leaked": max(0, stubs_after - stubs_before), "rss_mb_before": round(rss_before, 1),
            "rss_mb_after": round(rss_after, 1), "rss_growth_after_reloads_pct": round(growth, 2)}


def _infer_error(http_url: str, model: str, arrays: dict[str, np.ndarray]) -> str | None:
    """The refusal's "[status] message", or None when the step model served it."""
    try:
        infer_binary(http_url, model, arrays)
    except InferenceServerException as exc:
        return f"[{exc.status()}] {exc.message()}"
    return None


def step_model_inputs(serve: ServeProcess, num_items: int) -> dict[str, Any]:
    """Row 6: bad inputs straight to the step models; rejected = a 400 naming the input."""
    cases = [(schema.RANKER_MODEL, *c) for c in bad_ranker_feeds(num_items)]
    cases += [(schema.POSTPROCESS_MODEL, *c) for c in bad_postprocess_inputs()]
    unclear = []
    for model, name, arrays, expected in cases:
        error = _infer_error(serve.http_url, model, arrays)
        if error is None or not error.startswith("[400]") or expected not in error:
            unclear.append(f"{model}: {name}: {error}")
    return {"step_model_bad_inputs": len(cases), "step_model_bad_inputs_rejected": len(cases) - len(unclear),
            "step_model_unclear": unclear}


@contextlib.contextmanager
def serving(repository: Path, workdir: Path) -> Iterator[ServeProcess]:
    with ServeProcess(repository, workdir) as serve:
        yield serve


def run(repository: Path, workdir: Path, probes: list[dict], users: int, phase_s: float, reloads: int,
        log: Callable[[str], object] = print) -> dict[str, Any]:
    """The whole phase against one `pinrank serve`; the report's keys."""
    cache = workdir / "payloads"
    hostile.gzip_bomb(cache_dir=cache)  # built before the clock starts (about 5 s)
    with serving(repository, workdir / "serve") as serve:
        log("hostile requests under load (pinrank serve, supervised) ...")
        crash = crashes(serve, probes, users, phase_s, cache, log)
        log(f"  valid failures by request: {[c['valid_failures'] for c in crash['cases']]}")
        log(f"  contained {crash['server_crashes_contained']}/{crash['crash_requests']}, valid failures "
            f"{crash['valid_failures_during_crashes']} of {crash['valid_requests']}, "
            f"slowest recovery {crash['crash_recovery_s']} s")
        log("step models called directly with bad inputs ...")
        steps = step_model_inputs(serve, manifest_num_items(repository / schema.RANKER_MODEL / "1"))
        log(f"  {steps['step_model_bad_inputs_rejected']}/{steps['step_model_bad_inputs']} rejected clearly")
        log(f"forced reloads x{reloads} ...")
        reload = forced_reloads(serve, repository, reloads, log)
        ready = serve.ready()
    return {**{k: v for k, v in crash.items() if k != "cases"}, "crash_cases": crash["cases"], **steps,
            "stub_processes_leaked": reload["stub_processes_leaked"],
            "rss_growth_after_reloads_pct": reload["rss_growth_after_reloads_pct"], "reloads": reload,
            "ready_after_hostile": ready}
