"""Run the real `tritonserver` binary that the nvidia-pytriton wheel bundles.

The wheel ships the server, the Python backend and one backend stub per
CPython version, but not in the layout `tritonserver` expects; this module
assembles a backend directory (symlinks, built once per interpreter), sets
the library and module paths the stub needs, and manages the process:
start, wait until ready, stop on SIGTERM/SIGINT.

Security defaults (docs/security.md): every endpoint binds 127.0.0.1 unless
a host is given; the model-control APIs (repository index, load, unload),
model config, shared memory, trace and logging settings need the admin key
(Triton's restricted-API options), which comes from the caller,
$PINRANK_ADMIN_KEY, a key file (0600) or is generated; a repository whose
artifacts differ from their export manifest is refused before starting.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
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
from typing import Iterator, Literal

from tritonclient.grpc import model_config_pb2 as mc

from pinrank.repository.integrity import IntegrityError, verify_repository
from pinrank.repository.layout import CONFIG_FILE, CPU_CONFIG_VARIANT, config_path
from pinrank.repository.pbtxt import ParseError, read_config
from pinrank.serving.health import (
    is_running,
    process_group,
    remove_shm_regions,
    stub_processes_in_group,
)
from pinrank.serving.trace import trace_args
from pinrank_client.admin import ADMIN_HEADER, ADMIN_KEY_ENV, admin_headers

#: Triton API groups that need the admin key. Health, metadata, inference and
#: statistics stay open: the SDK, load tests and benchmarks use only those.
#: Shared memory is closed too: registering a region makes Triton read or
#: write whatever local segment a caller names.
#: Triton API groups behind the admin key: everything that changes the server
#: (load/unload, shared memory, trace and log settings) or lists the repository.
#: Reading a model's config stays open: it says no more than the metadata does,
#: and PyTriton's ModelClient, perf_analyzer and Triton's examples read it first.
RESTRICTED_APIS: tuple[str, ...] = ("model-repository", "shared-memory", "trace", "logging")
#: How Triton manages models: "none" loads the repository once at startup and
#: refuses load/unload; "explicit" loads every model at startup and then
#: follows load/unload calls (admin key); "poll" follows the repository on disk.
ModelControl = Literal["none", "explicit", "poll"]
MODEL_CONTROL_MODES: tuple[str, ...] = ("none", "explicit", "poll")
# Triton splits the option on ':' ',' '='; a key holding them would be cut.
_KEY_OK = re.compile(r"^[A-Za-z0-9._~+/-]{16,256}$")
# How a crash shows in the log: Triton's signal handler, an uncaught C++ exception.
_CRASH_LINE = re.compile(r"^(Signal \(\d+\) received|terminate called|\s+what\(\):)")
#: Error lines every start on a machine without a GPU writes, all harmless: the
#: bundled server is built with CUDA and finds no driver (docs/deploy.md). They
#: stay in the log but never lead a failure report.
CPU_HOST_NOISE = re.compile(r"CudaDriverHelper has not been initialized|CUDA driver version is insufficient"
                            r"|no CUDA-capable device")


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
        import pytriton  # noqa: PLC0415 - a missing install is what this reports, instead of a traceback at import
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
    # tensor silently empty. The stub's interpreter runs isolated (sys.flags.isolated,
    # seen inside a stub): it ignores PYTHONPATH, so PATH is the only lever; PYTHONPATH
    # below serves the server's other children, not the stub.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    paths = list(extra_pythonpath or []) + [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
    # One thread per model instance: requests run concurrently across instances,
    # and oversubscribing 2 cores with intra-op threads costs more than it gives.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def default_admin_key_file(http_port: int) -> Path:
    """Where `pinrank serve` keeps a generated admin key: a per-user runtime
    directory (mode 0700), one file per HTTP port so servers don't collide."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"pinrank-{os.getuid()}" / f"admin-key-{http_port}"


