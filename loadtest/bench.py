"""What the serving design costs, on identical requests (`make bench`):

  a. one request (N=500, L=100, one client, sequential) in-process with the
     ranker in eager PyTorch, TorchScript and ONNX Runtime (the exported
     files the repository serves), vs Triton over HTTP and gRPC in both cpu
     layouts: the ensemble and the single-model pipeline (the other layout is
     republished from the repository's own artifacts), interleaved in rounds;
  b. where the ensemble's time goes: Triton's statistics API per composing
     model (preprocess, ranker, postprocess) over the HTTP run of (a);
  c. early fusion (sequence encoder per candidate) vs the fused ranker
     (encoder once per request) at N = 100, 500, 1000;
  d. throughput (locust, closed loop) for several instance counts per step,
     and for the single-model pipeline;
  e. a cross-check by Triton's own perf_analyzer: the served repository,
     the same replayed requests and concurrency levels, measured by locust
     and by perf_analyzer on one server, side by side (loadtest/perf_analyzer.py).

    .venv/bin/python loadtest/bench.py --repository model_repository/cpu \
        --ranker artifacts/checkpoints/ranker.pt --data artifacts/data/quick

Writes results/bench.json: triton_over_inprocess_p50 (Triton HTTP p50 over
in-process p50 with the runtime the repository serves, in the better layout;
both are kept), preprocess_share, fused_speedup_n500 and throughput_rps (best
configuration), with every figure behind them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from pinrank.backend import schema
from pinrank.backend.postprocess import top_k
from pinrank.backend.preprocess import Preprocessor
from pinrank.export.configs import ProfileSettings
from pinrank.export.inprocess import InProcessRanker
from pinrank.export.onnx_format import OnnxRunner
from pinrank.export.publish import republish
from pinrank.models.ranker import Ranker, load_ranker, load_serving_module
from pinrank.repository.layout import artifact_dirs, existing_pipeline, latest_version_dir
from pinrank.serving.tritonserver import Ports, free_ports, running_server
from pinrank.train.ranker_cost import gflop_per_request, ms_per_request

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_latency import make_request, percentiles, time_calls, triton_caller  # noqa: E402
from perf_analyzer import PerfAnalyzerError, cross_check, print_levels  # noqa: E402
from request_pool import pool_from_dataset  # noqa: E402
from run_loadtest import (  # noqa: E402
    STEPS,
    best_level,
    parse_instances,
    parse_users,
    run_locust,
    target_url,
    warm_up,
)


def stats_snapshot(client: Any) -> dict[str, dict[str, int]]:
    """{model: {stat: ns, 'count': successes}} from Triton's statistics API."""
    out = {}
    for m in client.get_inference_statistics()["model_stats"]:
        s = m["inference_stats"]
        out[m["name"]] = {"count": int(s["success"]["count"]),
                          **{k: int(s[k]["ns"]) for k in ("success", "queue", "compute_input",
                                                          "compute_infer", "compute_output")}}
    return out


def time_breakdown(before: dict, after: dict, client_mean_ms: float) -> dict[str, Any]:
    """Per composing model: mean ms per request (queue, compute) over the
    interval, and its share of the client's mean end-to-end latency."""
    out: dict[str, Any] = {}
    for model in (schema.ENSEMBLE_MODEL, *STEPS):
        b, a = before.get(model), after.get(model)
        if b is None or a is None or a["count"] == b["count"]:
            continue
        n = a["count"] - b["count"]
        row = {k: (a[k] - b[k]) / n / 1e6 for k in ("success", "queue", "compute_input", "compute_infer",
                                                     "compute_output")}
        out[model] = {"requests": n, **{f"{k}_ms": v for k, v in row.items()},
                      "share_of_end_to_end": row["success"] / client_mean_ms}
    steps_ms = sum(out[m]["success_ms"] for m in STEPS if m in out)
    out["outside_models_ms"] = client_mean_ms - steps_ms  # HTTP, (de)serialization, ensemble scheduling
    out["outside_models_share"] = out["outside_models_ms"] / client_mean_ms
    return out


class _OrtModule:
    """ONNX Runtime behind the eager module's call signature, for InProcessRanker."""

    def __init__(self, path: Path) -> None:
        self.runner = OnnxRunner(path, threads=1)

    def eval(self) -> "_OrtModule":
        return self

    def __call__(self, *args: Any) -> Any:
        return torch.from_numpy(self.runner(*args)[0])


