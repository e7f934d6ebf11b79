"""`pinrank serve`'s own health view: GET /live and GET /ready on --health-port.

Triton's /v2/health/ready says 200 while a Python-backend stub is dead (every
request to that instance fails) and says nothing while the supervisor is
restarting the server. `HealthMonitor` runs `health.check` (ready + every
stub running + a canary through the ensemble) every `interval_s`; /ready is
200 only if the latest verdict is ready and recent, else 503 with the reasons
as JSON. /live is 200 while the supervisor is running.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from pinrank.serving import health

log = logging.getLogger(__name__)


@dataclass
class HealthMonitor:
    """Checks the server every `interval_s`. `server_pid()` follows restarts;
    `on_unhealthy(instance)` hears of instances Triton called unhealthy."""

    http_url: str
    server_pid: Callable[[], int | None]
    repository: Path
    interval_s: float = 1.0
    max_age_s: float = 5.0
    timeout_s: float = 2.0
    on_unhealthy: Callable[[str], object] | None = None
    after_check: Callable[[], object] | None = None
    verdict: health.Verdict = field(default_factory=lambda: health.Verdict(False, ["not checked yet"]))
    checked_at: float = float("-inf")
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check_now(self) -> health.Verdict:
        pid = self.server_pid()
        if pid is None:
            v = health.Verdict(False, ["tritonserver is restarting"])
        else:
            v = health.check(self.http_url, pid, self.repository, timeout_s=self.timeout_s)
        with self._lock:
            self.verdict, self.checked_at = v, time.monotonic()
        if self.on_unhealthy is not None:
            for instance in v.unhealthy_instances:
                self.on_unhealthy(instance)
        if self.after_check is not None:
            self.after_check()
        return v

    def ready(self) -> tuple[bool, dict]:
        with self._lock:
            v, age = self.verdict, time.monotonic() - self.checked_at
        body = {**v.as_dict(), "checked_s_ago": round(age, 3) if age != float("inf") else None}
        if age > self.max_age_s:
            body["reasons"] = [*v.reasons, f"last check {age:.1f} s ago (more than {self.max_age_s:g} s)"]
            return False, {**body, "ready": False}
        return v.ready, body

    def mark_restarting(self) -> None:
        with self._lock:
            self.verdict, self.checked_at = health.Verdict(False, ["tritonserver is restarting"]), time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception as exc:  # a check must never end the monitor
                log.warning("health check failed: %s", exc)

    def __enter__(self) -> "HealthMonitor":
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-monitor")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HealthEndpoint:
    """A stdlib HTTP server answering GET /live and GET /ready on (host, port)."""

    def __init__(self, host: str, port: int, monitor: HealthMonitor, live: Callable[[], tuple[bool, dict]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # seconds per socket read: a client that sends nothing is dropped

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/ready":
                    ok, body = outer.monitor.ready()
                elif self.path == "/live":
                    ok, body = outer.live()
                else:
                    ok, body = False, {"error": f"unknown path {self.path[:100]!r}: use /live or /ready"}
                    self._send(404, body)
                    return
                self._send(200 if ok else 503, body)

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass  # probes every few seconds would flood the terminal

        self.monitor, self.live = monitor, live
        server_class = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
        self.httpd = server_class((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="health-endpoint")

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def __enter__(self) -> "HealthEndpoint":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
