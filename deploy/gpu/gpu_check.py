"""The GPU check, run from an unpacked GPU bundle (deploy/gpu_bundle.py) on the
machine it was carried to: serve the gpu profile and, beside it, the cpu
profile; check that both rank alike; time both end to end through Triton.

    /opt/torch/.venv/bin/python3 pinrank-gpu-bundle/gpu_check.py            # on the GPU machine
    .venv/bin/python pinrank-gpu-bundle/gpu_check.py --mode cpu             # here: the same path on CPU

1. Servers: both profiles start at once from the bundle (triton_launch.py).
   Each is probed with one request; empty tensors (in the answer, or refused
   by the next ensemble step: "Expected 24, got 0") are the numpy-2 failure
   of the Python-backend stub (ENVIRONMENT.md): it is said plainly and the
   server restarted with the bundle's numpy<2 before the interpreter's own
   (triton_launch.numpy1_prefix). A server that does not start fails the
   check with its log's tail.
2. Parity: the same requests (top_k = N, so every candidate is compared) to
   both; utilities and head probabilities must agree within --tolerance, per
   item and rank by rank (two items within the tolerance may swap places).
   TF32 is off on the GPU (NVIDIA_TF32_OVERRIDE=0, and the export's ALLOW_TF32
   default), so the tolerance is fp32 rounding, not TF32's 1e-3.
3. Latency: every (protocol, N, clients, profile) cell, L actions per request,
   each client a process of its own with its own connection, timed around the
   SDK call (request encoding, the network, Triton, decoding): p50/p90/p99 and
   throughput, with Triton's own per-step times over the cell (the ranker's
   compute is the part the GPU runs). A time budget skips what is left rather
   than overrun the lease.

Writes results/gpu.json (into $OUT when set: the device tool's output folder)
and the server logs beside it; exits 1 when a server fails, parity fails or a
cell only errored. SIGTERM (a time limit) stops the servers and writes what ran.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import json
import multiprocessing as mp
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).resolve().parent
if (HERE / "MANIFEST.json").exists():
    # Run from a bundle: its client packages come first, and its compiled ones
    # (site/cpXY) only on the interpreter they were built for.
    _site = HERE / "site" / f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for _path in reversed([HERE / "python", *([_site] if _site.is_dir() else [])]):
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import triton_launch as tl  # noqa: E402
import tritonclient  # noqa: E402, F401  (results name where it was imported from: the bundle's copy)

from pinrank_client import ModelStats, PinrankError, RankingClient, RankRequest, RankResponse, schema  # noqa: E402
from pinrank_client._triton import build_inputs  # noqa: E402
from pinrank_client.types import RankedItem  # noqa: E402

#: What the check's client imports, in an order that names the missing piece (tritonclient.grpc and .http
#: hide theirs behind "does not include grpc support"); results record where each came from.
CLIENT_MODULES = ("numpy", "ml_dtypes", "typing_extensions", "grpc", "google.protobuf", "gevent", "geventhttpclient",
                  "rapidjson", "pinrank_client", "tritonclient", "tritonclient.grpc", "tritonclient.http")
#: A fixed request time: both profiles see the same feature values.
REQUEST_TS_MS = 1_769_990_400_000
RESULTS_SCHEMA = 1
#: Settings per mode: the GPU run's, and the CPU dry run's (2 cores, seconds not minutes).
DEFAULTS = {
    "gpu": {"candidates": "100,500,1000", "concurrency": "1,8", "requests": 300, "cell_seconds": 5.0,
            "parity_requests": 24, "graph_iters": 200},
    "cpu": {"candidates": "50,200", "concurrency": "1,2", "requests": 12, "cell_seconds": 2.0,
            "parity_requests": 4, "graph_iters": 20},
}


class CheckFailed(RuntimeError):
    pass


def say(message: str) -> None:
    # One write per message: the two servers start on two threads.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    """Item and user ids the repository knows (its preprocess artifacts)."""

    items: np.ndarray
    users: np.ndarray

    @classmethod
    def load(cls, repo: Path) -> Vocab:
        versions = sorted((p for p in (repo / "preprocess").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        artifacts = versions[-1] / "artifacts"
        return cls(np.load(artifacts / "item_ids.npy"), np.load(artifacts / "user_snapshot" / "user_ids.npy"))


def make_requests(vocab: Vocab, n: int, actions: int, count: int, seed: int, top_k: int) -> list[RankRequest]:
    """`count` requests of `n` candidates and `actions` past actions, the same for the same seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        out.append(RankRequest.from_arrays(
            int(rng.choice(vocab.users)) if vocab.users.size else 0,
            rng.choice(vocab.items, size=n, replace=n > vocab.items.size),
            action_item_ids=rng.choice(vocab.items, size=actions),
            action_types=rng.integers(1, schema.NUM_ACTION_IDS, size=actions),
            action_surfaces=rng.integers(0, schema.NUM_SURFACE_IDS, size=actions),
            action_ts_ms=REQUEST_TS_MS - rng.integers(1, 3 * 86_400_000, size=actions),
            request_ts_ms=REQUEST_TS_MS, top_k=min(top_k, n)))
    return out


