"""Run the real `tritonserver` binary that the nvidia-pytriton wheel bundles.

The wheel ships the server, the Python backend and one backend stub per
CPython version, but not in the layout `tritonserver` expects; this module
assembles a backend directory (symlinks, built once per interpreter), sets
the library and module paths the stub needs, and manages the process:
start, wait until ready, stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def items(self) -> list[tuple[str, int]]:
        return [("http", self.http), ("grpc", self.grpc), ("metrics", self.metrics)]


def free_ports(count: int = 3) -> list[int]:
    """Distinct free localhost ports (for tests; racy only against strangers)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - the dependency is pinned
        raise ServerError("nvidia-pytriton is not installed: `pip install nvidia-pytriton==0.7.0`") from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def tritonserver_binary() -> Path:
    path = _pytriton_root() / "bin" / "tritonserver"
    if not path.exists():
        raise ServerError(f"tritonserver binary not found at {path}")
    return path


def backend_directory() -> Path:
    """A backend dir with `python/` = the bundled backend + this interpreter's stub."""
    root = _pytriton_root()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"no Python backend stub for CPython {ver} in {stub.parent.parent}")
    target = Path(tempfile.gettempdir()) / f"pinrank-triton-backends-{os.getuid()}-py{ver}"
    py_dir = target / "python"
    wanted = {p.name: p for p in (root / "backends" / "python").iterdir() if p.name != "__pycache__"}
    wanted["triton_python_backend_stub"] = stub
    if not all((py_dir / n).exists() and (py_dir / n).resolve() == p.resolve() for n, p in wanted.items()):
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        (tmp / "python").mkdir()
        for name, src in wanted.items():
            (tmp / "python" / name).symlink_to(src)
        shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def server_env(extra_pythonpath: list[str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs."""
    env = os.environ.copy()
    libs = [
        str(_pytriton_root().parent.parent / "nvidia_pytriton.libs"),
        str(sysconfig.get_config_var("LIBDIR")),
    ]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    # The stub embeds libpython and finds its prefix through the `python3` on
    # PATH: putting this interpreter's bin first makes the stub use this venv's
    # site-packages (numpy<2, torch, editable installs). Without it the stub
    # falls back to the base interpreter, whose numpy 2 makes every output
    # tensor silently empty. PYTHONPATH is a second line of defence only.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    paths = list(extra_pythonpath or []) + [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
    # One thread per model instance: requests run concurrently across instances,
    # and oversubscribing 2 cores with intra-op threads costs more than it gives.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _ready(port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ConnectionError):
        return False


def validate_repository(repo: Path) -> list[str]:
    """Model names in `repo`; raise ServerError when it can't be served."""
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} does not exist (run `make export` first)")
    models = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        raise ServerError(f"model repository {repo} holds no models")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for name in models:
        cfg = repo / name / "config.pbtxt"
        if not cfg.exists():
            raise ServerError(f"model repository {repo}: {name}/config.pbtxt is missing")
        try:
            text_format.Parse(cfg.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            raise ServerError(f"{cfg}: not a valid Triton ModelConfig ({exc})") from exc
    return models


@dataclass
class TritonServer:
    """A managed `tritonserver` process bound to 127.0.0.1."""

    model_repository: Path
    ports: Ports = field(default_factory=Ports)
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        self.model_repository = Path(self.model_repository).resolve()
        validate_repository(self.model_repository)
        busy = [f"{what} port {port}" for what, port in self.ports.items() if port_in_use(port, self.host)]
        if busy:
            raise ServerError(
                f"cannot start tritonserver: {', '.join(busy)} already in use on {self.host} "
                "(stop the other server or pass other ports, e.g. --http-port/--grpc-port/--metrics-port)"
            )
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,  # our Ctrl-C handling decides when it stops
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} during startup; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if _ready(self.ports.http):
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f}s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        """Error lines (Triton prefixes them with 'E') and model load failures
        first, since the status table that names them scrolls past the tail."""
        if not self.log_path or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [t for t in text if t.startswith("E") or "UNAVAILABLE" in t][-10:]
        tail = [t for t in text[-lines:] if t not in errors]
        return "\n".join(errors + tail)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        return self.is_running() and _ready(self.ports.http)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def __enter__(self) -> "TritonServer":
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(model_repository: Path, ports: Ports | None = None, **kw: object) -> Iterator[TritonServer]:
    """Context manager: a ready server on free (or given) ports, stopped on exit."""
    if ports is None:
        ports = Ports(*free_ports(3))
    server = TritonServer(Path(model_repository), ports, **kw)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
