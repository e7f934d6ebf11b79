"""`pinrank serve`: run the bundled tritonserver on a generated repository."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from pinrank.serving.tritonserver import Ports, ServerError, TritonServer


@click.command("serve")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository/cpu"),
              show_default=True, help="Triton model repository written by `pinrank export`.")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=Path("results/tritonserver.log"),
              show_default=True, help="Server log file.")
@click.option("--startup-timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for readiness.")
def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int, log_path: Path,
          startup_timeout: float) -> None:
    """Serve the pinrank ensemble on 127.0.0.1 until Ctrl-C or SIGTERM.

    Uses the tritonserver binary bundled in the nvidia-pytriton wheel (CPU).
    For GPUs, serve `model_repository/gpu` in NVIDIA's Triton container
    instead: see `deploy/triton_container.sh`.
    """
    server = TritonServer(repository, Ports(http_port, grpc_port, metrics_port), log_path=log_path)
    try:
        server.start(timeout_s=startup_timeout)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(
        f"pinrank serving {server.model_repository}\n"
        f"  HTTP    http://127.0.0.1:{http_port}\n  gRPC    127.0.0.1:{grpc_port}\n"
        f"  metrics http://127.0.0.1:{metrics_port}/metrics\n  log     {log_path}\nCtrl-C to stop."
    )
    while not stop.wait(1.0):
        if not server.is_running():
            click.echo(f"tritonserver exited unexpectedly; last log lines:\n{server.log_tail()}", err=True)
            sys.exit(1)
    click.echo("stopping tritonserver ...")
    code = server.stop()
    click.echo(f"stopped (exit code {code})")