def _checked_key(key: str, source: str) -> str:
    key = key.strip()
    if not _KEY_OK.match(key):
        raise ServerError(
            f"admin key from {source} must be 16-256 characters of letters, digits and ._~+/- "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


def resolve_admin_key(key: str | None = None, key_file: Path | None = None) -> tuple[str, str]:
    """(key, where it came from): `key`, else $PINRANK_ADMIN_KEY, else the
    contents of `key_file`, else a new random key (persist it with
    write_admin_key_file). A key file readable by others is refused."""
    if key:
        return _checked_key(key, "the caller"), "given"
    env = os.environ.get(ADMIN_KEY_ENV, "")
    if env.strip():
        return _checked_key(env, f"${ADMIN_KEY_ENV}"), f"${ADMIN_KEY_ENV}"
    if key_file is not None and Path(key_file).exists():
        path = Path(key_file)
        st = path.stat()
        # A key someone else could have written is a key someone else knows.
        if st.st_uid != os.getuid():
            raise ServerError(f"admin key file {path} belongs to another user (uid {st.st_uid}): remove it")
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise ServerError(f"admin key file {path} is readable by others (mode {mode:o}): chmod 600 it")
        return _checked_key(path.read_text(), str(path)), str(path)
    return secrets.token_hex(32), "generated"  # hex: never starts with "-" when pasted as an argument


def write_admin_key_file(path: Path, key: str) -> Path:
    """Write `key` to `path` readable by its owner only (directory 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.parent.stat()
    # In a shared temp dir another user could have made the directory first.
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ServerError(f"{path.parent} is not a private directory (owner uid {st.st_uid}, mode "
                          f"{st.st_mode & 0o777:o}): pass --admin-key-file in a directory only you can write")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_ok(port: int, path: str, timeout: float = 1.0, host: str = "127.0.0.1") -> bool:
    if host in ("0.0.0.0", "::", ""):  # wildcard binds answer on loopback too
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ConnectionError):
        return False


def _ready(port: int, timeout: float = 1.0, host: str = "127.0.0.1") -> bool:
    return _http_ok(port, "/v2/health/ready", timeout, host)


def _wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
    """Wait until no running process is left in group `pgid` (SIGKILL is
    asynchronous; a stub still holding the ports would block a restart)."""
    deadline = time.monotonic() + timeout_s
    while any(is_running(p) for p in process_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.01)


def gpu_present() -> bool:
    """Whether this machine exposes an NVIDIA GPU (its device nodes; no CUDA needed to ask)."""
    return Path("/dev/nvidiactl").exists() and any(Path("/dev").glob("nvidia[0-9]*"))


def validate_repository(repo: Path, config_name: str | None = None) -> list[str]:
    """Model names in `repo`; raise ServerError when it can't be served (here,
    with the config variant `config_name` where a model has one)."""
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} does not exist (run `make export` first)")
    models = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        raise ServerError(f"model repository {repo} holds no models")
    on_gpu = []
    for name in models:
        cfg_path = repo / name / CONFIG_FILE
        if not cfg_path.exists():
            raise ServerError(f"model repository {repo}: {name}/{CONFIG_FILE} is missing")
        variant = config_path(repo, name, config_name) if config_name else None
        if variant is not None and variant.exists():
            cfg_path = variant  # what Triton loads with --model-config-name
        try:
            cfg = read_config(cfg_path)
        except (ParseError, UnicodeDecodeError) as exc:
            raise ServerError(f"{cfg_path}: not a valid Triton ModelConfig ({exc})") from exc
        if any(g.kind == mc.ModelInstanceGroup.Kind.KIND_GPU for g in cfg.instance_group):
            on_gpu.append(name)
    if on_gpu and not gpu_present():
        variants = [n for n in on_gpu if config_path(repo, n, CPU_CONFIG_VARIANT).exists()]
        fix = (f"serve it with --model-config-name {CPU_CONFIG_VARIANT} (the CPU variant the export wrote for "
               f"{', '.join(variants)})" if variants and config_name != CPU_CONFIG_VARIANT
               else "serve a cpu-profile repository (`pinrank export --target cpu`)")
        raise ServerError(f"model repository {repo}: {', '.join(on_gpu)} run on KIND_GPU and this machine has no "
                          f"NVIDIA GPU; {fix}")
    try:
        verify_repository(repo)
    except IntegrityError as exc:
        raise ServerError(f"model repository {repo}: {exc}") from None
    return models


@dataclass
class TritonServer:
    """A managed `tritonserver` process, bound to 127.0.0.1 unless `host` says
    otherwise, with RESTRICTED_APIS behind the admin key.

    The key is `admin_key`, else $PINRANK_ADMIN_KEY, else the contents of
    `admin_key_file`, else generated (and written to `admin_key_file`, 0600,
    when one is given); `admin_headers` carries it for tritonclient calls, e.g.
    `client.load_model("ranker", headers=server.admin_headers)` under
    `model_control="explicit"`.
    """

    model_repository: Path
    ports: Ports = field(default_factory=Ports)
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    admin_key: str | None = field(default=None, repr=False)
    admin_key_file: Path | None = None
    model_control: ModelControl = "none"
    poll_secs: int = 5
    restricted_apis: tuple[str, ...] = RESTRICTED_APIS
    #: Triton's --log-verbose level (0: off; 1 shows each request's path through the models).
    log_verbose: int = 0
    #: Request traces (TIMESTAMPS) of every `trace_rate`'th request, one file each (pinrank.serving.trace).
    trace_file: Path | None = None
    trace_rate: int = 1
    #: Triton's --model-config-name: load <model>/configs/<name>.pbtxt where a model has it.
    model_config_name: str | None = None
    admin_key_source: str = field(default="", init=False)
    startup_timeout_s: float = field(default=180.0, init=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ServerError(f"model_control must be one of {MODEL_CONTROL_MODES}, got {self.model_control!r}")
        if self.model_config_name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_config_name):
            raise ServerError(f"model_config_name must be a plain file stem (letters, digits, _ . -), "
                              f"got {self.model_config_name!r}")
        if self.log_verbose < 0 or self.trace_rate < 1:
            raise ServerError(f"log_verbose must be >= 0 and trace_rate >= 1, got {self.log_verbose}, "
                              f"{self.trace_rate}")
        self.admin_key, self.admin_key_source = resolve_admin_key(self.admin_key, self.admin_key_file)

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that unlock the restricted APIs (HTTP and gRPC spellings)."""
        assert self.admin_key is not None
        return admin_headers(self.admin_key)

    @property
    def admin_header(self) -> str:
        """The HTTP header name; gRPC wants it prefixed with `triton-grpc-protocol-`."""
        return ADMIN_HEADER

    def _control_args(self) -> list[str]:
        if self.model_control == "explicit":
            return ["--model-control-mode=explicit", "--load-model=*"]
        if self.model_control == "poll":
            return ["--model-control-mode=poll", f"--repository-poll-secs={self.poll_secs}"]
        return []

    def _restriction_args(self) -> list[str]:
        if not self.restricted_apis:
            return []
        rule = f"{','.join(self.restricted_apis)}:{ADMIN_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

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
            # Separate frontends the restricted-API options don't cover; off
            # explicitly, since Vertex AI mode switches on from AIP_* env vars.
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            *self._control_args(),
            *self._restriction_args(),
            *([f"--log-verbose={self.log_verbose}"] if self.log_verbose else []),
            *(trace_args(self.trace_file, self.trace_rate) if self.trace_file is not None else []),
            *([f"--model-config-name={self.model_config_name}"] if self.model_config_name else []),
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        self.model_repository = Path(self.model_repository).resolve()
        validate_repository(self.model_repository, self.model_config_name)
        busy = [f"{what} port {port}" for what, port in self.ports.items() if port_in_use(port, self.host)]
        if busy:
            raise ServerError(
                f"cannot start tritonserver: {', '.join(busy)} already in use on {self.host} "
                "(stop the other server or pass other ports, e.g. --http-port/--grpc-port/--metrics-port)"
            )
        if self.admin_key_file is not None and self.admin_key_source == "generated":
            write_admin_key_file(self.admin_key_file, self.admin_key or "")
            self.admin_key_source = str(self.admin_key_file)
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.startup_timeout_s = timeout_s
        self._launch("wb", timeout_s)
        return self

    def relaunch(self) -> None:
        """Start again after a crash: same command, ports and key, appending
        to the log. Skips what `start` already checked (repository integrity,
        free ports): a restart should take the server's load time, no more."""
        if self.process is None:
            raise ServerError("relaunch() before start()")
        self.kill()
        self._launch("ab", self.startup_timeout_s)

    def _launch(self, log_mode: str, timeout_s: float) -> None:
        assert self.log_path is not None
        log = open(self.log_path, log_mode)
        self._log_offset = log.tell()  # log_tail reads this run's lines only
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,  # our Ctrl-C handling decides when it stops; kill() ends its group
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} during startup; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if _ready(self.ports.http, host=self.host):
                return
            time.sleep(0.05)  # cheap; a restart is measured in tenths of a second
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f}s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        """Error lines (Triton prefixes them with 'E') and model load failures
        first, since the status table that names them scrolls past the tail;
        the harmless CUDA lines of a CPU host (CPU_HOST_NOISE) are left out.
        Only this run's lines: a restarted server appends to the same log."""
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace").splitlines()
        errors = [t for t in text if (t.startswith("E") or "UNAVAILABLE" in t or _CRASH_LINE.match(t))
                  and not CPU_HOST_NOISE.search(t)][-10:]
        tail = [t for t in text[-lines:] if t not in errors]
        return "\n".join(errors + tail)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def is_live(self, timeout_s: float = 2.0) -> bool:
        """Does /v2/health/live answer 200 within `timeout_s`?"""
        return self.is_running() and _http_ok(self.ports.http, "/v2/health/live", timeout_s, self.host)

    def kill(self) -> None:
        """SIGKILL the server and everything in its process group (its stubs
        outlive a crashed server otherwise), then remove the shared-memory
        regions of those stubs, which only a clean shutdown removes."""
        if self.process is None:
            return
        regions = [s.shm_region for s in stub_processes_in_group(self.process.pid)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _wait_group_gone(self.process.pid)
        remove_shm_regions(regions)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        return self.is_running() and _ready(self.ports.http, host=self.host)

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
