"""The supervisor's process management on a tiny real child process (it is
generic), its backoff and crash-loop logic, and the stdlib health pieces."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from pinrank.serving import health
from pinrank.serving.health_endpoint import HealthEndpoint, HealthMonitor
from pinrank.serving.supervisor import (
    CrashLoopError,
    RestartPolicy,
    Supervisor,
    describe_exit,
)
from pinrank.serving.tritonserver import free_ports

FAST = dict(backoff_s=0.05, max_backoff_s=0.2, live_interval_s=0.05, live_timeout_s=0.05, poll_s=0.01)


class SleeperChild:
    """A real process (python sleeping); `live` and `fail_launches` script its behaviour."""

    def __init__(self, exit_at_once: bool = False) -> None:
        self.exit_at_once = exit_at_once
        self.live = True
        self.fail_launches = 0
        self.launches = 0
        self.proc: subprocess.Popen | None = None
        self.relaunch()
        self.launches = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def is_live(self, timeout_s: float) -> bool:
        return self.live

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def relaunch(self) -> None:
        self.launches += 1
        if self.fail_launches:
            self.fail_launches -= 1
            raise RuntimeError("port already in use")
        code = "pass" if self.exit_at_once else "import time; time.sleep(60)"
        self.proc = subprocess.Popen([sys.executable, "-c", code])

    def log_tail(self) -> str:
        return "last line"


def _run_in_thread(sup: Supervisor) -> tuple[threading.Event, threading.Thread, list[BaseException]]:
    stop, errors = threading.Event(), []

    def run() -> None:
        try:
            sup.run(stop)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return stop, t, errors


@contextlib.contextmanager
def supervising(sup: Supervisor, child: SleeperChild):
    """Run `sup` in a thread for the block; fail on anything it raised."""
    stop, t, errors = _run_in_thread(sup)
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        child.kill()
    assert not errors


def _wait(pred, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_backoff_is_immediate_first_then_doubles_to_the_cap():
    p = RestartPolicy(backoff_s=0.5, max_backoff_s=3.0)
    assert [p.delay_s(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("bad", [dict(backoff_s=-1), dict(window_s=float("nan")), dict(poll_s=float("inf")),
                                 dict(max_restarts=-1), dict(live_failures=0)])
def test_policy_rejects_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RestartPolicy(**bad)


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-11) == "killed by SIGSEGV (signal 11)"
    assert describe_exit(-6).startswith("killed by SIGABRT")
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "still running"


def test_a_killed_child_is_restarted_and_the_hooks_run(caplog):
    child = SleeperChild()
    seen: list[str] = []
    sup = Supervisor(child, RestartPolicy(**FAST), on_start=lambda c: seen.append(f"start {c.pid}"),
                     on_exit=lambda c: seen.append("exit"))
    with supervising(sup, child):
        first = child.pid
        child.proc.send_signal(signal.SIGSEGV)
        assert _wait(lambda: bool(sup.restarts))
        assert child.pid != first and child.exit_code() is None
        r = sup.restarts[0]
        assert r.ok and "SIGSEGV" in r.cause and r.down_s < 5
        assert seen == ["exit", f"start {child.pid}"]
        assert "SIGSEGV" in caplog.text and "last line" in caplog.text


def test_a_hung_child_is_killed_and_restarted():
    child = SleeperChild()
    sup = Supervisor(child, RestartPolicy(**FAST, live_failures=3))
    with supervising(sup, child):
        try:
            hung = child.proc
            child.live = False
            assert _wait(lambda: bool(sup.restarts))
            assert hung.poll() is not None  # the hung process was ended, not left behind
            assert sup.restarts[0].cause.startswith("hung: liveness probe failed 3 times")
        finally:
            child.live = True


def test_a_crash_loop_gives_up_with_the_cause():
    child = SleeperChild(exit_at_once=True)
    sup = Supervisor(child, RestartPolicy(**FAST, max_restarts=3, window_s=30))
    stop, t, errors = _run_in_thread(sup)
    t.join(20)
    stop.set()
    assert errors and isinstance(errors[0], CrashLoopError)
    assert "failed 4 times within 30 s (limit 3 restarts)" in str(errors[0])
    assert "exited with code 0" in str(errors[0]) and "last line" in str(errors[0])
    assert child.launches == 3


def test_failed_relaunches_are_retried_with_backoff():
    child = SleeperChild()
    child.fail_launches = 2
    sup = Supervisor(child, RestartPolicy(**FAST, max_restarts=5))
    with supervising(sup, child):
        child.proc.kill()
        assert _wait(lambda: any(r.ok for r in sup.restarts))
        assert [r.ok for r in sup.restarts] == [False, False, True]
        assert "failed to restart: port already in use" in sup.restarts[2].cause
        # 0 s, then 0.05 s, then 0.1 s of backoff before the successful launch
        assert sup.restarts[2].down_s >= 0.15


def test_a_planned_restart_does_not_count_towards_the_limit():
    child = SleeperChild()
    sup = Supervisor(child, RestartPolicy(**FAST, max_restarts=1))
    with supervising(sup, child):
        for n in range(1, 4):
            sup.request_restart("recycle", planned=True)
            assert _wait(lambda n=n: len(sup.restarts) == n)
        assert all(r.ok and r.cause == "recycle" for r in sup.restarts)


# --- health.py: the stdlib-only check ------------------------------------------------------


def test_python_instances_follow_triton_naming():
    cfg = 'name: "ranker"\nbackend: "python"\ninstance_group { count: 2 kind: KIND_CPU }\n'
    assert health.python_instances(cfg, "ranker") == ["ranker_0_0", "ranker_0_1"]
    two = ('backend: "python"\ninstance_group [ { count: 1 kind: KIND_CPU }, '
           '{ name: "big" count: 2 kind: KIND_CPU rate_limiter { resources { name: "r" count: 4 } } } ]\n')
    assert health.python_instances(two, "m") == ["m_0_0", "big_0", "big_1"]
    assert health.python_instances('backend: "python"\n', "p") == ["p_0_0"]
    assert health.python_instances('platform: "ensemble"\nensemble_scheduling { step { model_name: "a" } }',
                                   "e") is None
    # a nested message's `backend` (none exists today) must not make a model Python
    assert health.python_instances('backend: "onnxruntime"\nparameters { key: "backend" value { } }', "o") is None


def test_health_cli_reports_not_ready_when_nothing_answers():
    port = free_ports(1)[0]
    lines: list[str] = []
    code = health.main(["--http-url", f"http://127.0.0.1:{port}", "--timeout", "0.5"], out=lines.append)
    assert code == 1 and lines[0].startswith("not ready") and "tritonserver not ready (no answer)" in lines[0]


def test_health_cli_runs_as_a_standalone_file_without_pinrank(tmp_path):
    # What the exec probe in the GPU image does: the file alone, no package, no site-packages.
    copy = tmp_path / "health.py"
    copy.write_text(open(health.__file__).read())
    out = subprocess.run([sys.executable, "-S", "-I", str(copy), "--http-url", "127.0.0.1:1", "--timeout", "0.5",
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["ready"] is False
    help_ = subprocess.run([sys.executable, "-S", "-I", str(copy), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "readiness probe" in help_.stdout


def test_health_cli_rejects_a_bad_timeout(capsys):
    with pytest.raises(SystemExit) as exc:
        health.main(["--timeout", "nan"])
    assert exc.value.code == 2 and "--timeout must be a positive number" in capsys.readouterr().err


def test_process_state_and_running():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert health.is_running(proc.pid)
        proc.send_signal(signal.SIGSTOP)
        assert _wait(lambda: health.process_state(proc.pid) in ("T", "t"))
        assert not health.is_running(proc.pid)  # a stopped stub cannot answer
    finally:
        proc.kill()
        proc.wait()
    assert health.process_state(proc.pid) is None


# --- the health endpoint -------------------------------------------------------------------


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_endpoint_ready_follows_the_latest_fresh_verdict(tmp_path):
    monitor = HealthMonitor("127.0.0.1:1", lambda: None, tmp_path, max_age_s=60)
    port = free_ports(1)[0]
    with HealthEndpoint("127.0.0.1", port, monitor, lambda: (True, {"live": True})):
        base = f"http://127.0.0.1:{port}"
        status, body = _get(f"{base}/ready")
        assert status == 503 and body["reasons"][0] == "not checked yet"
        monitor.check_now()  # server_pid() is None: restarting
        status, body = _get(f"{base}/ready")
        assert status == 503 and body["reasons"] == ["tritonserver is restarting"]
        monitor.verdict, monitor.checked_at = health.Verdict(True), time.monotonic()
        assert _get(f"{base}/ready")[0] == 200
        monitor.checked_at -= 120  # stale: the monitor stopped checking
        status, body = _get(f"{base}/ready")
        assert status == 503 and "last check" in body["reasons"][-1]
        assert _get(f"{base}/live") == (200, {"live": True})
        status, body = _get(f"{base}/nope")
        assert status == 404 and "/live or /ready" in body["error"]