# --- servers -----------------------------------------------------------------------------------


def output_problem(grpc_url: str, request: RankRequest) -> str | None:
    """None when the ensemble answers `request` with whole outputs; else what
    is wrong. Read raw, not through the SDK, whose own check would name the
    symptom (a malformed response) instead of the cause (empty tensors)."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415 - after the bundle's paths; the probe is the only raw call

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        result = client.infer(schema.ENSEMBLE_MODEL, build_inputs(grpcclient, request.to_arrays()), client_timeout=120)
    except Exception as exc:  # any failure to answer is the problem being reported
        return f"request failed: {exc}"
    finally:
        client.close()
    for spec in schema.RESPONSE_OUTPUTS:
        try:
            arr = result.as_numpy(spec.name)
        except ValueError as exc:  # "cannot reshape array of size 0": data missing under a shape
            return f"output {spec.name} is empty ({exc})"
        if arr is None or arr.size == 0:
            return f"output {spec.name} is empty"
    return None


# How empty stub tensors show: as such at the end of the ensemble, or as the
# next step refusing them ("input byte size mismatch ... Expected 24, got 0").
_EMPTY_TENSOR = re.compile(r"is empty|got 0\b|array of size 0")


def is_numpy2(version: str) -> bool:
    major = version.split(".")[0]
    return major.isdigit() and int(major) >= 2


def numpy2_symptom(problem: str, stub_numpy: str) -> bool:
    """Is `problem` the Python-backend stub's numpy-2 failure (ENVIRONMENT.md)?"""
    return is_numpy2(stub_numpy) and _EMPTY_TENSOR.search(problem) is not None


@dataclass
class Served:
    profile: str
    server: tl.BundledServer
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def numpy1(self) -> bool:
        return self.server.numpy1


def serve(root: Path, profile: str, config_name: str | None, py: tl.PythonInfo, numpy1: str, log_dir: Path,
          env_extra: dict[str, str], timeout_s: float, probe: RankRequest) -> Served:
    """Start `profile` and probe it; with numpy1 'auto' and numpy 2 in the
    interpreter, once more with the bundle's numpy<2 when the first server
    fails to start or answers empty tensors."""
    has_numpy1 = tl.numpy1_dir(root, py.version) is not None
    retry = has_numpy1 and is_numpy2(py.numpy)
    tries = {"auto": [False, True] if retry else [False], "never": [False], "always": [True]}[numpy1]
    attempts: list[dict[str, Any]] = []
    for use in tries:
        server = tl.BundledServer(root, tl.repository_path(root, profile), py,
                                  log_dir / f"tritonserver-{profile}{'-numpy1' if use else ''}.log",
                                  config_name=config_name, numpy1=use, env_extra=env_extra)
        try:
            server.preflight()  # a missing libpython fails every try alike: say so once, now
        except tl.LaunchError as exc:
            raise CheckFailed(f"{profile}: {exc}", attempts) from None
        attempt: dict[str, Any] = {"numpy1": use, "stub_numpy": "bundle " + _numpy1_version(root) if use
                                   else py.numpy, "log": server.log_path.name}
        attempts.append(attempt)
        started = time.monotonic()
        say(f"[{profile}] starting tritonserver (CPython {py.version} stub, numpy {attempt['stub_numpy']}"
            f"{', config ' + config_name if config_name else ''}) ...")
        try:
            server.start(timeout_s)
        except tl.LaunchError as exc:
            attempt["error"] = str(exc)
            say(f"[{profile}] SERVER DID NOT START ({time.monotonic() - started:.0f}s):\n{exc}"
                + (f"\n[{profile}] retrying with the bundle's numpy<2, in case numpy {py.numpy} is the cause"
                   if use is False and len(tries) > 1 else ""))
            continue
        attempt["startup_s"] = round(time.monotonic() - started, 1)
        try:
            problem = output_problem(server.url("grpc"), probe)
        except BaseException:  # the server runs in a session of its own: nothing else would stop it
            server.stop()
            raise
        attempt["probe"] = problem or "ok"
        if problem is None:
            say(f"[{profile}] ready in {attempt['startup_s']}s, outputs whole")
            return Served(profile, server, attempts)
        server.stop()
        if not use and numpy2_symptom(problem, py.numpy):
            attempt["numpy2_empty_outputs"] = True
            say(f"[{profile}] NUMPY 2 PROBLEM: with numpy {py.numpy} the CPython {py.version} stub returns EMPTY "
                f"tensors ({problem})." + (" Retrying with the bundle's numpy<2 first on the stub's path."
                                           if has_numpy1 else " The bundle carries no numpy<2: rebuild with --numpy1."))
        else:
            say(f"[{profile}] served a broken answer: {problem}\n{server.log_tail()}")
    raise CheckFailed(f"{profile}: no attempt served whole answers", attempts)


