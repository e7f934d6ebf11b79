"""`pinrank rollout`: the command the daily loop's last step runs."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Iterator

import click

from pinrank.data.dataset import DatasetError
from pinrank.rollout.canary import CanaryPolicy
from pinrank.rollout.fleet import TritonReplica, resolve_fleet
from pinrank.rollout.procedure import RolloutOptions, run_rollout
from pinrank.rollout.replay import requests_from_dataset
from pinrank.serving.tritonserver import ServerError, resolve_admin_key
from pinrank_client import schema
from pinrank_client.admin import ADMIN_KEY_ENV, admin_headers


class Stopped(Exception):
    """SIGTERM or Ctrl-C during a rollout: an exception like any failure, so the fleet is rolled back."""


def _stop(signum: int, _frame: object) -> None:
    # The rollback that follows must not be cut short by the next signal (Kubernetes sends SIGKILL after
    # the pod's grace period anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def _rollback_on_signals() -> Iterator[None]:
    before = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _admin_key(key_file: Path | None) -> str:
    try:
        key, source = resolve_admin_key(None, key_file)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    if source == "generated":  # a key nobody's servers know opens nothing
        raise click.ClickException(f"no admin key: set ${ADMIN_KEY_ENV} or pass --admin-key-file (the key the "
                                   "replicas' `pinrank serve` uses)")
    return key


@click.command("rollout", epilog="""\b
Exit codes:
  0  every replica serves the target version (rolled out, or already served it)
  1  failed: refused at preflight (nothing switched), or a switch failed and
     every replica was rolled back (--report says which replica failed)
  2  bad usage
  3  rolled back: the canary failed (reasons on stdout and in --report)
  4  a rollback did not complete: the fleet needs a person (--report says where)""")
@click.option("--repository", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The model repository every replica serves: one directory they share (a ReadWriteMany "
                   "volume in Kubernetes), the OUT/cpu or OUT/gpu of `pinrank export`. Switches edit its "
                   "configs, which a replica that restarts then loads.")
@click.option("--fleet", default=None, metavar="ADDR[,ADDR...]",
              help="Each replica's tritonserver HTTP address (host:port), comma-separated; the first is the "
                   "canary.")
@click.option("--fleet-dns", default=None, metavar="HOST:PORT",
              help="A Kubernetes headless Service: every address HOST resolves to (one per ready pod; "
                   "getaddrinfo, no API access) at PORT is a replica; the lowest address is the canary.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="The version to roll out  [default: the highest in the repository].")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Dataset whose action log the canary replays (users, their real history, catalogue items).")
@click.option("--canary-requests", type=click.IntRange(min=1), default=40, show_default=True,
              help="Requests timed on the canary and on an old replica (after --canary-warmup more).")
@click.option("--canary-warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Requests each side answers first, checked but not timed.")
@click.option("--canary-candidates", type=click.IntRange(1, schema.MAX_CANDIDATES), default=200,
              show_default=True, help="Candidates per canary request.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="top_k of the canary requests.")
@click.option("--max-latency-ratio", type=click.FloatRange(min=1.0), default=1.5, show_default=True,
              help="The canary fails when its p99 exceeds this x the old version's p99 + --latency-slack-ms.")
@click.option("--latency-slack-ms", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
              help="Absolute slack on the latency bound: scheduling noise on a busy host.")
@click.option("--max-p99-ms", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Also fail the canary when its p99 exceeds this.")
@click.option("--latency-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="When the canary fails on latency alone, measure it again up to this many times before "
                   "failing it: a real regression repeats, a scheduling spike on a busy host does not.")
@click.option("--force-canary-failure", is_flag=True,
              help="A rollback drill: measure the canary for real, then fail it, so the run ends rolled back "
                   "(exit 3). Never in a scheduled run.")
@click.option("--admin-key-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=f"The replicas' admin key when ${ADMIN_KEY_ENV} is unset (a 0600 file of this user).")
@click.option("--request-timeout", type=click.FloatRange(min=0.0, min_open=True), default=10.0,
              show_default=True, help="Seconds per ranking request.")
@click.option("--switch-timeout", type=click.FloatRange(min=0.0, min_open=True), default=600.0,
              show_default=True, help="Seconds one load call of a switch may take.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which log moments the canary replays.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the outcome, versions before/after per replica, canary figures and steps as JSON.")
def rollout(repository: Path, fleet: str | None, fleet_dns: str | None, version: int | None, data: Path,
            canary_requests: int, canary_warmup: int, canary_candidates: int, top_k: int, max_latency_ratio: float,
            latency_slack_ms: float, max_p99_ms: float | None, latency_retries: int, force_canary_failure: bool,
            admin_key_file: Path | None, request_timeout: float, switch_timeout: float, seed: int,
            report_path: Path | None) -> None:
    """Roll a published version out to a fleet of `pinrank serve --model-control explicit` replicas that
    share one repository: switch a canary, check it on replayed requests against an old replica (errors, the
    answer contract, p99 latency), then switch the others one at a time; roll back when the canary or a switch
    fails.

    Each replica's switch is atomic (requests in flight finish on the old
    version), so no request fails or sees a half-switched replica; while it
    runs, a Service in front mixes old and new replicas, each answering
    consistently (docs: pinrank/rollout/__init__.py).
    """
    try:
        addresses = resolve_fleet(fleet, fleet_dns)
        requests = requests_from_dataset(data, canary_warmup + canary_requests, candidates=canary_candidates,
                                         top_k=top_k, seed=seed)
    except (ValueError, DatasetError) as exc:
        raise click.UsageError(str(exc)) from None
    headers = admin_headers(_admin_key(admin_key_file))
    replicas = [TritonReplica(a, repository, headers, request_timeout_s=request_timeout,
                              switch_timeout_s=switch_timeout) for a in addresses]
    options = RolloutOptions(version=version, warmup=canary_warmup, force_canary_failure=force_canary_failure,
                             policy=CanaryPolicy(max_latency_ratio, latency_slack_ms, max_p99_ms),
                             latency_retries=latency_retries)
    try:
        with _rollback_on_signals():
            report = run_rollout(repository, replicas, requests, options, say=click.echo)
    finally:
        for replica in replicas:
            replica.close()
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(report["exit_code"])
