"""`pinrank serve`: run the bundled tritonserver on a generated repository,
keep it up (supervisor, stub watchdog) and say whether it can really serve
(health endpoint)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import click

from pinrank.repository.layout import existing_pipeline, published_models
from pinrank.serving.health_endpoint import HealthEndpoint, HealthMonitor
from pinrank.serving.model_control import StubWatchdog
from pinrank.serving.proxy import ProxySettings
from pinrank.serving.proxy_process import NginxProxy, ProxyError
from pinrank.serving.supervisor import CrashLoopError, RestartPolicy, Supervisor
from pinrank.serving.tritonserver import (
    MODEL_CONTROL_MODES,
    Ports,
    ServerError,
    TritonServer,
    default_admin_key_file,
    is_loopback,
    port_in_use,
)
from pinrank_client.admin import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_HEADER_PREFIX

log = logging.getLogger("pinrank.serve")


@click.command("serve")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository/cpu"),
              show_default=True, help="Triton model repository written by `pinrank export`.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--health-port", type=click.IntRange(0, 65535), default=8003, show_default=True,
              help="pinrank's own health view: GET /live (the supervisor runs) and GET /ready (Triton ready, "
                   "every Python-backend stub running, a canary request answered). 0: off.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=Path("results/tritonserver.log"),
              show_default=True, help="Server log file (restarts append to it).")
@click.option("--startup-timeout", type=click.FloatRange(min=0, min_open=True), default=180.0, show_default=True,
              help="Seconds to wait for readiness.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every endpoint binds. Anything but loopback exposes an unauthenticated, "
                   "unencrypted inference API: put TLS and auth in front (docs/security.md).")
@click.option("--proxy/--no-proxy", default=None,
              help="--proxy: nginx (pinrank.serving.proxy's config: body cap, no request compression, header/body "
                   "timeouts, only the pinrank ensemble, health and metadata) listens on --host at the --proxy-* "
                   "ports and tritonserver stays on 127.0.0.1. Required with a --host beyond loopback unless "
                   "--no-proxy says to expose tritonserver itself (docs/security.md).")
@click.option("--proxy-http-port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--proxy-grpc-port", type=click.IntRange(1, 65535), default=8081, show_default=True)
@click.option("--proxy-metrics-port", type=click.IntRange(1, 65535), default=8082, show_default=True)
@click.option("--admin-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Where the admin key lives when ${ADMIN_KEY_ENV} is unset: read if it exists (must be "
                   "0600), else a random key is written there. Default: a per-user runtime directory, "
                   "one file per --http-port.")
@click.option("--model-control", type=click.Choice(MODEL_CONTROL_MODES), default="none", show_default=True,
              help="none: load the repository once; explicit: also accept load/unload calls (admin key) and "
                   "reload a model whose stub process dies; poll: follow the repository on disk.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=10, show_default=True,
              help="Give up (exit 1) when tritonserver needs more restarts than this within --restart-window. "
                   "0: never give up.")
@click.option("--recycle-after-reloads", type=click.IntRange(min=0), default=5, show_default=True,
              help="Under explicit model control, restart tritonserver after the stub watchdog replaced this many "
                   "dead stubs (each leaks memory inside Triton 2.51). 0: never.")
@click.option("--restart-window", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds over which restarts are counted for --max-restarts and backoff.")
@click.option("--log-verbose", type=click.IntRange(min=0), default=0, show_default=True,
              help="Triton's log verbosity (1: each request's scheduling through the models; higher: more).")
@click.option("--trace-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trace requests into FILE.0, FILE.1, ... (Triton TIMESTAMPS traces, one request per file); "
                   "`pinrank trace FILE` prints each request's per-step timings.")
@click.option("--trace-rate", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --trace-file: trace every Nth request.")
@click.option("--model-config-name", default=None, metavar="NAME",
              help="Load <model>/configs/NAME.pbtxt where a model has one (Triton's --model-config-name), "
                   "config.pbtxt elsewhere. `cpu` serves a gpu-profile repository exported with --gpu-backend "
                   "python on a machine without a GPU.")
def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int, health_port: int, log_path: Path,
          startup_timeout: float, host: str, proxy: bool | None, proxy_http_port: int, proxy_grpc_port: int,
          proxy_metrics_port: int, admin_key_file: Path | None, model_control: str,
          max_restarts: int, recycle_after_reloads: int, restart_window: float, log_verbose: int,
          trace_file: Path | None, trace_rate: int, model_config_name: str | None) -> None:
    """Serve the pinrank ensemble on 127.0.0.1 (or --host) until Ctrl-C or SIGTERM.

    tritonserver is supervised: when it exits or hangs (liveness probe), it is
    restarted on the same ports with the same key, at once for an isolated
    failure, with backoff when failures repeat, and `pinrank serve` gives up
    after --max-restarts within --restart-window. Each restart is logged
    with its cause and the server's last log lines.

    Model control, shared-memory, trace and logging APIs need the admin key
    (header `pinrank-admin-key`); inference, health, metadata, model config
    (read) and statistics don't. The key is $PINRANK_ADMIN_KEY, else the one in
    --admin-key-file (generated there on first use). Uses the tritonserver
    binary bundled in the nvidia-pytriton wheel: it serves the cpu profile,
    and the gpu profile exported with --gpu-backend python (the ranker on the
    GPU in the Python backend). The libtorch/TensorRT gpu profiles need
    NVIDIA's Triton container: see `deploy/triton_container.sh`.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if proxy is None and not is_loopback(host):
        raise click.UsageError(f"--host {host} is beyond loopback: pass --proxy to put nginx in front (recommended: "
                               "it contains requests that crash Triton 2.51, docs/security.md), or --no-proxy to "
                               "expose tritonserver itself")
    proxy_settings = None
    if proxy:
        proxy_ports = (proxy_http_port, proxy_grpc_port, proxy_metrics_port)
        clash = set(proxy_ports) & {http_port, grpc_port, metrics_port, health_port}
        if clash or len(set(proxy_ports)) < 3:
            raise click.BadParameter(f"the proxy's ports {proxy_ports} must differ from each other and from "
                                     "Triton's and the health port", param_hint="--proxy-*-port")
        proxy_settings = ProxySettings(listen_host=host, http_port=proxy_http_port, grpc_port=proxy_grpc_port,
                                       metrics_port=proxy_metrics_port, triton_http_port=http_port,
                                       triton_grpc_port=grpc_port, triton_metrics_port=metrics_port,
                                       runtime_dir=tempfile.mkdtemp(prefix="pinrank-proxy-"), access_log="off",
                                       worker_processes=1)
        host_for_triton = "127.0.0.1"
    else:
        host_for_triton = host
    if admin_key_file is None:
        admin_key_file = default_admin_key_file(http_port)
    if health_port and health_port in (http_port, grpc_port, metrics_port):
        raise click.BadParameter(f"{health_port} is also a Triton port", param_hint="--health-port")
    if health_port and port_in_use(health_port, host):
        raise click.ClickException(f"cannot start: health port {health_port} already in use on {host} "
                                   "(pass another --health-port, or 0 for none)")
    try:
        server = TritonServer(repository, Ports(http_port, grpc_port, metrics_port), log_path=log_path,
                              host=host_for_triton,
                              admin_key_file=admin_key_file, model_control=model_control,  # type: ignore[arg-type]
                              log_verbose=log_verbose, trace_file=trace_file.resolve() if trace_file else None,
                              trace_rate=trace_rate, model_config_name=model_config_name)
        server.start(timeout_s=startup_timeout)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    nginx = None
    if proxy_settings is not None:
        try:
            nginx = NginxProxy(proxy_settings).start()
        except ProxyError as exc:
            server.stop()
            raise click.ClickException(f"cannot start the proxy: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    where = server.admin_key_source if server.admin_key_source.startswith("$") else f"the file {admin_key_file}"
    click.echo(
        f"pinrank serving {server.model_repository}\n"
        + (f"  proxy   nginx on {host}: HTTP :{proxy_http_port}, gRPC :{proxy_grpc_port}, metrics "
           f":{proxy_metrics_port} (only the pinrank ensemble, health, metadata; log {nginx.log_path})\n"
           if nginx is not None else "")
        + f"  HTTP    http://{host_for_triton}:{http_port}\n  gRPC    {host_for_triton}:{grpc_port}\n"
        f"  metrics http://{host_for_triton}:{metrics_port}/metrics\n"
        + (f"  health  http://{host}:{health_port}/ready and /live\n" if health_port else "")
        + f"  log     {log_path}\n"
        + (f"  configs configs/{model_config_name}.pbtxt where a model has one\n" if model_config_name else "")
        + (f"  trace   every {trace_rate} request(s) into {trace_file}.N; read with `pinrank trace {trace_file}`\n"
           if trace_file is not None else "")
        + f"  admin   key in {where}; send it as header {ADMIN_HEADER} (gRPC: {GRPC_HEADER_PREFIX}{ADMIN_HEADER}),\n"
        f"          e.g. {ADMIN_KEY_ENV}=... pinrank-client models --url {host}:{grpc_port}\n"
        f"          model control: {model_control}\n"
        f"  restart on exit or hang; give up after {max_restarts or 'unlimited'} restarts in {restart_window:g} s\n"
        "Ctrl-C to stop."
    )
    if not is_loopback(host_for_triton):
        click.echo(f"warning: tritonserver listens on {host}, beyond this machine, without the proxy; inference is "
                   "unauthenticated and "
                   "unencrypted; put TLS and auth in front (docs/security.md)", err=True)
    policy = RestartPolicy(max_restarts=max_restarts, window_s=restart_window)
    try:
        with ServeSession(server, policy, host, health_port,
                          recycle_after_reloads=recycle_after_reloads) as session:
            with _proxy_keeper(nginx, stop):
                session.supervisor.run(stop)
    except CrashLoopError as exc:
        click.echo(f"error: {exc}", err=True)
        server.stop()
        if nginx is not None:
            nginx.stop()
        sys.exit(1)
    if nginx is not None:
        nginx.stop()
    click.echo("stopping tritonserver ...")
    code = server.stop()
    click.echo(f"stopped (exit code {code})")


@contextlib.contextmanager
def _proxy_keeper(nginx: NginxProxy | None, stop: threading.Event) -> Iterator[None]:
    """Restart nginx if it exits (logged; it does not crash on requests, but
    an operator may kill it); nothing to do without the proxy."""
    if nginx is None:
        yield
        return
    done = threading.Event()

    def keep() -> None:
        while not (done.wait(1.0) or stop.is_set()):
            if not nginx.is_running():
                log.warning("nginx exited (%s); restarting it. Last lines:\n%s", nginx.process and
                            nginx.process.returncode, nginx.log_tail())
                try:
                    nginx.start()
                except ProxyError as exc:
                    log.error("cannot restart the proxy: %s", exc)

    t = threading.Thread(target=keep, daemon=True, name="proxy-keeper")
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


class ServeSession:
    """What `pinrank serve` runs around one supervised server: the stub
    watchdog of the current server process (rebuilt on every restart), the
    health monitor and its endpoint. Usable without the CLI (tests)."""

    def __init__(self, server: TritonServer, policy: RestartPolicy, host: str = "127.0.0.1",
                 health_port: int = 0, check_interval_s: float = 1.0, recycle_after_reloads: int = 5) -> None:
        self.server = server
        self.recycle_after_reloads = recycle_after_reloads
        self.watchdog: Any = None
        self._restarting = False
        self._stub_lost_checks = 0
        self.supervisor = Supervisor(server, policy, on_start=self._started, on_exit=self._exited,
                                     name="tritonserver")
        self.monitor = HealthMonitor(server.http_url, self._server_pid, Path(server.model_repository),
                                     interval_s=check_interval_s, on_unhealthy=self._unhealthy)
        self.endpoint = HealthEndpoint(host, health_port, self.monitor, self._live) if health_port else None
        self._stack = contextlib.ExitStack()

    def _server_pid(self) -> int | None:
        return None if self._restarting or not self.server.is_running() else self.server.pid

    def _live(self) -> tuple[bool, dict]:
        return True, {"live": True, "server_pid": self._server_pid(), "restarts": len(self.supervisor.restarts)}

    def _started(self, _child: object) -> None:
        self._restarting = False
        self._stub_lost_checks = 0
        self.watchdog = _stub_watchdog(self.server)
        if self.watchdog is not None:
            self.watchdog.__enter__()
        self.monitor.check_now()

    def _exited(self, _child: object) -> None:
        self._restarting = True
        self.monitor.mark_restarting()
        if self.watchdog is not None:
            self.watchdog.__exit__(None, None, None)
            self.watchdog = None

    def _unhealthy(self, instance: str) -> None:
        if self.watchdog is not None:
            self.watchdog.mark_unhealthy(instance)

    def _after_check(self) -> None:
        """Without a watchdog (model control none or poll) nothing brings a
        dead stub back: after two checks in a row that miss one, restart the
        whole server, a blip of about a second instead of a lasting failure."""
        v = self.monitor.verdict
        self._stub_lost_checks = self._stub_lost_checks + 1 if v.missing_stubs and self.watchdog is None else 0
        if self._stub_lost_checks >= 2:
            self._stub_lost_checks = 0
            self.supervisor.request_restart(f"Python-backend stub(s) {', '.join(v.missing_stubs)} not running "
                                            "and no stub watchdog (model control is not explicit)")
        # Triton 2.51 never finishes unloading an instance whose stub died: each
        # watchdog reload keeps about 1.5 MB in tritonserver and two zombie
        # processes. A restart every few reloads bounds both.
        dog = self.watchdog
        if dog is not None and self.recycle_after_reloads and len(dog.reloads) >= self.recycle_after_reloads:
            self.supervisor.request_restart(f"recycling after {len(dog.reloads)} stub replacements (Triton keeps "
                                            "the memory of each replaced instance)", planned=True)

    def __enter__(self) -> "ServeSession":
        self.monitor.after_check = self._after_check
        self._started(self.server)
        self._stack.enter_context(self.monitor)
        if self.endpoint is not None:
            self._stack.enter_context(self.endpoint)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._exited(self.server)


def _stub_watchdog(server: TritonServer) -> Any:
    """Under explicit model control, a StubWatchdog on this server process
    (Triton 2.51 does not restart a dead stub, and the model stays 'ready');
    None otherwise."""
    # Imported here: they pull in protobuf config parsing, which only explicit model control needs.

    pipeline = existing_pipeline(Path(server.model_repository))
    if server.model_control != "explicit" or pipeline is None or server.pid is None:
        return None
    return StubWatchdog(server.http_url, server.pid, Path(server.model_repository), published_models(pipeline),
                        server.admin_headers)
