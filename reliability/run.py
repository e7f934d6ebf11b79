"""`make reliability`: the bad-input matrix, the hostile requests that crash
Triton 2.51 (against `pinrank serve`, supervised), then model swap /
rollback, a killed Python-backend stub, a soak and a server restart, all
under load against the real server -> results/reliability.json.

Self-contained: it builds a small untrained export (seconds) so it runs in
CI; quality is not under test, which answers come back is.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import tritonclient.http as httpclient

from pinrank.backend import schema
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.dataset import load_dataset
from pinrank.repository.layout import artifact_dirs, existing_pipeline, published_models
from pinrank.serving import model_control
from pinrank.serving.model_control import StubWatchdog
from pinrank.serving.tritonserver import running_server
from reliability import faults, hostile_phase
from reliability.bad_inputs.fixtures import Fixtures
from reliability.bad_inputs.matrix import run_with_server
from testkit.export_inputs import write_random_snapshot, write_untrained_ranker

#: Error types the SDK is documented to raise; anything else is a bug.
TYPED_ERRORS = {"InvalidRequestError", "ServerUnavailableError", "RequestTimeoutError", "ModelNotReadyError",
                "AccessDeniedError", "ServerError"}


def make_probes(fixtures: Fixtures, count: int, candidates: int, history: int, seed: int = 0) -> list[dict]:
    """Valid requests of known users over known items (the swap must change their answers)."""
    ds = load_dataset(fixtures.dataset)
    users = UserSnapshot.load(fixtures.snapshot).user_ids
    rng = np.random.default_rng(seed)
    now = int(ds.train_end_ms)
    probes = []
    for _ in range(count):
        probes.append({
            "user_id": np.array([rng.choice(users)], np.int64),
            "candidate_ids": rng.choice(ds.item_ids, size=min(candidates, ds.item_ids.size), replace=False),
            "action_item_ids": rng.choice(ds.item_ids, size=history).astype(np.int64),
            "action_types": rng.integers(1, schema.NUM_ACTION_IDS, size=history).astype(np.int64),
            "action_surfaces": rng.integers(0, schema.NUM_SURFACE_IDS, size=history).astype(np.int64),
            "action_ts_ms": np.sort(now - rng.integers(60_000, 2 * 86_400_000, size=history)).astype(np.int64),
            "request_ts_ms": np.array([now], np.int64),
            "top_k": np.array([10], np.int64),
        })
    return probes


def next_day_inputs(fixtures: Fixtures, root: Path) -> tuple[Path, Path]:
    """A retrained ranker (other initial weights) and the next daily snapshot
    (every user's embedding moved), as `pinrank export` takes them."""
    root.mkdir(parents=True, exist_ok=True)
    ranker = write_untrained_ranker(root / "ranker.pt", load_dataset(fixtures.dataset), seed=1)
    snap = UserSnapshot.load(fixtures.snapshot)
    snapshot = write_random_snapshot(root / "snapshot", snap.user_ids, seed=1, scale=0.5, base=snap.user_emb,
                                     as_of_ms=int(snap.meta.get("as_of_ms", 0)) + MS_PER_DAY, version="next-day")
    return ranker, snapshot


def _export(args: list[Any]) -> None:
    cmd = [sys.executable, "-m", "pinrank.cli", "export", *[str(a) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"export failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def swap_and_rollback(server: Any, repo: Path, fixtures: Fixtures, work: Path, probes: list[dict],
                      users: int, phase_s: float) -> dict[str, Any]:
    """Publish v2 under load, switch to it, switch back to v1; count and classify every answer."""
    models = published_models(existing_pipeline(repo) or "ensemble")
    runtime = json.loads((artifact_dirs(repo, 1)["ranker"] / "manifest.json").read_text())["ranker_runtime"]
    v1 = faults.version_reference(artifact_dirs(repo, 1), runtime)
    expected: dict[str, list[dict]] = {"v1": [v1(p) for p in probes]}
    admin = httpclient.InferenceServerClient(server.http_url)
    ranker2, snapshot2 = next_day_inputs(fixtures, work / "next_day")
    load = faults.LoadGenerator(server.http_url, probes, faults.classifier(expected), users=users, retries=0)
    with load:
        time.sleep(phase_s)
        t_publish = time.monotonic()
        _export(["--ranker", ranker2, "--snapshot", snapshot2, "--data", fixtures.dataset, "--out", repo.parent,
                 "--target", repo.name, "--results", work / "export_v2.json"])
        v2 = faults.version_reference(artifact_dirs(repo, 2), runtime)
        expected["v2"] = [v2(p) for p in probes]  # the classifier reads this dict: v2 answers count from now
        t_swap0 = time.monotonic()
        swap_s = model_control.switch_version(admin, repo, 2, server.admin_headers)
        t_swap1 = time.monotonic()
        after_swap = model_control.loaded_versions(admin, models, server.admin_headers)
        time.sleep(phase_s)
        t_rb0 = time.monotonic()
        rollback_s = model_control.switch_version(admin, repo, 1, server.admin_headers)
        t_rb1 = time.monotonic()
        after_rollback = model_control.loaded_versions(admin, models, server.admin_headers)
        time.sleep(phase_s)
    out = load.snapshot()
    if all(np.allclose(a["scores"], b["scores"], atol=1e-4) for a, b in zip(expected["v1"], expected["v2"])):
        raise click.ClickException("v1 and v2 answer the probes alike: the swap check would prove nothing")
    before = faults.count(out, -np.inf, t_swap0)
    during_swap = faults.count(out, t_swap0, t_swap1)
    on_v2 = faults.count(out, t_swap1, t_rb0)
    during_rb = faults.count(out, t_rb0, t_rb1)
    on_v1 = faults.count(out, t_rb1)
    return {
        "models_switched": list(models),
        "publish_s": round(t_swap0 - t_publish, 2), "swap_s": round(swap_s, 3), "rollback_s": round(rollback_s, 3),
        "loaded_after_swap": after_swap, "loaded_after_rollback": after_rollback,
        "answers": {"before_swap": before, "during_swap": during_swap, "after_swap": on_v2,
                    "during_rollback": during_rb, "after_rollback": on_v1},
        "swap_failed_requests": faults.failures(before) + faults.failures(during_swap) + faults.failures(on_v2),
        "rollback_failed_requests": faults.failures(during_rb) + faults.failures(on_v1),
        "mixed_version_answers": sum(c.get("other", 0) for c in (before, during_swap, on_v2, during_rb, on_v1)),
        "before_swap_all_v1": set(before) == {"v1"},
        "after_swap_all_v2": set(on_v2) == {"v2"},
        "after_rollback_all_v1": set(on_v1) == {"v1"},
        "requests": len(out),
    }


def stub_kill(server: Any, repo: Path, probes: list[dict], users: int, phase_s: float) -> dict[str, Any]:
    """SIGKILL one stub under load. Triton 2.51 does not restart it; the
    StubWatchdog reloads the model. SDK retries on."""
    found = model_control.stubs(server.process.pid)
    model = schema.RANKER_MODEL if any(s.model == schema.RANKER_MODEL for s in found) else schema.ENSEMBLE_MODEL
    serving = model_control.loaded_versions(httpclient.InferenceServerClient(server.http_url), (model,),
                                            server.admin_headers)[model]
    victims = sorted(s.pid for s in found if s.model == model and s.version in serving)
    if not victims:
        raise click.ClickException(f"no Python-backend stub of {model!r} found under pid {server.process.pid}")
    models = published_models(existing_pipeline(repo) or "ensemble")
    load = faults.LoadGenerator(server.http_url, probes, faults.any_answer, users=users, retries=2)
    with StubWatchdog(server.http_url, server.process.pid, repo, models, server.admin_headers) as dog, load:
        time.sleep(phase_s)
        t_kill = time.monotonic()
        faults.kill(victims[0])
        faults.wait_for(lambda: bool(dog.reloads), timeout_s=60)
        healed = faults.wait_for(lambda: victims[0] not in model_control.stub_pids(server.process.pid, model)
                                 and len(model_control.stub_pids(server.process.pid, model)) >= len(victims), 60)
        time.sleep(phase_s)
    out = load.snapshot()
    after = faults.count(out, t_kill)
    return {"model": model, "killed_pid": victims[0], "stubs_before": [vars(s) for s in found],
            "stubs_after": [vars(s) for s in model_control.stubs(server.process.pid)], "watchdog_reloads": dog.reloads,
            "stubs_back": healed is not None,
            "recovery_s": faults.first_success_after(out, t_kill), "answers_after_kill": after,
            "failed_requests": sum(n for label, n in after.items() if label != "ok"),
            "untyped_errors": sum(n for label, n in after.items() if label not in TYPED_ERRORS | {"ok"})}


def soak(server: Any, probes: list[dict], users: int, minutes: float) -> dict[str, Any]:
    load = faults.LoadGenerator(server.http_url, probes, faults.any_answer, users=users, retries=0)
    with load, faults.rss_sampler(server.process.pid, every_s=max(0.5, minutes * 60 / 120)) as samples:
        time.sleep(minutes * 60)
    out = load.snapshot()
    counts = faults.count(out)
    rss = [r for _, r in samples]
    return {"soak_minutes": minutes, "requests": len(out), "failed_requests": len(out) - counts.get("ok", 0),
            "rss_mb_first": round(rss[0], 1), "rss_mb_last": round(rss[-1], 1), "rss_mb_max": round(max(rss), 1),
            "rss_samples": len(rss), "soak_rss_growth_pct": faults.rss_growth_pct(samples)}


def restart(server: Any, probes: list[dict], users: int, phase_s: float, timeout_s: float = 5.0,
            retries: int = 3) -> dict[str, Any]:
    """SIGKILL the whole server under load, start it again on the same ports."""
    load = faults.LoadGenerator(server.http_url, probes, faults.any_answer, users=users, retries=retries,
                                timeout_s=timeout_s)
    with load:
        time.sleep(phase_s)
        t_kill = time.monotonic()
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        server.start()
        faults.wait_for(lambda: faults.first_success_after(load.snapshot(), t_kill) is not None, timeout_s=60)
        time.sleep(phase_s)
    out = load.snapshot()
    after = faults.count(out, t_kill)
    recovered = faults.first_success_after(out, t_kill)
    bound = timeout_s * (retries + 1) + 0.2 * retries + faults.HANG_MARGIN_S
    return {"restart_recovery_s": recovered, "answers_after_kill": after,
            "typed_errors": sum(n for label, n in after.items() if label in TYPED_ERRORS),
            "untyped_errors": sum(n for label, n in after.items() if label not in TYPED_ERRORS | {"ok"}),
            "hung_calls": sum(1 for o in out if o.t_end - o.t_start > bound), "call_bound_s": bound}


def run(work: Path, out: Path, soak_minutes: float, users: int, phase_s: float, hostile: bool = True,
        reloads: int = 20) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    fixtures = Fixtures(work / "fixtures")
    t0 = time.monotonic()
    click.echo("bad-input matrix ...")
    matrix = run_with_server(work / "bad_inputs", fixtures.repository, log_path=work / "tritonserver-matrix.log")
    click.echo(f"  {matrix['bad_inputs_clear_error']}/{matrix['bad_inputs_total']} clear, "
               f"ready after all: {matrix['server_ready_after_all']}")
    serve = work / "serve"
    shutil.rmtree(serve, ignore_errors=True)
    repo = fixtures.repository_copy(serve / "cpu")
    probes = make_probes(fixtures, count=16, candidates=100, history=20)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bad_inputs_total": matrix["bad_inputs_total"],
        "bad_inputs_clear_error": matrix["bad_inputs_clear_error"],
        "bad_inputs_by_surface": matrix["by_surface"], "bad_inputs_unclear": matrix["unclear"],
        "load_users": users,
    }
    if hostile:
        shutil.rmtree(work / "hostile", ignore_errors=True)
        report["hostile"] = hostile_phase.run(fixtures.repository_copy(work / "hostile" / "cpu"), work / "hostile",
                                              probes, users, phase_s, reloads, log=click.echo)
        report.update({k: report["hostile"][k] for k in HOSTILE_KEYS})
    with running_server(repo, model_control="explicit", log_path=work / "tritonserver.log") as server:
        click.echo("swap to a new version under load, then roll back ...")
        report["swap"] = swap_and_rollback(server, repo, fixtures, work, probes, users, phase_s)
        click.echo(f"  {report['swap']['requests']} requests, failed: swap "
                   f"{report['swap']['swap_failed_requests']}, rollback {report['swap']['rollback_failed_requests']}; "
                   f"answers: {report['swap']['answers']}")
        click.echo("kill a Python-backend stub under load ...")
        report["stub_kill"] = stub_kill(server, repo, probes, users, phase_s)
        click.echo(f"  recovered in {report['stub_kill']['recovery_s']} s, "
                   f"answers after: {report['stub_kill']['answers_after_kill']}")
        click.echo(f"soak {soak_minutes:g} min ...")
        report["soak"] = soak(server, probes, users, soak_minutes)
        click.echo(f"  {report['soak']['requests']} requests, {report['soak']['failed_requests']} failed, "
                   f"RSS {report['soak']['rss_mb_first']} -> {report['soak']['rss_mb_last']} MiB "
                   f"({report['soak']['soak_rss_growth_pct']:+.2f}%)")
        click.echo("kill -9 the server under load and restart it ...")
        report["restart"] = restart(server, probes, users, phase_s)
        click.echo(f"  recovered in {report['restart']['restart_recovery_s']} s, "
                   f"answers after: {report['restart']['answers_after_kill']}")
        ready_at_end = server.is_ready()
    report.update({
        "server_ready_after_all": bool(matrix["server_ready_after_all"] and ready_at_end),
        "swap_failed_requests": report["swap"]["swap_failed_requests"],
        "rollback_failed_requests": report["swap"]["rollback_failed_requests"],
        "restart_recovery_s": report["restart"]["restart_recovery_s"],
        "soak_minutes": soak_minutes,
        "soak_rss_growth_pct": report["soak"]["soak_rss_growth_pct"],
        "seconds": round(time.monotonic() - t0, 1),
    })
    report["targets"] = targets(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    return report


#: The hostile phase's headline figures, copied to the top of the report.
HOSTILE_KEYS = ("server_crashes_contained", "crash_requests", "valid_failures_during_crashes", "crash_recovery_s",
                "stub_processes_leaked", "rss_growth_after_reloads_pct", "step_model_bad_inputs_rejected",
                "step_model_bad_inputs")
#: Issue 16's targets: a crash is back within this many seconds ...
CRASH_RECOVERY_TARGET_S = 2.0
#: ... and 20 forced reloads grow the server tree's RSS by at most this much.
RELOAD_RSS_TARGET_PCT = 5.0


def targets(report: dict[str, Any]) -> dict[str, bool]:
    """Issue 16's measured targets, met or missed (a miss is reported, with
    the figure, not hidden; containment failures are in `verdict`)."""
    if "hostile" not in report:
        return {}
    recovery = report["crash_recovery_s"]
    return {f"crash_recovery_s <= {CRASH_RECOVERY_TARGET_S:g}": recovery is not None
            and recovery <= CRASH_RECOVERY_TARGET_S,
            "valid_failures_during_crashes == 0": report["valid_failures_during_crashes"] == 0,
            f"rss_growth_after_reloads_pct <= {RELOAD_RSS_TARGET_PCT:g}":
                report["rss_growth_after_reloads_pct"] <= RELOAD_RSS_TARGET_PCT}


def verdict(report: dict[str, Any]) -> list[str]:
    """What the report shows to be wrong (empty = all good)."""
    problems = []
    if "hostile" in report:
        h = report["hostile"]
        if h["server_crashes_contained"] != h["crash_requests"]:
            problems.append(f"crashes not contained: {[c for c in h['crash_cases'] if not c['contained']]}")
        if h["stub_processes_leaked"]:
            problems.append(f"{h['stub_processes_leaked']} stub processes leaked after {h['reloads']['reloads']} "
                            "reloads")
        if h["step_model_unclear"]:
            problems.append(f"step models served or answered unclearly: {h['step_model_unclear']}")
        if not h["ready_after_hostile"]:
            problems.append("pinrank serve not ready after the hostile phase")
    if report["bad_inputs_clear_error"] != report["bad_inputs_total"]:
        problems.append(f"unclear bad-input answers: {report['bad_inputs_unclear']}")
    if not report["server_ready_after_all"]:
        problems.append("server not ready after all scenarios")
    for key in ("swap_failed_requests", "rollback_failed_requests"):
        if report[key]:
            problems.append(f"{key} = {report[key]}")
    swap = report["swap"]
    if swap["mixed_version_answers"]:
        problems.append(f"{swap['mixed_version_answers']} answers matched neither version: {swap['answers']}")
    for key in ("before_swap_all_v1", "after_swap_all_v2", "after_rollback_all_v1"):
        if not swap[key]:
            problems.append(f"{key} is false: {swap['answers']}")
    if report["restart_recovery_s"] is None:
        problems.append("the server did not recover after the restart")
    for scenario in ("restart", "stub_kill"):
        if report[scenario]["untyped_errors"]:
            problems.append(f"{scenario}: untyped client errors {report[scenario]['answers_after_kill']}")
    if report["restart"]["hung_calls"]:
        problems.append(f"restart: {report['restart']['hung_calls']} hung calls")
    if report["stub_kill"]["recovery_s"] is None or not report["stub_kill"]["stubs_back"]:
        problems.append(f"the killed stub was not replaced: {report['stub_kill']}")
    return problems


@click.command()
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("results/reliability.json"),
              show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/reliability"),
              show_default=True, help="Fixtures, the served repository copy and server logs.")
@click.option("--soak-minutes", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Length of the soak under load (RSS sampled ~120 times).")
@click.option("--users", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Closed-loop SDK clients generating load in every scenario.")
@click.option("--phase-seconds", "phase_s", type=click.FloatRange(min=0.5), default=3.0, show_default=True,
              help="Load before and after each change (swap, rollback, kills).")
@click.option("--hostile/--no-hostile", default=True, show_default=True,
              help="The hostile-input phase: crash requests against a supervised `pinrank serve`, bad inputs "
                   "straight to the step models, forced reloads.")
@click.option("--reloads", type=click.IntRange(1, 200), default=20, show_default=True,
              help="Forced reloads of every Python-backend model in the hostile phase (stub leak and RSS check).")
def main(out: Path, workdir: Path, soak_minutes: float, users: int, phase_s: float, hostile: bool,
         reloads: int) -> None:
    """Bad inputs, model swap and rollback, a killed stub, a soak and a server
    restart, all under load on the real server; writes OUT and exits 1 when a
    scenario failed (the problems are listed)."""
    report = run(workdir, out, soak_minutes, users, phase_s, hostile, reloads)
    click.echo(f"wrote {out} ({report['seconds']} s)")
    for target, met in targets(report).items():
        click.echo(f"target {target}: {'met' if met else 'MISSED'}")
    problems = verdict(report)
    for p in problems:
        click.echo(f"FAIL: {p}", err=True)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