def _numpy1_version(root: Path) -> str:
    return str((tl.read_manifest(root).get("numpy1") or {}).get("version", "<2"))


def start_servers(results: dict[str, Any], root: Path, py: tl.PythonInfo, config_name: str | None, numpy1: str,
                  log_dir: Path, env_extra: dict[str, str], timeout_s: float, probe: RankRequest) -> dict[str, Served]:
    """Both profiles at once (the startup is most of a GPU run's fixed cost); records them in results["servers"].
    Waits for both even when one fails, so that no started server is left running."""
    servers: dict[str, Served] = {}
    failed: dict[str, dict[str, Any]] = {}
    profiles = {"gpu": config_name, "cpu": None}
    with concurrent.futures.ThreadPoolExecutor(len(profiles)) as starter:
        futures = {p: starter.submit(serve, root, p, c, py, numpy1, log_dir, env_extra, timeout_s, probe)
                   for p, c in profiles.items()}
        for profile, future in futures.items():
            try:
                servers[profile] = future.result()
            except CheckFailed as exc:
                failed[profile] = {"error": exc.args[0], "attempts": exc.args[1]}
            except Exception as exc:  # anything else too: the other profile's server must still be stopped
                failed[profile] = {"error": f"{profile}: {type(exc).__name__}: {exc}", "attempts": []}
    results["servers"] = {**{p: {"repository": f"repository/{p}", "config_name": s.server.config_name,
                                 "numpy1": s.numpy1, "attempts": s.attempts} for p, s in servers.items()}, **failed}
    if failed:
        for served in servers.values():
            served.server.stop()
        raise CheckFailed("; ".join(f["error"] for f in failed.values()))
    return servers


def connect(server: tl.BundledServer, protocol: str = "grpc") -> RankingClient:
    """An SDK client that never retries: here a failure is a result."""
    return RankingClient(server.url(protocol), protocol=protocol, timeout_s=60, retries=0)


# --- parity ------------------------------------------------------------------------------------


def compare(a: RankResponse, b: RankResponse, tol: float) -> dict[str, Any]:
    """How far two rankings of the same request are apart: per item (ids may
    repeat, and then score alike) and rank by rank."""
    problems = []
    if len(a.items) != len(b.items):
        problems.append(f"{len(a.items)} items vs {len(b.items)}")
    by_a = {it.item_id: it for it in a.items}
    by_b = {it.item_id: it for it in b.items}
    if by_a.keys() != by_b.keys():
        problems.append(f"different items: {sorted(by_a.keys() ^ by_b.keys())[:5]}")
    common = by_a.keys() & by_b.keys()
    utility = max((abs(by_a[i].utility - by_b[i].utility) for i in common), default=0.0)
    probs = max((abs(by_a[i].head_probs[h] - by_b[i].head_probs[h]) for i in common for h in schema.HEADS),
                default=0.0)
    by_rank = max((abs(x.utility - y.utility) for x, y in zip(a.items, b.items)), default=0.0)
    swaps = sum(x.item_id != y.item_id for x, y in zip(a.items, b.items))
    for name, value in (("utility", utility), ("head probability", probs), ("utility at a rank", by_rank)):
        if value > tol:
            problems.append(f"{name} differs by {value:.3g} > {tol:g}")
    return {"max_utility_diff": utility, "max_head_prob_diff": probs, "max_rank_utility_diff": by_rank,
            "near_tie_swaps": swaps, "problems": problems}


