"""Start the tritonserver of an unpacked GPU bundle (deploy/gpu_bundle.py),
from the bundle's own files alone.

The nvidia-pytriton wheel's server, Python backend and stubs are copied into
the bundle as they are; what the wheel's layout gave for free, this module
sets up: a backend directory holding the backend and the stub of the chosen
interpreter's CPython version, LD_LIBRARY_PATH with the bundle's libraries and
that interpreter's libpython, and PATH starting with that interpreter.

The stub embeds Python in isolated mode (seen: sys.flags.isolated == 1), so
PYTHONPATH is ignored: its packages are those of the prefix of the first
`python3` on PATH. To put the bundle's numpy<2 before the interpreter's numpy
2 (which makes the stub return empty tensors), the launcher makes a virtual
environment over the same base interpreter whose site-packages holds that
numpy and then adds the interpreter's own site-packages (numpy1_prefix).

Standard library and click only, on purpose: it runs on the GPU machine under
its torch interpreter, where pinrank is not installed. Security defaults as
`pinrank serve`: every endpoint on 127.0.0.1, model control, shared memory,
trace and logging behind a generated key.

    python3 triton_launch.py --profile gpu --python /opt/torch/.venv/bin/python3
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import click

# --- the bundle's layout (deploy/gpu_bundle.py writes it) ---------------------------------

BUNDLE_NAME = "pinrank-gpu-bundle"
MANIFEST = "MANIFEST.json"
SERVER_BIN = "triton/bin/tritonserver"
LIB_DIR = "triton/lib"
PY_BACKEND_DIR = "triton/backends/python"
STUBS_DIR = "triton/stubs"
STUB_NAME = "triton_python_backend_stub"
REPOSITORIES_DIR = "repository"
#: Pure-Python packages for the check's client: pinrank_client and tritonclient.
CLIENT_PY_DIR = "python"
#: Compiled client dependencies (gevent, grpcio, ...) per CPython version: site/cp312.
CLIENT_SITE_DIR = "site"
#: numpy<2 per CPython version, for the stub only: numpy1/cp312.
NUMPY1_DIR = "numpy1"
#: Backend directories the launcher assembles at run time (inside the unpacked bundle).
RUN_DIR = "run"

#: Triton API groups behind the admin key, as `pinrank serve` has them.
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
ADMIN_HEADER = "pinrank-admin-key"
#: Lines every start on a machine without a GPU logs; harmless, never the reason shown first.
CPU_HOST_NOISE = re.compile(r"CudaDriverHelper has not been initialized|CUDA driver version is insufficient"
                            r"|no CUDA-capable device|Failed to initialize NVML")


class LaunchError(RuntimeError):
    """The bundled server could not be set up or started; the message says why."""


def cp_tag(version: str) -> str:
    """'3.12' -> 'cp312' (the folder name of per-version sites)."""
    return "cp" + version.replace(".", "")


# --- the interpreter the stub embeds ---------------------------------------------------------

_PROBE = r"""
import json, os, site, sys, sysconfig
try:
    import numpy
    np_version = numpy.__version__
except Exception as exc:
    np_version = "missing: %s" % exc
print(json.dumps({
    "executable": sys.executable,
    "version": "%d.%d" % sys.version_info[:2],
    "full_version": sys.version.split()[0],
    "libdir": sysconfig.get_config_var("LIBDIR") or "",
    "site_dirs": [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))],
    "base_bindir": os.path.dirname(getattr(sys, "_base_executable", "") or os.path.realpath(sys.executable)),
    "numpy": np_version,
}))
"""


@dataclass(frozen=True)
class PythonInfo:
    """What the stub needs to know of the interpreter whose packages it uses."""

    executable: str
    version: str
    full_version: str
    libdir: str
    site_dirs: tuple[str, ...]
    base_bindir: str
    numpy: str

    @property
    def libpython(self) -> str:
        return f"libpython{self.version}.so.1.0"

    def libpython_path(self) -> str | None:
        """Where libpython is: LIBDIR, else the loader's cache, else None."""
        if self.libdir and (Path(self.libdir) / self.libpython).exists():
            return str(Path(self.libdir) / self.libpython)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
            for line in cache.splitlines():
                if line.strip().startswith(self.libpython + " ") and "=>" in line:
                    return line.split("=>", 1)[1].strip()
        return None


