"""`pinrank serve`: run the bundled tritonserver on a generated repository."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from pinrank.serving.tritonserver import (
    MODEL_CONTROL_MODES,
    Ports,
    ServerError,
    TritonServer,
    default_admin_key_file,
    is_loopback,
)
from pinrank_client.admin import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_HEADER_PREFIX


@click.command("serve")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository/cpu"),
              show_default=True, help="Triton model repository written by `pinrank export`.")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=Path("results/tritonserver.log"),
              show_default=True, help="Server log file.")
@click.option("--startup-timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for readiness.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every endpoint binds. Anything but loopback exposes an unauthenticated, "
                   "unencrypted inference API: put TLS and auth in front (docs/security.md).")
@click.option("--admin-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Where the admin key lives when ${ADMIN_KEY_ENV} is unset: read if it exists (must be "
                   "0600), else a random key is written there. Default: a per-user runtime directory, "
                   "one file per --http-port.")
@click.option("--model-control", type=click.Choice(MODEL_CONTROL_MODES), default="none", show_default=True,
              help="none: load the repository once; explicit: also accept load/unload calls (admin key); "
                   "poll: follow the repository on disk.")
def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int, log_path: Path,
          startup_timeout: float, host: str, admin_key_file: Path | None, model_control: str) -> None:
    """Serve the pinrank ensemble on 127.0.0.1 (or --host) until Ctrl-C or SIGTERM.

    Model control, model config, shared-memory, trace and logging APIs need
    the admin key (header `pinrank-admin-key`); inference, health, metadata
    and statistics don't. The key is $PINRANK_ADMIN_KEY, else the one in
    --admin-key-file (generated there on first use). Uses the tritonserver
    binary bundled in the nvidia-pytriton wheel (CPU). For GPUs, serve
    `model_repository/gpu` in NVIDIA's Triton container instead: see
    `deploy/triton_container.sh`.
    """
    if admin_key_file is None:
        admin_key_file = default_admin_key_file(http_port)
    try:
        server = TritonServer(repository, Ports(http_port, grpc_port, metrics_port), log_path=log_path, host=host,
                              admin_key_file=admin_key_file, model_control=model_control)  # type: ignore[arg-type]
        server.start(timeout_s=startup_timeout)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    where = server.admin_key_source if server.admin_key_source.startswith("$") else f"the file {admin_key_file}"
    click.echo(
        f"pinrank serving {server.model_repository}\n"
        f"  HTTP    http://{host}:{http_port}\n  gRPC    {host}:{grpc_port}\n"
        f"  metrics http://{host}:{metrics_port}/metrics\n  log     {log_path}\n"
        f"  admin   key in {where}; send it as header {ADMIN_HEADER} (gRPC: {GRPC_HEADER_PREFIX}{ADMIN_HEADER}),\n"
        f"          e.g. {ADMIN_KEY_ENV}=... pinrank-client models --url {host}:{grpc_port}\n"
        f"          model control: {model_control}\nCtrl-C to stop."
    )
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}, beyond this machine: inference is unauthenticated and "
                   "unencrypted; put TLS and auth in front (docs/security.md)", err=True)
    with _stub_watchdog(server):
        while not stop.wait(1.0):
            if not server.is_running():
                click.echo(f"tritonserver exited unexpectedly; last log lines:\n{server.log_tail()}", err=True)
                sys.exit(1)
    click.echo("stopping tritonserver ...")
    code = server.stop()
    click.echo(f"stopped (exit code {code})")


def _stub_watchdog(server: TritonServer) -> "contextlib.AbstractContextManager[object]":
    """Under explicit model control, reload a model whose Python-backend stub
    died (Triton 2.51 does not restart it, and the model stays 'ready')."""
    import contextlib
    import logging

    from pinrank.export.repository import existing_pipeline, published_models
    from pinrank.serving.model_control import StubWatchdog

    pipeline = existing_pipeline(Path(server.model_repository))
    if server.model_control != "explicit" or pipeline is None:
        return contextlib.nullcontext()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    click.echo("stub watchdog on: a model whose stub process dies is reloaded at its serving version")
    return StubWatchdog(server.http_url, server.process.pid, Path(server.model_repository),
                        published_models(pipeline), server.admin_headers)
