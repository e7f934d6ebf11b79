"""`pinrank serve` keeps the real tritonserver up and its health view true.

Each test runs the real CLI (a subprocess) on free ports and hurts the real
server: SIGSEGV under load, the 95-byte request that segfaults Triton 2.51
(issue 16 row 1), a hang (SIGSTOP), a dead Python-backend stub without the
watchdog (row 10), and 20 stub crashes from the binary-tensor request whose
shape x 8 wraps (rows 4-5) under the watchdog.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from pinrank.serving.health import is_running, stub_processes
from pinrank.serving.model_control import pinned_config_json
from pinrank_client import RankingClient
from reliability import hostile
from reliability.faults import process_tree_rss_mb
from testkit.serve_process import ServeProcess

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQUEST = dict(user_id=1, candidate_ids=[3, 1, 2, 5, 8], top_k=2)


@pytest.fixture
def served(pipeline, tmp_path):
    with ServeProcess(pipeline.repository / "cpu", tmp_path / "serve", model_control=None) as serve:
        yield serve


@pytest.fixture
def served_explicit(pipeline, tmp_path):
    with ServeProcess(pipeline.repository / "cpu", tmp_path / "serve") as serve:
        yield serve


class Load:
    """One SDK client (gRPC) calling in a loop with retries generous enough to
    span a restart; every call's outcome is kept."""

    def __init__(self, url: str) -> None:
        self.url, self.outcomes, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # 20 retries capped at 0.5 s wait at least 4.6 s in all (equal jitter),
        # far past a restart even on a loaded CI box; the SDK's defaults
        # (1.2-2.4 s) cover a restart here, with less margin.
        with RankingClient(self.url, protocol="grpc", retries=20, backoff_s=0.1, max_backoff_s=0.5,
                           timeout_s=10) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    client.rank(**REQUEST)
                    self.outcomes.append((t0, time.monotonic(), "ok"))
                except Exception as exc:  # counted: that is the measurement
                    self.outcomes.append((t0, time.monotonic(), f"{type(exc).__name__}: {exc}"))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def _rank_once(served: ServeProcess) -> None:
    with RankingClient(f"127.0.0.1:{served.grpc_port}", protocol="grpc", retries=0) as client:
        assert len(client.rank(**REQUEST).items) == 2


def _post(port: int, body: bytes, headers: dict | None = None) -> int | None:
    """Status of a raw POST to the ensemble, or None when the connection died (the server crashed).
    http.client reads the answer by its length: Triton keeps the connection open after a 500,
    so reading to EOF (hostile.send_http) would wait out its timeout."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", hostile.INFER_PATH, body, headers or {})
        return c.getresponse().status
    except (ConnectionError, TimeoutError, http.client.HTTPException):  # a stub killed mid-request: no answer
        return None
    finally:
        c.close()


def test_a_segfault_under_load_costs_no_call_and_is_back_within_seconds(served):
    with Load(f"127.0.0.1:{served.grpc_port}") as load:
        time.sleep(1.5)
        old = served.server_pid()
        t_kill = time.monotonic()
        os.kill(old, signal.SIGSEGV)
        while is_running(old):
            time.sleep(0.005)
        t_dead = time.monotonic()
        served.new_server_pid(old)
        ready_s = served.wait_ready(timeout_s=30)
        time.sleep(1.5)
    failed = [o for o in load.outcomes if o[2] != "ok"]
    assert not failed, failed[:3]
    # the first call sent once the server was dead, answered: the gap a client sees
    first_ok_after = min(end for start, end, label in load.outcomes if label == "ok" and start > t_dead) - t_kill
    print(f"calls {len(load.outcomes)}, failed 0, server dead {t_dead - t_kill:.3f} s after SIGSEGV, first answer "
          f"{first_ok_after:.2f} s after it, /ready 200 again {ready_s:.2f} s after the new pid appeared")
    # The target is 2 s (about 1 s measured here, docs/reliability.md); the bound leaves room for a
    # loaded CI box, and still fails a supervisor that waits for backoff or a slow start.
    assert first_ok_after < 4.0
    log = served.log_text()
    assert f"tritonserver (pid {old}) killed by SIGSEGV (signal 11); restarting now" in log
    assert "Signal (11) received" in log  # the crashed server's last log lines come with the cause


def test_the_95_byte_huge_shape_request_is_contained(served):
    # Row 1: Triton 2.51 segfaults on a declared shape of 2**40 elements.
    old = served.server_pid()
    body = hostile.huge_shape_json()
    _post(served.http_port, body)
    if served.server_pid() == old and is_running(old):
        pytest.fail("the request no longer crashes Triton: drop the containment note in docs/security.md")
    served.new_server_pid(old)
    served.wait_ready(timeout_s=30)
    _rank_once(served)


def test_a_hung_server_is_restarted(served):
    old = served.server_pid()
    os.kill(old, signal.SIGSTOP)  # alive but answering nothing
    try:
        assert served.wait_ready(503, timeout_s=10) >= 0
        served.new_server_pid(old, timeout_s=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # normally already SIGKILLed by the supervisor
            os.kill(old, signal.SIGCONT)
    served.wait_ready(timeout_s=30)
    _rank_once(served)
    assert f"tritonserver (pid {old}) hung: liveness probe failed 3 times in a row" in served.log_text()


def test_a_dead_stub_makes_ready_503_until_it_is_back(served):
    # Row 10: Triton's own readiness stays 200 while every request to this instance fails.
    pid = served.server_pid()
    victim = next(s for s in stub_processes(pid) if s.model == "preprocess")
    os.kill(victim.pid, signal.SIGKILL)
    served.wait_ready(503, timeout_s=10)
    status, body = served.ready_status()
    assert status == 503 and any(victim.instance in r for r in body["reasons"]), body
    with urllib.request.urlopen(f"http://127.0.0.1:{served.http_port}/v2/health/ready", timeout=5) as r:
        assert r.status == 200  # what Triton alone would have said
    # Without the watchdog (model control none), the supervisor restarts the server.
    served.wait_ready(200, timeout_s=30)
    _rank_once(served)
    assert "not running and no stub watchdog" in served.log_text()


def _stub_pids_for(repository: Path) -> list[int]:
    """Every live stub process on this machine serving a model of `repository`."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[0].endswith("triton_python_backend_stub") and argv[1].startswith(f"{repository}/"):
            if is_running(int(cmdline.parent.name)):
                out.append(int(cmdline.parent.name))
    return out