def probe_python(executable: str) -> PythonInfo:
    """Ask `executable` (not this process: the check may run elsewhere) about itself.
    Isolated (-I), as the stub runs it: this process's PYTHONPATH stays out of the answer."""
    try:
        out = subprocess.run([executable, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=120,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"cannot run the stub's interpreter {executable}: {exc}") from None
    data = json.loads(out.strip().splitlines()[-1])
    return PythonInfo(data["executable"], data["version"], data["full_version"], data["libdir"],
                      tuple(data["site_dirs"]), data["base_bindir"], data["numpy"])


# --- the bundle ------------------------------------------------------------------------------


def bundle_root(path: str | Path | None = None) -> Path:
    """The unpacked bundle: `path`, its BUNDLE_NAME child, or this file's folder."""
    root = Path(path) if path is not None else Path(__file__).resolve().parent
    if not (root / MANIFEST).exists() and (root / BUNDLE_NAME / MANIFEST).exists():
        root = root / BUNDLE_NAME
    if not (root / MANIFEST).exists():
        raise LaunchError(f"{root} is not an unpacked GPU bundle (no {MANIFEST}); build one with "
                          "deploy/gpu_bundle.py and unpack it")
    return root.resolve()


def read_manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def backend_directory(root: Path, version: str) -> Path:
    """RUN_DIR/backends-pyX.Y/python/: the Python backend beside the stub for
    CPython `version`, the layout --backend-directory wants. Symlinks: nothing
    is copied, and re-running is cheap."""
    stub = root / STUBS_DIR / version / STUB_NAME
    if not stub.exists():
        have = sorted(p.name for p in (root / STUBS_DIR).iterdir()) if (root / STUBS_DIR).is_dir() else []
        raise LaunchError(f"the bundle has no Python-backend stub for CPython {version} (it has {have}); "
                          "rebuild it with --stubs including that version")
    target = root / RUN_DIR / f"backends-py{version}" / "python"
    target.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in (root / PY_BACKEND_DIR).iterdir() if p.name != "__pycache__"}
    wanted[STUB_NAME] = stub
    for name, src in wanted.items():
        _link(target / name, src)
    return target.parent


