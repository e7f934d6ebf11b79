"""`pinrank serve` as users run it, in a subprocess on free ports with a known
admin key: the supervised server the reliability harness and the
integration tests hurt and watch (one builder for both)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pinrank.serving import health
from pinrank.serving.tritonserver import free_ports
from pinrank_client.admin import ADMIN_KEY_ENV, admin_headers


@dataclass
class ServeProcess:
    """`pinrank serve` on free ports; a context manager that waits for /ready
    on the way in and stops it with SIGTERM (then SIGKILL) on the way out.
    Its stdout and stderr (the supervisor's log) go to `log`."""

    repository: Path
    workdir: Path
    #: `--model-control`; None leaves the CLI's default.
    model_control: str | None = "explicit"
    startup_timeout_s: float = 180.0
    key: str = field(default_factory=lambda: secrets.token_hex(24))
    ports: list[int] = field(default_factory=lambda: free_ports(4))
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    _out: IO[str] | None = None

    @property
    def http_port(self) -> int:
        return self.ports[0]

    @property
    def grpc_port(self) -> int:
        return self.ports[1]

    @property
    def health_port(self) -> int:
        return self.ports[3]

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def headers(self) -> dict[str, str]:
        return admin_headers(self.key)

    @property
    def log(self) -> Path:
        return self.workdir / "serve.log"

    def log_text(self, tail: int | None = None) -> str:
        text = self.log.read_text() if self.log.exists() else ""
        return text if tail is None else text[-tail:]

    def ready_status(self) -> tuple[int, dict[str, Any]]:
        """The health view's /ready: (HTTP status, its JSON body); 0 when nothing answered."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/ready", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError as exc:
            return 0, {"error": str(exc)}

    def ready(self) -> bool:
        return self.ready_status()[0] == 200

    def wait_ready(self, status: int = 200, timeout_s: float = 60.0) -> float:
        """Seconds until /ready answered `status`; AssertionError (with the log) when it never did."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.ready_status()[0] == status:
                return time.monotonic() - t0
            assert self.process is not None and self.process.poll() is None, \
                f"pinrank serve exited:\n{self.log_text(3000)}"
            time.sleep(0.05)
        raise AssertionError(f"/ready never answered {status}: {self.ready_status()}\n{self.log_text(3000)}")

    def server_pid(self) -> int | None:
        return health.find_server_pid(self.http_port)

    def new_server_pid(self, old: int, timeout_s: float = 30.0) -> int:
        """The pid of the tritonserver that replaced `old`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            pid = self.server_pid()
            if pid not in (None, old):
                return pid
            time.sleep(0.01)
        raise AssertionError(f"tritonserver {old} was not replaced:\n{self.log_text(3000)}")

    def __enter__(self) -> ServeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        http, grpc, metrics, health_port = self.ports
        control = ["--model-control", self.model_control] if self.model_control is not None else []
        cmd = [sys.executable, "-m", "pinrank.cli", "serve", "--repository", str(self.repository),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--health-port", str(health_port), "--log", str(self.workdir / "tritonserver.log"),
               *control, *self.extra_args]
        self._out = open(self.log, "w")  # closed in __exit__
        self.process = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, ADMIN_KEY_ENV: self.key})
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline and not self.ready() and self.process.poll() is None:
            time.sleep(0.25)
        if not self.ready():
            self.__exit__()
            raise RuntimeError(f"pinrank serve did not become ready; see {self.log}:\n{self.log_text(3000)}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._out is not None:
            self._out.close()