def in_process_runtimes(repository: Path, ranker_ckpt: Path) -> tuple[dict[str, Any], str]:
    """{runtime: ranker module} for the in-process pipeline, and the runtime the repository serves."""
    version = latest_version_dir(repository, schema.RANKER_MODEL)
    served = json.loads((version / "manifest.json").read_text())["ranker_runtime"]
    runtimes: dict[str, Any] = {"eager": load_serving_module(ranker_ckpt)}
    if (version / "ranker.pt").exists():
        runtimes["torchscript"] = torch.jit.load(str(version / "ranker.pt"), map_location="cpu").eval()
    if (version / "ranker.onnx").exists():
        runtimes["onnxruntime"] = _OrtModule(version / "ranker.onnx")
    return runtimes, served


def in_process_steps(pre: Any, module: Any, reqs: list[dict], warmup: int) -> dict[str, float]:
    """Mean ms of each step of the in-process pipeline: what the matching
    Triton step costs beyond its own work is the serving overhead."""
    prepped = [pre(r) for r in reqs]

    def rank(res: Any) -> Any:
        with torch.inference_mode():
            return module(*[torch.from_numpy(res.ranker_inputs[s.name]) for s in schema.RANKER_INPUTS]).numpy()

    probs = [rank(res) for res in prepped]
    post = list(zip(prepped, probs))
    ms = {"preprocess": time_calls(pre, reqs, warmup), "ranker": time_calls(rank, prepped, warmup),
          "postprocess": time_calls(lambda x: top_k(x[0].passthrough["pp_candidate_ids"], x[1],
                                                    int(x[0].passthrough["pp_top_k"][0])), post, warmup)}
    return {k: float(np.mean(v)) for k, v in ms.items()}


def both_layouts(repository: Path, work: Path, single_instances: int) -> dict[str, Path]:
    """{pipeline: repository}: `repository` itself, and the other layout
    republished from its artifacts (same ranker files, vocabulary, snapshot)."""
    present = existing_pipeline(repository)
    if present is None:
        raise click.ClickException(f"{repository} holds no pinrank repository (run `make export`)")
    other = "single" if present == "ensemble" else "ensemble"
    runtime = json.loads((artifact_dirs(repository)["ranker"] / "manifest.json").read_text())["ranker_runtime"]
    dst = work / f"repository-{other}"
    shutil.rmtree(dst, ignore_errors=True)
    republish(repository, dst, ProfileSettings(pipeline=other, cpu_runtime=runtime, ranker_instances=single_instances))
    return {present: repository, other: dst}


