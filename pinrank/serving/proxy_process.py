"""Run nginx with pinrank's proxy config (pinrank.serving.proxy) in front of a
loopback tritonserver: what `pinrank serve --proxy` and the proxy tests start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from pinrank.serving.proxy import ProxySettings, render


class ProxyError(RuntimeError):
    """nginx is missing, or did not start forwarding."""


def nginx_binary() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a user's PATH)."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _ready_status(host: str, port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class NginxProxy:
    """nginx in the foreground, in its own process group (a master killed
    alone would leave its workers serving), with the rendered config in
    `settings.runtime_dir`."""

    def __init__(self, settings: ProxySettings) -> None:
        binary = nginx_binary()
        if binary is None:
            raise ProxyError("nginx is not installed: apt-get install nginx-light (Debian/Ubuntu), "
                             "or run without --proxy")
        self.binary, self.settings = binary, settings
        self.run_dir = Path(settings.runtime_dir)
        self.config = self.run_dir / "nginx.conf"
        self.log_path = self.run_dir / "nginx.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> "NginxProxy":
        """Start it and wait until it forwards Triton's readiness (any HTTP answer)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render(self.settings))
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen([self.binary, "-e", "stderr", "-c", str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        host = "127.0.0.1" if self.settings.listen_host in ("0.0.0.0", "::") else self.settings.listen_host
        deadline = time.monotonic() + timeout_s
        while _ready_status(host, self.settings.http_port) is None:
            if self.process.poll() is not None:
                raise ProxyError(f"nginx exited with code {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ProxyError(f"nginx did not answer on port {self.settings.http_port} within {timeout_s:g} s")
            time.sleep(0.1)
        return self

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown: master and workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of the group
        self.process.wait()

    def __enter__(self) -> "NginxProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