def _replaced(served: ServeProcess, pid: int, before: set[int], timeout_s: float = 30.0) -> None:
    """Wait until the server `pid` runs a new stub (watchdog reload) or was replaced (recycle)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        now = served.server_pid()
        if now not in (None, pid) or {s.pid for s in stub_processes(pid)} - before:
            return
        time.sleep(0.05)
    raise AssertionError(f"no stub was replaced:\n{served.log_text(3000)}")


def test_twenty_stub_crashes_leak_no_process_and_bounded_memory(pipeline, served_explicit):
    # Rows 4-5: each wrapping binary request kills a preprocess stub; the
    # watchdog reloads the model and ends the stubs it replaced, and the
    # server is recycled every 5 reloads (Triton keeps ~1.5 MB per reload).
    served = served_explicit
    repository = (pipeline.repository / "cpu").resolve()
    for _ in range(20):
        _rank_once(served)
    first = served.server_pid()
    rss0 = process_tree_rss_mb(first)
    stubs0 = len(_stub_pids_for(repository))
    body, headers = hostile.wrapped_shape_binary()
    cut_off = 0
    for _ in range(20):
        pid = served.server_pid()
        before = {s.pid for s in stub_processes(pid)}
        # 500 "Stub process ... is not healthy"; None when a recycle restart cut it off
        status = _post(served.http_port, body, headers)
        assert status in (500, None)
        cut_off += status is None
        _replaced(served, pid, before)
        served.wait_ready(timeout_s=30)
    time.sleep(6)  # the watchdog gives replaced stubs 5 s to finish, then ends them
    for _ in range(20):
        _rank_once(served)
    last = served.server_pid()
    rss1 = process_tree_rss_mb(last)
    leaked = len(_stub_pids_for(repository)) - stubs0
    growth = (rss1 - rss0) / rss0 * 100
    print(f"stub processes {stubs0} -> {stubs0 + leaked}, RSS {rss0:.1f} -> {rss1:.1f} MiB ({growth:+.2f}%), "
          f"server pid {first} -> {last}")
    assert leaked == 0
    assert abs(growth) < 5.0
    log = served.log_text()
    # a cut-off request may or may not have reached the stub first
    assert 20 - cut_off <= log.count("lost the stub of") <= 20
    assert "recycling after 5 stub replacements" in log


def test_reloads_by_the_admin_are_not_taken_for_dead_stubs(pipeline, served_explicit):
    # An admin load replaces every stub of a model; the watchdog must follow,
    # not "repair" it (a spurious reload each time, then a recycle).
    served = served_explicit
    repository = (pipeline.repository / "cpu").resolve()
    headers = served.headers
    client = httpclient.InferenceServerClient(f"127.0.0.1:{served.http_port}")
    for i in range(6):
        for model in ("preprocess", "ranker", "postprocess"):
            client.load_model(model, headers=headers, config=pinned_config_json(repository, model, 1, f"admin{i}"))
    time.sleep(4)  # replaced stubs exit; the watchdog checks every 0.5 s
    served.wait_ready(timeout_s=30)
    _rank_once(served)
    log = served.log_text()
    assert "lost the stub of" not in log and "recycling" not in log
    # and a real death after that is still seen
    body, headers_ = hostile.wrapped_shape_binary()
    _post(served.http_port, body, headers_)
    t0 = time.monotonic()
    while "lost the stub of" not in served.log_text() and time.monotonic() - t0 < 15:
        time.sleep(0.1)
    assert "lost the stub of" in served.log_text()
    served.wait_ready(timeout_s=30)
    _rank_once(served)