def bench_latency_and_shares(repos: dict[str, Path], ranker_ckpt: Path, candidates: int, actions: int,
                             num_requests: int, warmup: int, rounds: int = 5) -> dict[str, Any]:
    """(a) and (b). Both layouts' servers run side by side and every path
    takes its turn in each of `rounds` blocks, so drift on a noisy box lands
    on all paths alike."""
    torch.set_num_threads(1)  # as the served ranker instance
    pre = Preprocessor.from_dir(latest_version_dir(repos["ensemble"], schema.PREPROCESS_MODEL) / "artifacts")
    rng = np.random.default_rng(0)
    reqs = [make_request(rng, pre.vocab.item_ids, pre.snapshot.user_ids, candidates, actions)
            for _ in range(num_requests + warmup)]
    runtimes, served = in_process_runtimes(repos["ensemble"], ranker_ckpt)
    calls: dict[str, Any] = {f"in_process_{name}": InProcessRanker(pre, module).rank
                             for name, module in runtimes.items()}
    with running_server(repos["ensemble"], Ports(*free_ports())) as ens, \
            running_server(repos["single"], Ports(*free_ports())) as one:
        for prefix, server in (("triton", ens), ("triton_single", one)):
            for proto, module, url in (("grpc", grpcclient, server.grpc_url), ("http", httpclient, server.http_url)):
                calls[f"{prefix}_{proto}"] = triton_caller(module, module.InferenceServerClient(url))
        stats_client = httpclient.InferenceServerClient(ens.http_url)
        for name, call in calls.items():
            click.echo(f"  warm-up {name} ...")
            time_calls(call, reqs[:warmup], 0)
        ms: dict[str, list[float]] = {name: [] for name in calls}
        totals: dict[str, dict[str, int]] = {}
        blocks = np.array_split(np.arange(warmup, len(reqs)), rounds)
        for block in blocks:
            batch = [reqs[i] for i in block]
            for name, call in calls.items():
                before = stats_snapshot(stats_client) if name == "triton_http" else None
                ms[name] += time_calls(call, batch, 0)
                if before is not None:
                    after = stats_snapshot(stats_client)
                    for model, row in after.items():
                        acc = totals.setdefault(model, dict.fromkeys(row, 0))
                        for k in row:
                            acc[k] += row[k] - before[model][k]
    latency = {name: percentiles(v) for name, v in ms.items()}
    breakdown = time_breakdown({m: dict.fromkeys(r, 0) for m, r in totals.items()}, totals,
                               latency["triton_http"]["mean_ms"])
    base = latency[f"in_process_{served}"]["p50_ms"]
    by_layout = {"ensemble": latency["triton_http"]["p50_ms"] / base,
                 "single": latency["triton_single_http"]["p50_ms"] / base}
    best_layout = min(by_layout, key=by_layout.__getitem__)
    return {
        "candidates": candidates, "actions": actions, "requests": num_requests, "served_runtime": served,
        "repositories": {k: str(v) for k, v in repos.items()},
        "latency": latency,
        "triton_over_inprocess_p50": by_layout[best_layout],
        "triton_over_inprocess_p50_best_layout": best_layout,
        "triton_over_inprocess_p50_by_layout": by_layout,
        "triton_over_inprocess_p50_by_path": {
            f"{t}/{r}": latency[t]["p50_ms"] / latency[f"in_process_{r}"]["p50_ms"]
            for t in ("triton_http", "triton_grpc", "triton_single_http", "triton_single_grpc") for r in runtimes},
        "time_breakdown": breakdown,
        "in_process_steps_mean_ms": in_process_steps(pre, runtimes[served], reqs, warmup),
        "preprocess_share": breakdown[schema.PREPROCESS_MODEL]["share_of_end_to_end"],
        "postprocess_share": breakdown[schema.POSTPROCESS_MODEL]["share_of_end_to_end"],
    }


def bench_fusion(ranker_ckpt: Path, counts: tuple[int, ...], repeats: int, early_repeats: int) -> dict[str, Any]:
    """(c): the trained ranker's sizes, random weights (cost does not depend on them), 1 thread."""
    torch.set_num_threads(1)
    trained = load_ranker(ranker_ckpt)
    out: dict[str, Any] = {"by_n": {}}
    for mode in ("early", "fused"):
        model = Ranker(dataclasses.replace(trained.config, mode=mode), num_items=trained.num_items).eval()
        for n in counts:
            click.echo(f"  {mode} N={n} ...")
            reps = early_repeats if mode == "early" else repeats
            out["by_n"].setdefault(str(n), {})[mode] = {
                "ms": ms_per_request(model, n, repeats=reps, warmup=1 if mode == "early" else 3),
                "gflop": gflop_per_request(model, n)}
    for n, row in out["by_n"].items():
        row["speedup"] = row["early"]["ms"] / row["fused"]["ms"]
        row["flop_ratio"] = row["early"]["gflop"] / row["fused"]["gflop"]
        out[f"fused_speedup_n{n}"] = row["speedup"]
    return out


def bench_throughput(repos: dict[str, Path], data: Path, configs: list[tuple[int, int, int]],
                     single_counts: list[int], users: list[int], duration_s: float, work: Path) -> dict[str, Any]:
    """(d): locust at each concurrency level for each layout and instance configuration."""
    pool = pool_from_dataset(data, 2000)
    pool_path = pool.save(work / "requests.npz")
    variants = [("pre{}-ranker{}-post{}".format(*c), repos["ensemble"], dict(zip(STEPS, c))) for c in configs]
    variants += [(f"single{k}", repos["single"], {schema.ENSEMBLE_MODEL: k}) for k in single_counts]
    results: dict[str, Any] = {}
    for name, repo, counts in variants:
        with target_url(None, repo, work / f"tritonserver-{name}.log", counts) as url:
            warm_up(url, pool, 20)
            levels = []
            for u in users:
                click.echo(f"  {name}, {u} users, {duration_s:g} s ...", nl=False)
                lv = run_locust(url, u, duration_s, work / f"{name}-u{u}", pool_path, html=False)
                click.echo(f" {lv.rps:.1f} req/s, p50 {lv.p50_ms:.0f} ms, p99 {lv.p99_ms:.0f} ms, "
                           f"{lv.failures} failures")
                levels.append(lv)
        best = best_level(levels)
        results[name] = {"levels": [lv.to_dict() for lv in levels], "best": best.to_dict()}
    best_name = max(results, key=lambda k: results[k]["best"]["rps"])
    return {"configs": results, "best_config": best_name, "throughput_rps": results[best_name]["best"]["rps"],
            "throughput_users": results[best_name]["best"]["users"]}