def _unique(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")


def _link(link: Path, target: Path) -> None:
    """link -> target, atomically: the check starts two servers at once, and both lay out the same links."""
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    tmp = _unique(link)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _write(path: Path, text: str) -> None:
    tmp = _unique(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def numpy1_dir(root: Path, version: str) -> Path | None:
    path = root / NUMPY1_DIR / cp_tag(version)
    return path if path.is_dir() else None


def numpy1_prefix(root: Path, py: PythonInfo) -> Path:
    """RUN_DIR/numpy1-pyX.Y: a virtual environment over `py`'s base interpreter
    whose site-packages holds the bundle's numpy<2 (links) and then, through a
    .pth, `py`'s own site folders (torch, onnxruntime), with their .pth files.
    The stub takes its prefix from the first python3 on PATH: this one's."""
    found = numpy1_dir(root, py.version)
    if found is None:
        raise LaunchError(f"numpy1 asked for, but the bundle carries no numpy<2 for CPython {py.version}")
    prefix = root / RUN_DIR / f"numpy1-py{py.version}"
    site = prefix / "lib" / f"python{py.version}" / "site-packages"
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    _write(prefix / "pyvenv.cfg", f"home = {py.base_bindir}\ninclude-system-site-packages = false\n"
                                  f"version = {py.full_version}\n")
    links = {prefix / "bin" / name: Path(py.executable) for name in ("python3", f"python{py.version}")}
    links.update({site / entry.name: entry for entry in found.iterdir()})
    for link, target in links.items():
        _link(link, target)
    adds = "; ".join(f"site.addsitedir({d!r})" for d in py.site_dirs)
    _write(site / "zz-interpreter-site.pth", f"import site; {adds}\n" if adds else "")
    return prefix


def server_env(root: Path, py: PythonInfo, *, numpy1: bool = False, base: dict[str, str] | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its stubs run in."""
    env = dict(os.environ if base is None else base)
    libs = [str(root / LIB_DIR), py.libdir]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    bindir = numpy1_prefix(root, py) / "bin" if numpy1 else Path(py.executable).parent
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    # One intra-op thread per model instance, as `pinrank serve` runs them.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def free_ports(count: int = 3) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class BundledServer:
    """tritonserver from an unpacked bundle, serving one of its repositories."""

    root: Path
    repository: Path
    python: PythonInfo
    log_path: Path
    config_name: str | None = None
    numpy1: bool = False
    env_extra: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, int, int] = field(default_factory=lambda: tuple(free_ports(3)))  # type: ignore[assignment]
    admin_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    process: subprocess.Popen | None = None

    def url(self, protocol: str) -> str:
        """host:port of the "http" or "grpc" endpoint (what RankingClient takes with that protocol)."""
        return f"127.0.0.1:{self.ports[('http', 'grpc').index(protocol)]}"

    def command(self) -> list[str]:
        rule = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_key}"
        http, grpc, metrics = self.ports
        return [
            str(self.root / SERVER_BIN),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory(self.root, self.python.version)}",
            "--http-address=127.0.0.1", f"--http-port={http}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
            "--exit-on-error=true", "--strict-readiness=true", "--disable-auto-complete-config",
            "--allow-sagemaker=false", "--allow-vertex-ai=false",
            f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}",
            *([f"--model-config-name={self.config_name}"] if self.config_name else []),
        ]

    def preflight(self) -> None:
        """What would make the start fail in an unhelpful way, said plainly."""
        if not (self.repository / "pinrank" / "config.pbtxt").exists():
            raise LaunchError(f"{self.repository} is not a pinrank model repository (no pinrank/config.pbtxt)")
        if self.python.libpython_path() is None:
            raise LaunchError(
                f"the CPython {self.python.version} stub needs {self.python.libpython}, which is neither in "
                f"{self.python.executable}'s LIBDIR ({self.python.libdir or 'unset'}) nor in the loader's cache: "
                f"install libpython{self.python.version} (Debian/Ubuntu: libpython{self.python.version}t64 or "
                f"python{self.python.version}-dev)")

    def start(self, timeout_s: float = 240.0) -> BundledServer:
        self.preflight()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = server_env(self.root, self.python, numpy1=self.numpy1, extra=self.env_extra)
        with open(self.log_path, "wb") as log:
            # A session of its own: stop() ends the server and its stubs together.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        _STARTED.append(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(f"tritonserver exited with code {self.process.returncode} during startup; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if _get(f"http://{self.url('http')}/v2/health/ready"):
                return self
            time.sleep(0.1)
        self.stop()
        raise LaunchError(f"tritonserver not ready after {timeout_s:.0f}s; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        """Error lines first (the model status table that names a failed load
        scrolls away), then the last lines; a CPU host's CUDA noise left out."""
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [t for t in text if (t.startswith("E") or "UNAVAILABLE" in t or "Traceback" in t
                                      or "Error" in t) and not CPU_HOST_NOISE.search(t)][-15:]
        return "\n".join(errors + ["..."] + [t for t in text[-lines:] if t not in errors])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server's session (it and its stubs; in-flight requests
        finish), SIGKILL when it has not ended after `timeout_s`."""
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, None)):
            if self.process is None or self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait_s)

    def __enter__(self) -> BundledServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Every server started by this process: stopped at exit, should an error skip
#: the caller's own stop (a server in its own session outlives its parent).
_STARTED: list[BundledServer] = []


@atexit.register
def _stop_started() -> None:
    for server in _STARTED:
        server.stop(timeout_s=10)


def repository_path(root: Path, profile: str) -> Path:
    path = root / REPOSITORIES_DIR / profile
    if not path.is_dir():
        have = sorted(p.name for p in (root / REPOSITORIES_DIR).iterdir())
        raise LaunchError(f"the bundle has no {profile!r} repository (it has {have})")
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The unpacked bundle.  [default: this script's folder]")
@click.option("--profile", default="gpu", show_default=True, help="Which repository/<profile> to serve.")
@click.option("--model-config-name", default=None, metavar="NAME",
              help="Triton's --model-config-name: load <model>/configs/NAME.pbtxt where a model has one "
                   "(`cpu` serves the gpu profile without a GPU).")
@click.option("--python", "python_exe", default=sys.executable, show_default=True,
              help="The interpreter whose packages (numpy, torch) the stub uses; its version picks the stub.")
@click.option("--numpy1/--no-numpy1", default=False, show_default=True,
              help="Give the stub the bundle's numpy<2 before the interpreter's own numpy.")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Server log.  [default: <bundle>/run/tritonserver-<profile>.log]")
@click.option("--startup-timeout", type=float, default=240.0, show_default=True)
def main(bundle: Path | None, profile: str, model_config_name: str | None, python_exe: str, numpy1: bool,
         http_port: int, grpc_port: int, metrics_port: int, log_path: Path | None, startup_timeout: float) -> None:
    """Serve one repository of the bundle on 127.0.0.1 until Ctrl-C or SIGTERM."""
    try:
        root = bundle_root(bundle)
        server = BundledServer(root, repository_path(root, profile), probe_python(python_exe),
                               log_path or root / RUN_DIR / f"tritonserver-{profile}.log",
                               config_name=model_config_name, numpy1=numpy1,
                               ports=(http_port, grpc_port, metrics_port))
        click.echo(f"starting tritonserver ({profile}, CPython {server.python.version} stub) ...", err=True)
        server.start(startup_timeout)
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ready: http {server.url('http')}  grpc {server.url('grpc')}  log {server.log_path}\n"
               f"admin key (header {ADMIN_HEADER}): {server.admin_key}", err=True)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop["now"] and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()
    if server.process is not None and server.process.returncode not in (0, -signal.SIGTERM):
        raise click.ClickException(f"tritonserver exited with {server.process.returncode}:\n{server.log_tail()}")


if __name__ == "__main__":
    main()