def tampered(response: RankResponse, delta: float) -> RankResponse:
    """The response with `delta` added to every utility (--tamper-scores: proves the comparison can fail)."""
    items = [RankedItem(it.item_id, it.utility + delta, it.head_probs) for it in response.items]
    return dataclasses.replace(response, items=items)


def parity(gpu: Served, cpu: Served, requests: list[RankRequest], tol: float, tamper: float) -> dict[str, Any]:
    """Every request through both servers (gRPC), and once over HTTP on the gpu server."""
    rows = []
    with connect(gpu.server) as g, connect(cpu.server) as c, connect(gpu.server, "http") as h:
        for i, req in enumerate(requests):
            ours = g.rank_request(req)
            row = compare(tampered(ours, tamper) if tamper else ours, c.rank_request(req), tol)
            row["candidates"] = req.num_candidates
            if i == 0:  # the protocols must carry the same answer
                over_http = compare(ours, h.rank_request(req), tol)
                row["problems"] += [f"gRPC vs HTTP: {p}" for p in over_http["problems"]]
            rows.append(row)
    failures = [f"request {i} (N={r['candidates']}): {p}" for i, r in enumerate(rows) for p in r["problems"]]
    return {
        "ok": not failures,
        "requests": len(rows),
        "tolerance": tol,
        "tampered_by": tamper or None,
        "max_utility_diff": max(r["max_utility_diff"] for r in rows),
        "max_head_prob_diff": max(r["max_head_prob_diff"] for r in rows),
        "max_rank_utility_diff": max(r["max_rank_utility_diff"] for r in rows),
        "near_tie_swaps": sum(r["near_tie_swaps"] for r in rows),
        "failures": failures[:10],
    }


# --- latency -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    profile: str
    protocol: str
    candidates: int
    clients: int


def _client_worker(index: int, tasks: Any, results: Any, go: Any, deadline: Any, vocab: Vocab,
                   actions: int) -> None:
    """One client process: for each task, warm up, wait for the others, then
    send requests one after another until the count or the shared deadline."""
    clients: dict[tuple[str, str], RankingClient] = {}
    while (task := tasks.get()) is not None:
        url, protocol, n, count = task
        try:
            if (url, protocol) not in clients:
                clients[url, protocol] = RankingClient(url, protocol=protocol, timeout_s=60, retries=0)
            client = clients[url, protocol]
            reqs = make_requests(vocab, n, actions, 16, seed=1000 + index, top_k=10)
            for req in reqs[:3]:
                client.rank_request(req)
        except Exception as exc:  # reported to the parent, which fails the cell; no wait for the start
            results.put((index, "error", f"warm-up: {type(exc).__name__}: {exc}"))
            continue
        results.put((index, "ready", None))
        go.wait()
        ms: list[float] = []
        errors, first_error, t0 = 0, None, time.time()
        while len(ms) + errors < count and time.time() < deadline.value:
            start = time.perf_counter()
            try:
                client.rank_request(reqs[(len(ms) + errors) % len(reqs)])
            except PinrankError as exc:
                errors += 1
                first_error = first_error or str(exc)
                continue
            ms.append((time.perf_counter() - start) * 1000.0)
        results.put((index, "done", (ms, errors, first_error, t0, time.time())))
    for client in clients.values():
        client.close()


