"""Headless load test of the `pinrank` ensemble: locust at several concurrency
levels, then one longer run at the level of best throughput, with a report.

    .venv/bin/python loadtest/run_loadtest.py                      # starts a server on model_repository/cpu
    .venv/bin/python loadtest/run_loadtest.py --url http://127.0.0.1:8000 --users 1,2,4 --duration 120

Writes (under --out-dir, default results/): loadtest.json (the longer run's
rps, p50/p95/p99, failures, users, duration_s, and every level), loadtest.png
(latency and throughput vs concurrency) and loadtest/ (locust's CSV and HTML
per run). With --max-p99-ms / --max-failure-ratio it exits with status 1 when
the longer run misses them (an SLO gate for CI; slo.py, the same rule a plain
locust run applies). It stops with an error when the URL is not a ready
pinrank server over HTTP, or when a run has no successful request; every
exception a call raised counts as a failure.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import click
import numpy as np

from pinrank.export.configs import parse_instance_counts
from pinrank.repository.pbtxt import read_config, write_config
from pinrank.serving.tritonserver import ServerError, running_server
from pinrank_client import PinrankError, RankingClient, schema

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # request_pool when run as a script or imported by tests

from request_pool import RequestPool, pool_from_dataset  # noqa: E402
from slo import MAX_FAILURE_RATIO_ENV, MAX_P99_ENV, violations  # noqa: E402


@dataclass(frozen=True)
class LevelStats:
    """locust's aggregate figures for one run."""

    users: int
    duration_s: float
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "failure_ratio": self.failure_ratio}