def bench_perf_analyzer(repository: Path, data: Path, users: list[int], duration_s: float,
                        work: Path) -> dict[str, Any]:
    """(e): one server on the served repository; at each concurrency, locust
    (the project's load test) and perf_analyzer replay the same requests over HTTP."""
    pool = pool_from_dataset(data, 200)
    pool_path = pool.save(work / "pa_requests.npz")
    with target_url(None, repository, work / "tritonserver-perf_analyzer.log") as url:
        warm_up(url, pool, 20)
        host = url.split("://", 1)[1]
        try:
            pa = cross_check(host, pool, users, work / "perf_analyzer", protocol="http",
                             measurement_ms=int(duration_s * 1000 / 3))
        except PerfAnalyzerError as exc:
            raise click.ClickException(f"(e) {exc}") from None
        project = [run_locust(url, u, duration_s, work / f"pa-locust-u{u}", pool_path, html=False).to_dict()
                   for u in users]
    rows = []
    for lv, own in zip(pa["levels"], project):
        rows.append({"concurrency": lv["concurrency"],
                     "perf_analyzer": {k: lv[k] for k in ("throughput_rps", "p50_ms", "p99_ms")},
                     "locust": {"throughput_rps": own["rps"], "p50_ms": own["p50_ms"], "p99_ms": own["p99_ms"],
                                "failures": own["failures"]},
                     "p50_ratio_locust_over_pa": own["p50_ms"] / lv["p50_ms"],
                     "rps_ratio_locust_over_pa": own["rps"] / lv["throughput_rps"]})
    return {**pa, "locust_levels": project, "side_by_side": rows}