class ClientPool:
    """Client processes (spawned: no gRPC state crosses a fork), reused by every cell."""

    def __init__(self, size: int, vocab: Vocab, actions: int) -> None:
        ctx = mp.get_context("spawn")
        self.go, self.deadline, self.results = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(size)]
        self.procs = [ctx.Process(target=_client_worker, daemon=True,
                                  args=(i, q, self.results, self.go, self.deadline, vocab, actions))
                      for i, q in enumerate(self.tasks)]
        for p in self.procs:
            p.start()

    def _collect(self, count: int, what: str, timeout_s: float) -> list[tuple[int, str, Any]]:
        got: list[tuple[int, str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            try:
                got.append(self.results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise CheckFailed(f"client processes gave {len(got)} of {count} {what} in {timeout_s:.0f}s") from None
        return got

    def run(self, url: str, protocol: str, n: int, clients: int, count: int, seconds: float) -> dict[str, Any]:
        """`clients` processes each send up to `count` requests of N=`n` within `seconds`."""
        self.go.clear()
        for q in self.tasks[:clients]:
            q.put((url, protocol, n, count))
        ready = self._collect(clients, "warm-ups", 300)
        warm_errors = [msg for _, kind, msg in ready if kind == "error"]
        # Wall clock: the processes share it, not a monotonic origin. A failed
        # warm-up ends the cell at once, but the others still report.
        self.deadline.value = time.time() + (0.0 if warm_errors else seconds)
        self.go.set()
        done = [d for _, _, d in self._collect(clients - len(warm_errors), "results", seconds + 120)]
        if warm_errors:
            return {"requests": 0, "errors": len(warm_errors), "first_error": warm_errors[0]}
        ms = [x for d in done for x in d[0]]
        wall = max(d[4] for d in done) - min(d[3] for d in done)
        return summarize(ms, sum(d[1] for d in done), next((d[2] for d in done if d[2]), None), wall)

    def close(self, timeout_s: float = 10.0) -> None:
        for q in self.tasks:
            q.put(None)
        deadline = time.monotonic() + timeout_s  # for them all: a stopped run must end soon
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()


def summarize(ms: list[float], errors: int, first_error: str | None, wall_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(ms), "errors": errors}
    if first_error:
        out["first_error"] = first_error
    if ms:
        arr = np.asarray(ms)
        out.update({f"p{q}_ms": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)})
        out.update({"mean_ms": round(float(arr.mean()), 3), "max_ms": round(float(arr.max()), 3),
                    "throughput_rps": round(len(ms) / wall_s, 1) if wall_s > 0 else None})
    return out


#: Per step of the ensemble: where a request's server time went.
STEP_TIMES = ("queue_ms", "compute_infer_ms", "total_ms")


def step_times(before: list[ModelStats], after: list[ModelStats]) -> dict[str, dict[str, float]]:
    """Mean ms per request of each model between two reads of Triton's
    cumulative statistics (the SDK gives means: times count weighs them back)."""
    was = {s.model: s for s in before}
    out = {}
    for now in after:
        old = was.get(now.model)
        n = now.requests - (old.requests if old else 0)
        if n > 0:
            out[now.model] = {"requests": n, **{k: round((getattr(now, k) * now.requests - (
                getattr(old, k) * old.requests if old else 0.0)) / n, 3) for k in STEP_TIMES}}
    return out


def measure(pool: ClientPool, servers: dict[str, Served], cells: list[Cell], count_1: int, count_n: int,
            seconds: float, budget_end: float, rows: list[dict[str, Any]]) -> None:
    """Each cell in order into `rows` (kept should the run be stopped), with
    its server-side step times; those the time budget cannot hold are
    recorded as skipped."""
    stats = {p: connect(s.server) for p, s in servers.items()}
    try:
        for cell in cells:
            row: dict[str, Any] = dataclasses.asdict(cell)
            if time.monotonic() + seconds + 10 > budget_end:
                row["skipped"] = "time budget"
                rows.append(row)
                continue
            server = servers[cell.profile].server
            url = server.url(cell.protocol)
            before = stats[cell.profile].stats()
            row.update(pool.run(url, cell.protocol, cell.candidates, cell.clients,
                                count_1 if cell.clients == 1 else count_n, seconds))
            row["steps"] = step_times(before, stats[cell.profile].stats())
            rows.append(row)
            say(format_row(row))
    finally:
        for client in stats.values():
            client.close()


TABLE_HEAD = f"{'profile':<8}{'proto':<6}{'N':>6}{'clients':>8}{'reqs':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}" \
             f"{'p99 ms':>9}{'req/s':>9}{'ranker ms':>11}"


def format_row(row: dict[str, Any]) -> str:
    def num(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.2f}" if key.endswith("_ms") else f"{value:.0f}"

    head = f"{row['profile']:<8}{row['protocol']:<6}{row['candidates']:>6}{row['clients']:>8}"
    if "skipped" in row:
        return head + f"  skipped ({row['skipped']})"
    ranker = row.get("steps", {}).get("ranker", {}).get("compute_infer_ms")  # the step the GPU runs
    return head + f"{row['requests']:>7}{row['errors']:>5}" + "".join(
        f"{num(k):>9}" for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_rps")) + (
        f"{ranker:>11.2f}" if ranker is not None else f"{'-':>11}")


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gpu beside cpu per (protocol, N, clients): p50 and p99, and how many times faster."""
    cells = {(r["profile"], r["protocol"], r["candidates"], r["clients"]): r for r in rows if r.get("p50_ms")}
    out = []
    for (profile, proto, n, c), gpu in cells.items():
        cpu = cells.get(("cpu", proto, n, c))
        if profile != "gpu" or cpu is None:
            continue
        out.append({"protocol": proto, "candidates": n, "clients": c,
                    **{f"{k}_{p}": r[k] for p, r in (("gpu", gpu), ("cpu", cpu)) for k in ("p50_ms", "p99_ms")},
                    "p50_speedup": round(cpu["p50_ms"] / gpu["p50_ms"], 2)})
    return out


# --- the machine ---------------------------------------------------------------------------------


def cuda_graphs(root: Path, py: tl.PythonInfo, ns: list[int], iters: int, tol: float) -> dict[str, Any]:
    """Whether CUDA graphs pay for this ranker, measured in-process on the
    machine's torch (cuda_graphs_bench.py) before the servers take the GPU."""
    ranker = tl.repository_path(root, "gpu") / "ranker"
    version = max((p for p in ranker.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    done = subprocess.run([py.executable, str(root / "cuda_graphs_bench.py"), "--version-dir", str(version),
                           "--candidates", ",".join(map(str, ns)), "--iters", str(iters)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr).strip()[-800:]}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    found["parity_ok"] = all(r.get("graphs_max_abs_diff_vs_cpu", 0.0) <= tol for r in found["rows"])
    return found


def graph_row(r: dict[str, Any]) -> str:
    line = f"N={r['candidates']}: cpu p50 {r['cpu']['p50_ms']:.2f} ms"
    if "graphs" not in r:
        return line
    return (f"{line}, eager p50 {r['eager']['p50_ms']:.3f} / p99 {r['eager']['p99_ms']:.3f} ms, graphs p50 "
            f"{r['graphs']['p50_ms']:.3f} / p99 {r['graphs']['p99_ms']:.3f} ms "
            f"(x{r['p50_speedup_graphs_over_eager']}), max |diff| vs cpu {r['graphs_max_abs_diff_vs_cpu']:.1e}")


def _run(cmd: list[str], timeout: float = 60) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def client_problem() -> str | None:
    """Why the client stack does not import here, before any server starts for nothing."""
    for name in CLIENT_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, protobuf's VersionError, tritonclient's RuntimeError alike
            return f"the check's client cannot import {name}: {type(exc).__name__}: {exc}"
    return None


def machine_info(py: tl.PythonInfo, gpu: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(), "cpus": os.cpu_count(), "glibc": os.confstr("CS_GNU_LIBC_VERSION"),
        "check_python": sys.version.split()[0], "stub_python": py.executable, "stub_python_version": py.full_version,
        "stub_numpy": py.numpy, "libpython": py.libpython_path(),
    }
    if shutil.which("nvidia-smi"):
        info["gpu"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if gpu:
        # The torch the ranker will use, asked beforehand: a CUDA mismatch shows here before a model fails to load.
        info["torch"] = _run([py.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda, "
                                                   "torch.cuda.is_available())"], timeout=120)
    return info


def gpu_problem(info: dict[str, Any]) -> str | None:
    """Why the gpu profile cannot run here, if the machine says so before any server starts."""
    if not Path("/dev/nvidiactl").exists() or not info.get("gpu"):
        return "no NVIDIA GPU here (no /dev/nvidiactl or nvidia-smi answer): use --mode cpu"
    torch_info = info.get("torch") or ""
    if not torch_info.endswith("True"):
        return f"{info['stub_python']} has no torch that sees the GPU ({torch_info or 'torch import failed'})"
    return None


def glibc_problem(info: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    need = manifest.get("triton", {}).get("needs", {}).get("GLIBC")
    have = (info.get("glibc") or "").split()[-1:]
    if need and have and tuple(map(int, have[0].split("."))) < tuple(map(int, need.split("."))):
        return f"the bundled tritonserver needs glibc {need}; this machine has {have[0]}"
    return None


# --- the command -------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "results" / "gpu.json" if os.environ.get("OUT") else Path("results/gpu.json")


def auto_config_name(root: Path, mode: str, given: str) -> str | None:
    """gpu mode: the configs as exported; cpu mode: the `cpu` variant where the gpu profile has one."""
    if given != "auto":
        return given or None
    if mode == "gpu":
        return None
    has_variant = any((tl.repository_path(root, "gpu")).glob("*/configs/cpu.pbtxt"))
    return "cpu" if has_variant else None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The unpacked bundle.  [default: this script's folder]")
@click.option("--mode", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="gpu: the gpu profile on the GPU. cpu: the same path on CPU (--model-config-name cpu), small "
                   "counts: a dry run anywhere.")
@click.option("--dry-run", is_flag=True, help="Same as --mode cpu.")
@click.option("--python", "python_exe", default=sys.executable, show_default=True,
              help="The interpreter whose numpy/torch the stub uses (its version picks the stub).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Results JSON.  [default: $OUT/results/gpu.json, else results/gpu.json]")
@click.option("--log-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Server logs.  [default: $OUT/logs, else beside --out]")
@click.option("--candidates", default=None, help="N per request, comma-separated.  [gpu: 100,500,1000; cpu: 50,200]")
@click.option("--actions", type=click.IntRange(0, schema.MAX_REQUEST_ACTIONS), default=schema.REALTIME_SEQ_LEN,
              show_default=True, help="L: past actions per request.")
@click.option("--concurrency", default=None, help="Concurrent clients, comma-separated.  [gpu: 1,8; cpu: 1,2]")
@click.option("--protocols", default="grpc,http", show_default=True)
@click.option("--requests", "count", type=click.IntRange(1), default=None,
              help="Requests per cell with one client; each of C clients sends a third of it (at least 20). "
                   "[gpu: 300; cpu: 12]")
@click.option("--cell-seconds", type=float, default=None, help="Most seconds per cell.  [gpu: 5; cpu: 2]")
@click.option("--parity-requests", type=click.IntRange(1), default=None, help="[gpu: 24; cpu: 4]")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest utility/probability difference between the profiles.")
@click.option("--gpu-config-name", default="auto", show_default=True,
              help="--model-config-name for the gpu profile: auto = none on GPU, `cpu` in cpu mode where the "
                   "profile has that variant; '' = none.")
@click.option("--numpy1", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="The bundle's numpy<2 for the stub: auto = only after a failed start or a broken first answer.")
@click.option("--startup-timeout", type=float, default=240.0, show_default=True)
@click.option("--budget-s", type=float, default=420.0, show_default=True,
              help="Wall-clock budget: latency cells that would end past it are skipped.")
@click.option("--tamper-scores", type=float, default=0.0,
              help="Self-test: add this to every gpu-profile utility before the parity check (it must then fail).")
def main(bundle: Path | None, mode: str, dry_run: bool, python_exe: str, out: Path | None, log_dir: Path | None,
         candidates: str | None, actions: int, concurrency: str | None, protocols: str, count: int | None,
         cell_seconds: float | None, parity_requests: int | None, tolerance: float, gpu_config_name: str,
         numpy1: str, startup_timeout: float, budget_s: float, tamper_scores: float) -> None:
    """Serve the bundle's gpu and cpu profiles, check they rank alike, time them; write results/gpu.json."""
    # A time limit's SIGTERM ends the check through its finally blocks, which stop the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    mode = "cpu" if dry_run else mode
    began = time.monotonic()
    budget_end = began + budget_s
    d = DEFAULTS[mode]
    ns = _ints(candidates or d["candidates"])
    conc = _ints(concurrency or d["concurrency"])
    count = count or d["requests"]
    seconds = cell_seconds or d["cell_seconds"]
    out = out or default_out()
    log_dir = log_dir or (Path(os.environ["OUT"]) / "logs" if os.environ.get("OUT") else out.parent / "logs")
    results: dict[str, Any] = {"schema": RESULTS_SCHEMA, "mode": mode, "ok": False, "failures": [],
                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    servers: dict[str, Served] = {}
    try:
        root = tl.bundle_root(bundle)
        manifest = tl.read_manifest(root)
        py = tl.probe_python(python_exe)
        config_name = auto_config_name(root, mode, gpu_config_name)
        results["bundle"] = {k: manifest.get(k) for k in ("created", "source_commit", "triton", "stubs", "profiles",
                                                          "client", "numpy1")}
        results["machine"] = info = machine_info(py, mode == "gpu")
        results["settings"] = {"candidates": ns, "actions": actions, "concurrency": conc, "protocols": protocols,
                               "requests": count, "cell_seconds": seconds, "tolerance": tolerance,
                               "gpu_config_name": config_name, "numpy1": numpy1, "tf32": False}
        say(f"bundle {root} (built {manifest.get('created')} from {manifest.get('source_commit')}); mode {mode}; "
            f"stub CPython {py.version} with numpy {py.numpy}; {info['cpus']} CPUs; GPU: {info.get('gpu')}")
        for problem in (client_problem(), glibc_problem(info, manifest), gpu_problem(info) if mode == "gpu" else None):
            if problem:
                raise CheckFailed(problem)
        say(f"CUDA graphs, in-process: eager vs one graph per candidate bucket, N = {ns}")
        results["cuda_graphs"] = graphs = cuda_graphs(root, py, ns, d["graph_iters"], tolerance)
        if "error" in graphs:
            say(f"  the graphs benchmark failed (the served check goes on):\n{graphs['error']}")
        else:
            say(f"  graphs: {graphs['graphs']}" + "".join(f"\n  {graph_row(r)}" for r in graphs["rows"]))
            if not graphs["parity_ok"]:
                results["failures"].append(f"CUDA graph scores differ from the CPU's by more than {tolerance:g}")
        vocab = Vocab.load(tl.repository_path(root, "gpu"))
        probe = make_requests(vocab, 16, 10, 1, seed=7, top_k=16)[0]
        env_extra = {"NVIDIA_TF32_OVERRIDE": "0"}  # cuBLAS/cuDNN: no TF32 whatever a model asks
        servers.update(start_servers(results, root, py, config_name, numpy1, log_dir, env_extra, startup_timeout,
                                     probe))
        results["numpy2_empty_outputs"] = any(a.get("numpy2_empty_outputs") for s in servers.values()
                                              for a in s.attempts)

        say(f"parity: {parity_requests or d['parity_requests']} requests, top_k = N, tolerance {tolerance:g}")
        reqs = [r for i in range(parity_requests or d["parity_requests"])
                for r in make_requests(vocab, ns[i % len(ns)], actions, 1, seed=100 + i, top_k=ns[i % len(ns)])]
        results["parity"] = par = parity(servers["gpu"], servers["cpu"], reqs, tolerance, tamper_scores)
        say(f"parity {'OK' if par['ok'] else 'FAILED'}: max utility diff {par['max_utility_diff']:.2e}, max head "
            f"probability diff {par['max_head_prob_diff']:.2e}, {par['near_tie_swaps']} near-tie swap(s)"
            + "".join(f"\n  {f}" for f in par["failures"]))
        if not par["ok"]:
            results["failures"].append("parity")

        cells = [Cell(p, proto, n, c) for proto in protocols.split(",") for n in ns for c in conc
                 for p in ("gpu", "cpu")]
        say(f"latency: {len(cells)} cells, L = {actions}, up to {seconds:g}s each\n{TABLE_HEAD}")
        pool = ClientPool(max(conc), vocab, actions)
        try:
            results["latency"] = rows = []
            measure(pool, servers, cells, count, max(20, count // 3), seconds, budget_end, rows)
        finally:
            pool.close()
        results["comparison"] = comp = comparison(rows)
        say("\ngpu vs cpu profile, p50 (p99) ms:\n" + "\n".join(
            f"  {c['protocol']:<5} N={c['candidates']:<5} clients={c['clients']:<3} gpu {c['p50_ms_gpu']:.2f} "
            f"({c['p99_ms_gpu']:.2f})  cpu {c['p50_ms_cpu']:.2f} ({c['p99_ms_cpu']:.2f})  x{c['p50_speedup']}"
            for c in comp))
        broken = [r for r in rows if "skipped" not in r and r["requests"] == 0]
        if broken:
            results["failures"].append(f"{len(broken)} latency cell(s) answered nothing: "
                                       f"{broken[0].get('first_error')}")
        if all("skipped" in r for r in rows):
            results["failures"].append("every latency cell was skipped (time budget)")
        gpu_nvsmi = _run(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader"]) \
            if shutil.which("nvidia-smi") else None
        results["machine"]["gpu_after"] = gpu_nvsmi
    except (CheckFailed, tl.LaunchError) as exc:
        results["failures"].append(str(exc.args[0]))
        say(f"CHECK FAILED: {exc.args[0]}")
    except Exception as exc:  # still write what was learnt before the failure
        results["failures"].append(f"{type(exc).__name__}: {exc}")
        say(traceback.format_exc())
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM (a time limit) or Ctrl-C: what ran is kept
        results["failures"].append(f"stopped before the end ({type(exc).__name__} {getattr(exc, 'code', '')})")
        say("CHECK STOPPED before the end: writing what ran")
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        for served in servers.values():
            served.server.stop()
        # Where the client's packages came from: the bundle's, or the machine's.
        results["packages"] = {m: getattr(sys.modules[m], "__file__", None) for m in CLIENT_MODULES
                               if m in sys.modules and not m.startswith("tritonclient.")}
        results["ok"] = not results["failures"]
        results["seconds"] = round(time.monotonic() - began, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        say(f"{'OK' if results['ok'] else 'FAILED'} in {results['seconds']}s; results in {out}; logs in {log_dir}")
    if not results["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