def read_locust_stats(stats_csv: Path, users: int, duration_s: float) -> LevelStats:
    """The "Aggregated" row of a locust `<prefix>_stats.csv`, plus every task
    error of `<prefix>_exceptions.csv` as a failed request: an exception is a
    call that did not succeed, whichever way locust filed it."""
    with open(stats_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if not rows:
        raise click.ClickException(f"{stats_csv}: no Aggregated row (did locust send any request?)")
    r = rows[0]

    def num(col: str) -> float:
        # locust writes "N/A" for percentiles of a run without requests
        return float(r[col]) if r[col] not in ("", "N/A") else float("nan")

    errors = task_errors(Path(str(stats_csv).removesuffix("_stats.csv") + "_exceptions.csv"))
    return LevelStats(users=users, duration_s=duration_s, requests=int(r["Request Count"]) + errors,
                      failures=int(r["Failure Count"]) + errors, rps=num("Requests/s"), p50_ms=num("50%"),
                      p95_ms=num("95%"), p99_ms=num("99%"), max_ms=num("Max Response Time"),
                      mean_ms=num("Average Response Time"))


def task_errors(exceptions_csv: Path) -> int:
    """How many exceptions escaped locust tasks (0 when the file is absent)."""
    if not exceptions_csv.exists():
        return 0
    with open(exceptions_csv, newline="") as f:
        return sum(int(row.get("Count") or 0) for row in csv.DictReader(f))


def first_failure(prefix: Path) -> str:
    """The first failure or task error locust recorded for a run, for the report."""
    for suffix, column in (("_failures.csv", "Error"), ("_exceptions.csv", "Message")):
        path = Path(f"{prefix}{suffix}")
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get(column):
                        return row[column].strip().splitlines()[0][:300]
    return "no error recorded"


def best_level(levels: list[LevelStats]) -> LevelStats:
    """Highest throughput among the levels without failures (all levels if every one failed)."""
    clean = [lv for lv in levels if lv.failures == 0] or levels
    return max(clean, key=lambda lv: lv.rps)


def slo_violations(stats: LevelStats, max_p99_ms: float | None, max_failure_ratio: float | None) -> list[str]:
    return violations(stats.requests, stats.failures, stats.p99_ms, max_p99_ms=max_p99_ms,
                      max_failure_ratio=max_failure_ratio)


def summary(final: LevelStats, levels: list[LevelStats], url: str, pool: RequestPool) -> dict:
    n, h = pool.candidate_counts(), pool.history_lengths()

    def dist(a: np.ndarray) -> dict[str, float]:
        return {"min": int(a.min()), "p50": float(np.median(a)), "mean": float(a.mean()), "max": int(a.max())}

    return {
        **final.to_dict(),
        "url": url,
        "levels": [lv.to_dict() for lv in levels],
        "best_sweep_users": best_level(levels).users,
        "requests_pool": {"size": len(pool), "candidates": dist(n), "history_len": dist(h)},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }


def plot(levels: list[LevelStats], path: Path, final: LevelStats | None = None) -> Path:
    """Latency percentiles and throughput against the offered load (closed-loop
    users, one tick per level, so a single level is a readable bar, not a dot
    on a fractional axis); the longer final run, when there was one, as hollow
    markers at its level."""
    import matplotlib  # noqa: PLC0415 - only the chart needs it: keeps it out of the tests' and bench.py's imports

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - only after matplotlib.use("Agg") (headless backend)

    users = [lv.users for lv in levels]
    x = np.arange(len(levels))
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"p50_ms": "tab:blue", "p95_ms": "tab:orange", "p99_ms": "tab:red"}
    for key, color in colors.items():
        lat.plot(x, [getattr(lv, key) for lv in levels], marker="o", color=color, label=key[:3] + " (sweep)")
    thr.bar(x, [lv.rps for lv in levels], color="tab:green", alpha=0.7,
            label=f"sweep ({levels[0].duration_s:g} s each)")
    if final is not None and final.users in users:
        at = users.index(final.users)
        for key, color in colors.items():
            lat.plot([at], [getattr(final, key)], marker="o", markersize=11, markerfacecolor="none", color=color,
                     linestyle="none", label=f"{key[:3]} (final, {final.duration_s:g} s)")
        thr.plot([at], [final.rps], marker="D", markersize=9, color="black", linestyle="none",
                 label=f"final run ({final.duration_s:g} s)")
    for ax in (lat, thr):
        ax.set_xticks(x, [str(u) for u in users])
        ax.set_xlim(-0.6, len(levels) - 0.4)
        ax.set_xlabel("offered load: concurrent users (closed loop)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lat.set(ylabel="latency (ms)", title="latency percentiles vs load")
    lat.set_ylim(bottom=0)
    thr.set(ylabel="requests / s", title="throughput vs load")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_locust(url: str, users: int, duration_s: float, prefix: Path, pool_path: Path,
               html: bool = True, gates: dict[str, float | None] | None = None) -> LevelStats:
    """One headless locust run in its own process (gevent's monkey-patching
    stays out of this one, which manages the server). A run in which nothing
    succeeded stops the load test: its figures would describe errors."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{duration_s:g}s", "--host", url,
           "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10"]
    if html:
        cmd += ["--html", str(prefix) + ".html"]
    env = {**os.environ, "PINRANK_REQUEST_POOL": str(pool_path)}
    for key, value in ((MAX_P99_ENV, (gates or {}).get("max_p99_ms")),
                       (MAX_FAILURE_RATIO_ENV, (gates or {}).get("max_failure_ratio"))):
        env.pop(key, None)
        if value is not None:
            env[key] = repr(value)
    # locust's exit code is its SLO gate (locustfile.py); the CSV carries the figures.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration_s + 120)
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        raise click.ClickException(f"locust wrote no {stats_csv} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    stats = read_locust_stats(stats_csv, users, duration_s)
    if stats.requests == 0 or stats.failures >= stats.requests:
        raise click.ClickException(
            f"no request succeeded against {url} with {users} user(s) ({stats.failures}/{stats.requests} failed; "
            f"first error: {first_failure(prefix)}); see {prefix}_*.csv")
    return stats


STEPS = (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL)


@contextlib.contextmanager
def target_url(url: str | None, repository: Path, log_path: Path,
               instances: dict[str, int] | None = None) -> Iterator[str]:
    """The given URL, or a server started on `repository` (with `instances`
    = {model: count} when given: a copy's configs change, not the repository's)."""
    if url:
        yield url if "://" in url else f"http://{url}"
        return
    with tempfile.TemporaryDirectory() as tmp:
        if instances:
            repository = with_instances(repository, Path(tmp) / "repo", instances)
        click.echo(f"starting tritonserver on {repository} (log: {log_path}) ...")
        try:
            with running_server(repository, log_path=log_path) as server:
                yield f"http://{server.http_url}"
        except ServerError as exc:
            raise click.ClickException(str(exc)) from None


def check_target(url: str) -> None:
    """Refuse a URL that is not a ready pinrank server over HTTP (a gRPC port,
    a typo, a server still loading) before measuring anything."""
    wrong = (f"{url} does not answer as a pinrank server over HTTP; --url takes the server's HTTP address "
             "(default port 8000), not its gRPC one")
    try:
        with RankingClient(url, protocol="http", timeout_s=10, retries=1) as client:
            health = client.health()
            if not health.live:
                raise click.ClickException(f"{wrong} ({health.error})")
            if not health.model_ready:
                raise click.ClickException(f"{url} is not ready to rank ({health}); wait for it or check its log")
            problems = client.check_contract()
    except PinrankError as exc:
        raise click.ClickException(f"{wrong} ({exc})") from None
    if problems:
        raise click.ClickException(f"{url} serves another contract: {'; '.join(problems)}")


def warm_up(url: str, pool: RequestPool, count: int) -> None:
    """Untimed requests first: one-off costs (first calls into each model,
    connection setup) would otherwise land in the first level's tail."""
    with RankingClient(url, protocol="http", timeout_s=30) as client:
        for req in pool.requests()[:count]:
            try:
                client.rank_request(req)
            except PinrankError as exc:
                raise click.ClickException(f"warm-up request failed against {url}: {exc}") from None


def with_instances(src: Path, dst: Path, counts: dict[str, int]) -> Path:
    """A copy of repository `src` whose models run `counts[model]` instances."""
    shutil.copytree(src, dst, symlinks=True)
    for model, count in counts.items():
        path = dst / model / "config.pbtxt"
        cfg = read_config(path)
        cfg.instance_group[0].count = count
        write_config(path, cfg)
    return dst


def parse_instances(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[tuple[int, int, int]]:
    """'PRE:RANKER:POST[,...]' instance counts."""
    if value is None:
        return []
    try:
        out = [parse_instance_counts(c) for c in value.split(",") if c.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not out:
        raise click.BadParameter(f"expected PRE:RANKER:POST instance counts, comma-separated, got {value!r}")
    return out


def parse_users(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        users = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not users or users[0] < 1:
        raise click.BadParameter("need at least one level, each >= 1")
    return users


@click.command()
@click.option("--url", default=None, help="HTTP URL of a running server (e.g. http://127.0.0.1:8000). "
              "Default: start the bundled tritonserver on --repository for the run.")
@click.option("--repository", type=click.Path(path_type=Path, file_okay=False), default=Path("model_repository/cpu"),
              show_default=True, help="Repository to serve when no --url is given.")
@click.option("--instances", default=None, callback=parse_instances, metavar="PRE:RANKER:POST",
              help="Instance counts per step for the started server (default: the repository's).")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("artifacts/data/quick"), show_default=True,
              help="Dataset whose eval-period actions the requests replay (users, histories, items).")
@click.option("--users", "levels", default="1,2,4,8", show_default=True, callback=parse_users,
              help="Concurrency levels of the sweep (comma-separated closed-loop users).")
@click.option("--sweep-duration", type=click.FloatRange(min=1), default=20, show_default=True,
              help="Seconds per sweep level.")
@click.option("--duration", type=click.FloatRange(min=0), default=120, show_default=True,
              help="Seconds of the final run at the sweep's best-throughput level (0: report that level instead).")
@click.option("--pool-size", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Distinct requests replayed (drawn at random per call).")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True,
              help="Untimed requests before the sweep.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-p99-ms", type=float, default=None, help="SLO gate: exit 1 if the final run's p99 exceeds this.")
@click.option("--max-failure-ratio", type=float, default=None,
              help="SLO gate: exit 1 if the final run's failed/total exceeds this (0 = no failure allowed).")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results"),
              show_default=True)
def main(url: str | None, repository: Path, instances: list[tuple[int, int, int]], data: Path, levels: list[int],
         sweep_duration: float, duration: float, pool_size: int, warmup: int, seed: int, max_p99_ms: float | None,
         max_failure_ratio: float | None, out_dir: Path) -> None:
    """Sweep concurrency with locust against the pinrank ensemble, rerun the
    best level for --duration, write the report, apply the SLO gate."""
    work = out_dir / "loadtest"
    work.mkdir(parents=True, exist_ok=True)
    pool = pool_from_dataset(data, pool_size, seed=seed)
    # The pool is rebuilt from --data and --seed on every run: it lives only as long as the run.
    pool_dir = tempfile.TemporaryDirectory(prefix="pinrank-loadtest-")
    pool_path = pool.save(Path(pool_dir.name) / "requests.npz")
    n, h = pool.candidate_counts(), pool.history_lengths()
    click.echo(f"{len(pool)} requests from {data}: candidates {n.min()}-{n.max()} (median {np.median(n):.0f}), "
               f"history {h.min()}-{h.max()} actions (mean {h.mean():.0f})")
    if len(instances) > 1:
        raise click.BadParameter("give one PRE:RANKER:POST", param_hint="--instances")
    counts = dict(zip(STEPS, instances[0])) if instances else None
    gates = {"max_p99_ms": max_p99_ms, "max_failure_ratio": max_failure_ratio}
    with pool_dir, target_url(url, repository, work / "tritonserver.log", counts) as target:
        check_target(target)
        if warmup:
            warm_up(target, pool, warmup)
        sweep = []
        for users in levels:
            click.echo(f"sweep: {users} user(s) for {sweep_duration:g} s ...", nl=False)
            t = time.monotonic()
            lv = run_locust(target, users, sweep_duration, work / f"u{users}", pool_path)  # the sweep is not gated
            sweep.append(lv)
            click.echo(f" {lv.rps:.1f} req/s, p50 {lv.p50_ms:.0f} / p95 {lv.p95_ms:.0f} / p99 {lv.p99_ms:.0f} ms, "
                       f"{lv.failures} failures ({time.monotonic() - t:.0f} s)")
        best = best_level(sweep)
        if duration > 0:
            click.echo(f"final: {best.users} user(s) (best sweep throughput) for {duration:g} s ...")
            final = run_locust(target, best.users, duration, work / "final", pool_path, gates=gates)
        else:
            final = best
    report = summary(final, sweep, target, pool)
    report["instances"] = counts or "repository's"
    violations = slo_violations(final, max_p99_ms, max_failure_ratio)
    report["slo"] = {"max_p99_ms": max_p99_ms, "max_failure_ratio": max_failure_ratio,
                     "violations": violations, "passed": not violations}
    (out_dir / "loadtest.json").write_text(json.dumps(report, indent=2))
    chart = plot(sweep, out_dir / "loadtest.png", final if duration > 0 else None)
    click.echo(f"\n{'users':>5} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'failures':>9}")
    for lv in sweep:
        click.echo(f"{lv.users:>5} {lv.rps:8.1f} {lv.p50_ms:7.0f} {lv.p95_ms:7.0f} {lv.p99_ms:7.0f} {lv.failures:>9}")
    click.echo(f"final: {final.users} users, {final.duration_s:g} s: {final.rps:.1f} req/s, p50 {final.p50_ms:.0f} ms, "
               f"p95 {final.p95_ms:.0f} ms, p99 {final.p99_ms:.0f} ms, {final.failures}/{final.requests} failed")
    click.echo(f"wrote {out_dir / 'loadtest.json'}, {chart}, {work}/")
    if violations:
        click.echo("SLO gate failed: " + "; ".join(violations), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