@click.command()
@click.option("--repository", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("model_repository/cpu"), show_default=True)
@click.option("--ranker", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=Path("artifacts/checkpoints/ranker.pt"), show_default=True,
              help="Checkpoint for the eager path and the sizes of the fusion comparison.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("artifacts/data/quick"), show_default=True, help="Dataset the throughput requests replay.")
@click.option("--candidates", type=click.IntRange(1, schema.MAX_CANDIDATES), default=500, show_default=True)
@click.option("--actions", type=click.IntRange(0, schema.MAX_REQUEST_ACTIONS), default=schema.REALTIME_SEQ_LEN,
              show_default=True)
@click.option("--requests", "num_requests", type=click.IntRange(min=10), default=200, show_default=True,
              help="Timed requests per latency path.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--fusion-candidates", "fusion_counts", type=click.IntRange(1, schema.MAX_CANDIDATES), multiple=True,
              default=(100, 500, 1000), show_default=True, help="N for the fusion comparison (repeat the option).")
@click.option("--fusion-repeats", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed calls of the fused ranker per N.")
@click.option("--early-repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed calls of the early-fusion ranker per N (each costs ~50x a fused one).")
@click.option("--configs", default="1:1:1,1:2:1,2:2:1", show_default=True, callback=parse_instances,
              help="Instance counts PRE:RANKER:POST to compare for throughput (comma-separated).")
@click.option("--single-instances", "single_counts", default="2,3", show_default=True, callback=parse_users,
              help="Instance counts of the single-model pipeline to compare for throughput (comma-separated; "
                   "the smallest also serves the latency comparison).")
@click.option("--throughput-users", default="2,4", show_default=True, callback=parse_users,
              help="Closed-loop concurrency levels per configuration (comma-separated).")
@click.option("--throughput-duration", type=click.FloatRange(min=1), default=15, show_default=True,
              help="Seconds per configuration and level.")
@click.option("--pa-concurrency", "pa_users", default="1,2,4", show_default=True, callback=parse_users,
              help="(e) concurrency levels for the perf_analyzer cross-check (comma-separated).")
@click.option("--pa-duration", type=click.FloatRange(min=3), default=12, show_default=True,
              help="(e) seconds of locust per level; perf_analyzer's window is a third of it.")
@click.option("--skip", type=click.Choice(["latency", "fusion", "throughput", "perf_analyzer"]), multiple=True,
              help="Leave a part out (repeat the option).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("results/bench.json"),
              show_default=True)
def main(repository: Path, ranker: Path, data: Path, candidates: int, actions: int, num_requests: int, warmup: int,
         fusion_counts: tuple[int, ...], fusion_repeats: int, early_repeats: int,
         configs: list[tuple[int, int, int]], single_counts: list[int], throughput_users: list[int],
         throughput_duration: float, pa_users: list[int], pa_duration: float,
         skip: tuple[str, ...], out: Path) -> None:
    """Run the benchmarks (a)-(d) and write OUT (JSON)."""
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "repository": str(repository), "ranker": str(ranker),
    }
    t0 = time.monotonic()
    work = out.parent / "bench"
    work.mkdir(parents=True, exist_ok=True)
    repos = both_layouts(repository, work, single_counts[0])
    if "latency" not in skip:
        click.echo(f"(a, b) latency N={candidates} L={actions}, {num_requests} requests per path, one client")
        lat = bench_latency_and_shares(repos, ranker, candidates, actions, num_requests, warmup)
        report.update(lat)
        click.echo(f"{'path':<26}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}")
        for name, r in lat["latency"].items():
            click.echo(f"{name:<26}{r['p50_ms']:8.2f}{r['p90_ms']:8.2f}{r['p99_ms']:8.2f}")
        click.echo(f"triton_over_inprocess_p50 (HTTP / in-process {lat['served_runtime']}): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in lat["triton_over_inprocess_p50_by_layout"].items()))
        for model in (schema.ENSEMBLE_MODEL, *STEPS):
            row = lat["time_breakdown"].get(model)
            if row:
                click.echo(f"  {model:<12} {row['success_ms']:6.2f} ms/request (queue {row['queue_ms']:.2f}, "
                           f"compute {row['compute_infer_ms']:.2f}), {row['share_of_end_to_end']:.1%} of end-to-end")
        click.echo("  in-process, same runtime: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in lat["in_process_steps_mean_ms"].items()))
        click.echo(f"  outside the step models: {lat['time_breakdown']['outside_models_ms']:.2f} ms "
                   f"({lat['time_breakdown']['outside_models_share']:.1%})")
    if "fusion" not in skip:
        click.echo(f"(c) early vs fused ranker, N in {list(fusion_counts)}")
        fusion = bench_fusion(ranker, fusion_counts, fusion_repeats, early_repeats)
        report["fusion"] = fusion
        report.update({k: v for k, v in fusion.items() if k.startswith("fused_speedup_")})
        for n, row in fusion["by_n"].items():
            click.echo(f"  N={n}: early {row['early']['ms']:.1f} ms ({row['early']['gflop']:.2f} GFLOP), "
                       f"fused {row['fused']['ms']:.2f} ms ({row['fused']['gflop']:.3f} GFLOP): {row['speedup']:.1f}x")
    if "throughput" not in skip:
        click.echo(f"(d) throughput: instance configs {configs}, users {throughput_users}")
        thr = bench_throughput(repos, data, configs, single_counts, throughput_users, throughput_duration, work)
        report["throughput"] = thr
        report["throughput_rps"] = thr["throughput_rps"]
        click.echo(f"  best: {thr['best_config']} at {thr['throughput_users']} users: "
                   f"{thr['throughput_rps']:.1f} req/s")
    if "perf_analyzer" not in skip:
        click.echo(f"(e) perf_analyzer vs locust on {repository}, concurrency {pa_users}, replayed requests, HTTP")
        pa = bench_perf_analyzer(repository, data, pa_users, pa_duration, work)
        report["perf_analyzer"] = pa
        print_levels(pa["levels"])
        click.echo(f"{'concurrency':>11}  {'locust req/s':>12}{'p50':>7}{'p99':>7}  {'perf_analyzer req/s':>19}"
                   f"{'p50':>7}{'p99':>7}")
        for row in pa["side_by_side"]:
            own, theirs = row["locust"], row["perf_analyzer"]
            click.echo(f"{row['concurrency']:>11}  {own['throughput_rps']:12.1f}{own['p50_ms']:7.1f}"
                       f"{own['p99_ms']:7.1f}  {theirs['throughput_rps']:19.1f}{theirs['p50_ms']:7.1f}"
                       f"{theirs['p99_ms']:7.1f}")
    report["wall_s"] = time.monotonic() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    click.echo(f"wrote {out} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
