"""Doc tables generated from the measured records in docs/figures/*.json.

Each figures file is a trimmed copy of the results file a command wrote (the
command, date and machine kept beside the data); each table in the docs sits
between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->` and is exactly
what its renderer makes of that file, so a number in the docs cannot drift
from its data (tests/docs/test_doc_figures.py runs `--check`).

    .venv/bin/python docs/figures/render.py                        # rewrite the marked tables
    .venv/bin/python docs/figures/render.py --check                # exit 1 and show a diff where a doc differs
    .venv/bin/python docs/figures/render.py --from-results results # after `make bench` etc.: refresh, then rewrite

A region whose figures file does not exist yet stays as written by hand; it
must say so in a `<!-- hand-written: ... -->` comment naming the command that
measures it, and the first `--from-results` run that finds that command's
results file replaces it. The standard library and click: no torch, no numpy.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[2]
FIGURES = "docs/figures"
HANDWRITTEN = "<!-- hand-written:"
REGION = re.compile(r"(<!-- figures:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.DOTALL)
HEADS = ("save", "click", "closeup", "hide")

Figures = dict[str, Any]


# ---------------------------------------------------------------- formatting

def when(date: str) -> str:
    """"2026-12-03T11:04:38+00:00" -> "2026-12-03 11:04 UTC"; a bare date stays a date."""
    if "T" not in date:
        return date
    return dt.datetime.fromisoformat(date).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def mins(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s ({round(seconds)} s)" if m else f"{s} s"


def bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def provenance(fig: Figures, stem: str) -> str:
    """The line above every generated table: which command, when, where, and the data file."""
    machine = ", ".join(fig["machine"].split(", ")[:2]) if fig.get("machine") else "machine not recorded"
    line = f"Measured by `{fig['command']}`, {when(fig['date'])}, {machine}; data: [`{FIGURES}/{stem}.json`]" \
           f"(figures/{stem}.json)."
    return f"{line} {fig['note']}" if fig.get("note") else line


# ---------------------------------------------------------------- renderers (one per marked table)

PROTOCOL_NAMES = {"grpc": "gRPC", "http": "HTTP"}
MODEL_NAMES = {"sasrec": "SASRec", "popularity": "popularity"}


def render_demo_latency(fig: Figures) -> list[str]:
    d = fig["data"]
    return table(["requests", "protocol", "candidates (N)", "p50 ms", "p90 ms", "server"],
                 [[d["num_requests"], PROTOCOL_NAMES.get(d["protocol"], d["protocol"]), d["candidates_per_request"],
                   f"{d['p50_latency_ms']:.2f}", f"{d['p90_latency_ms']:.2f}",
                   f"{d['server']['name']} {d['server']['version']}"]])


def render_demo_quality(fig: Figures) -> list[str]:
    pf, rk = fig["data"]["pinnerformer"], fig["data"]["ranker"]
    m = rk["metrics"]
    lines = [f"- PinnerFormer ({pf['steps']} steps): Recall@{pf['eval_k']:.0f} on the eval period "
             f"{pf['eval_recall']:.3f} vs popularity {pf['eval_pop_recall']:.3f} ({pf['eval_eval_users']:,.0f} users).",
             f"- Ranker ({rk['mode']}, {rk['steps']} steps), {m['requests']:,} held-out requests:", ""]
    return lines + table(["head", "AUC", "HIT@3", "HIT@3 random order", "HIT@3 by utility"],
                         [[h, f"{m[h]['auc']:.3f}", f"{m[h]['hit@3']:.3f}", f"{m[h]['hit@3_random']:.3f}",
                           f"{m[h]['hit@3_utility']:.3f}"] for h in HEADS if h in m])


def render_two_commands(fig: Figures) -> list[str]:
    rows = []
    for r in fig["data"]["runs"]:
        took = mins(r["seconds"]) if r.get("seconds") is not None else f"about {r['minutes_about']} min"
        rows.append([f"`{r['command']}`", r["where"], r["date"], took, r["result"]])
    return table(["command", "where", "date", "time", "result"], rows)


def render_loo(fig: Figures) -> list[str]:
    d = fig["data"]
    trained_first = sorted(d["baselines"].items(), key=lambda kv: "training" not in kv[1])
    rows = [(f"pinrank `{d['recipe']}` (PinnerFormer tower)", d["test"], d["validation"], d["training"]),
            *[(f"{MODEL_NAMES.get(name, name)} baseline (same budget, same split)" if "training" in b
               else MODEL_NAMES.get(name, name), b["test"], b["validation"], b.get("training"))
              for name, b in trained_first]]
    best = max(t["hr_at_10"] for _, t, _, _ in rows)
    s = d["settings"]
    lines = [f"{s['users']:,} users, {s['catalogue']:,} items, {s['minutes_per_model']:g} min of training per model, "
             f"{s['total_seconds']:,.0f} s in all:", ""]
    return lines + table(
        ["model", "test HR@10", "test NDCG@10", f"test HR@10, {s['sampled_negatives']} sampled",
         "validation HR@10 / NDCG@10", f"steps in {s['minutes_per_model']:g} min (best)"],
        [[name, bold(f"{t['hr_at_10']:.4f}", t["hr_at_10"] == best), f"{t['ndcg_at_10']:.4f}",
          f"{t['sampled_hr_at_10']:.4f}", f"{v['hr_at_10']:.4f} / {v['ndcg_at_10']:.4f}",
          f"{tr['steps']} ({tr['best_step']})" if tr else ""] for name, t, v, tr in rows])


PROTOCOLS = {"loo": ("Leave-one-out", "test; full ranking, seen items removed"),
             "window": ("Temporal window", "{window_days:g} days after each user's cut, {users} users")}


def render_real(fig: Figures) -> list[str]:
    d, lines = fig["data"], []
    for dataset, rows in d["loo"].items():
        lines += [f"#### {PROTOCOLS['loo'][0]}, {dataset} ({PROTOCOLS['loo'][1]})", ""]
        lines += table(["variant", "HR@10", "NDCG@10", "HR@10, 100 sampled", "steps"],
                       [[n, f"{m['hr_at_10']:.4f}", f"{m['ndcg_at_10']:.4f}", f"{m['sampled_hr_at_10']:.4f}",
                         m.get("steps", "")] for n, m in rows.items()]) + [""]
    for dataset, rows in d["window"].items():
        lines += [f"#### {PROTOCOLS['window'][0]}, {dataset} "
                  f"({PROTOCOLS['window'][1].format(**d['window_settings'][dataset])})", ""]
        lines += table(["variant", "Recall@10", "P90 coverage@10", "entropy@50", "steps"],
                       [[n, f"{m['recall_at_10']:.4f}", f"{m['p90_coverage_at_10']:.4f}", f"{m['entropy_at_50']:.3f}",
                         m.get("steps", "")] for n, m in rows.items()]) + [""]
    return lines[:-1]


def render_item_features(fig: Figures) -> list[str]:
    """One row per protocol and dataset: the default (hybrid) recipe, each side switched off, popularity."""
    d, rows = fig["data"], []
    metrics = {"loo": ("hr_at_10", "ndcg_at_10", "HR@10 / NDCG@10", ".4f"),
               "window": ("recall_at_10", "p90_coverage_at_10", "Recall@10 / P90 cov.", ".3f")}
    for proto, label in (("loo", "leave-one-out"), ("window", "window")):
        first, second, names, fmt = metrics[proto]
        for dataset, variants in d[proto].items():
            hybrid = next(iter(variants))
            cols = [hybrid] + [next(k for k in variants if k.endswith(f"+{side}")) for side in ("content_only",
                                                                                              "ids_only")]
            best = max(variants[c][first] for c in cols)
            cells = [f"{bold(format(variants[c][first], '.4f'), variants[c][first] == best)} / "
                     f"{format(variants[c][second], fmt)} ({variants[c]['steps']} steps)" for c in cols]
            pop = variants["popularity_baseline"]
            rows.append([f"{label} {dataset}, {names}", *cells,
                         f"{pop[first]:.4f} / {format(pop[second], fmt)}"])
    return table(["protocol, dataset", "hybrid (default)", "content only", "ids only", "popularity"], rows)


def render_ranker_ablation(fig: Figures) -> list[str]:
    variants = fig["data"]["variants"]
    heads = [h for h in HEADS if all(h in r["auc"] for r in variants.values())]
    return table(["variant", *[f"{h} AUC / HIT@3" for h in heads], "GFLOP/request", "ms/request"],
                 [[name, *[f"{r['auc'][h]:.3f} / {r['hit_at_3'][h]:.3f}" for h in heads],
                   f"{r['gflop_per_request']:.3f}", f"{r['ms_per_request']:.1f}"] for name, r in variants.items()])


SURFACES = {"http_raw": "raw HTTP", "grpc_raw": "raw gRPC", "sdk": "SDK", "client_cli": "client CLI",
            "pinrank_cli": "pinrank CLI", "importer": "importers", "config": "configs", "checkpoint": "checkpoints"}


def _answers(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {version}" for version, n in counts.items())


def render_reliability(fig: Figures) -> list[str]:
    d = fig["data"]
    surfaces = sorted(d["bad_inputs_by_surface"].items(), key=lambda kv: -kv[1]["total"])
    sw, a = d["swap"], d["swap"]["answers"]
    up_to_rollback = sum(sum(a[k].values()) for k in ("before_swap", "during_swap", "after_swap"))
    rollback = sum(sum(a[k].values()) for k in ("during_rollback", "after_rollback"))
    kill, soak, rs, h = d["stub_kill"], d["soak"], d["restart"], d["hostile"]
    kill_errors = ", ".join(f"`{k}`" for k in kill["answers_after_kill"] if k != "ok") or "none"
    reload_s = ", ".join(f"{r['seconds']:.2f} s" for r in kill["watchdog_reloads"])
    rows = [
        ["`bad_inputs_total` / `bad_inputs_clear_error`",
         f"{d['bad_inputs_total']} / {d['bad_inputs_clear_error']} ("
         + ", ".join(f"{SURFACES.get(k, k)} {v['total']}" for k, v in surfaces) + ")"],
        ["`server_ready_after_all`", str(d["server_ready_after_all"]).lower()],
        ["`swap_failed_requests`",
         f"**{sw['swap_failed_requests']}** of {up_to_rollback:,} requests up to the rollback"],
        ["`rollback_failed_requests`", f"**{sw['rollback_failed_requests']}** of {rollback:,}"],
        ["answers before / after the swap / after the rollback",
         f"{_answers(a['before_swap'])} / {_answers(a['after_swap'])} / {_answers(a['after_rollback'])}"],
        [f"answers while switching ({sw['swap_s']:.2f} s swap, {sw['rollback_s']:.2f} s rollback)",
         f"swap: {_answers(a['during_swap'])}; rollback: {_answers(a['during_rollback'])}; "
         f"**{sw['mixed_version_answers']}** mixing versions (`mixed_version_answers`)"],
        ["stub kill: failed requests / first success after the kill / stub replaced",
         f"{kill['failed_requests']} ({kill_errors}) / {kill['recovery_s']:.3f} s / "
         + (f"yes, watchdog reload in {reload_s}" if kill["stubs_back"] else "no")],
        ["`soak_minutes` / requests / failures",
         f"{soak['soak_minutes']:g} / {soak['requests']:,} / {soak['failed_requests']}"],
        [f"`soak_rss_growth_pct` (server + stubs, {soak['rss_samples']} samples)",
         f"**{soak['soak_rss_growth_pct']:+.3f}%** ({soak['rss_mb_first']} -> {soak['rss_mb_last']} MiB)"],
        ["`restart_recovery_s` (`kill -9` of the server process group -> first success)",
         f"**{rs['restart_recovery_s']:.2f} s**; {rs['typed_errors'] + rs['untyped_errors']} client errors, "
         f"{rs['hung_calls']} hung calls"],
        ["`server_crashes_contained` / `crash_requests` (hostile phase)",
         f"{h['server_crashes_contained']} / {h['crash_requests']}"],
        ["`valid_failures_during_crashes`", f"{h['valid_failures_during_crashes']} of {h['valid_requests']:,}"],
        ["`crash_recovery_s` (slowest; each)",
         f"{h['crash_recovery_s']:.2f} s; " + ", ".join(f"{s:.2f}" for s in h["crash_recovery_s_each"])],
        ["`step_model_bad_inputs_rejected`", f"{h['step_model_bad_inputs_rejected']} / {h['step_model_bad_inputs']}"],
        ["`stub_processes_leaked` / `rss_growth_after_reloads_pct`",
         f"{h['stub_processes_leaked']} / {h['rss_growth_after_reloads_pct']:+.2f}% (stubs "
         f"{h['reloads']['stubs_before']} -> {h['reloads']['stubs_after']}, RSS {h['reloads']['rss_mb_before']} -> "
         f"{h['reloads']['rss_mb_after']} MiB, {h['reloads']['reloads']} reloads)"],
        ["`targets`", "; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in d["targets"].items())],
    ]
    return [f"{d['load_users']} load users, {d['soak_minutes']:g}-minute soak, whole run {d['seconds']:.0f} s:", ""] \
        + table(["key", "value"], rows)


STEP_VALIDATION = ".venv/bin/python loadtest/bench_step_validation.py --repository model_repository/cpu " \
                  "--out results/step_validation.json"
# `make bench` (loadtest/bench.py). DESIGN targets of its headline keys.
BENCH_TARGETS = {"triton_over_inprocess_p50": ("<=", 1.3), "preprocess_share": ("<=", 0.15),
                 "fused_speedup_n500": (">=", 10.0)}
LATENCY_PATHS = {"in_process_eager": "in-process eager", "in_process_torchscript": "in-process TorchScript",
                 "in_process_onnxruntime": "in-process ONNX Runtime", "triton_http": "Triton ensemble, HTTP",
                 "triton_grpc": "Triton ensemble, gRPC", "triton_single_http": "Triton single model, HTTP",
                 "triton_single_grpc": "Triton single model, gRPC"}


def _skipped(part: str) -> list[str]:
    return [f"Not measured in this run (`make bench BENCH_ARGS=\"--skip {part}\"`)."]


def _met(key: str, value: float) -> tuple[str, str]:
    op, bound = BENCH_TARGETS[key]
    return f"{op} {bound:g}", "yes" if (value <= bound if op == "<=" else value >= bound) else "no"


def render_bench_headline(fig: Figures) -> list[str]:
    d, rows = fig["data"], []
    if "triton_over_inprocess_p50" in d:
        others = ", ".join(f"{k}: {v:.2f}" for k, v in d["triton_over_inprocess_p50_by_layout"].items())
        rows.append([f"`triton_over_inprocess_p50` (better layout: {d['triton_over_inprocess_p50_best_layout']}; "
                     f"{others})", f"**{d['triton_over_inprocess_p50']:.2f}**",
                     *_met("triton_over_inprocess_p50", d["triton_over_inprocess_p50"])])
        rows.append(["`preprocess_share` (ensemble)", f"**{d['preprocess_share']:.3f}**",
                     *_met("preprocess_share", d["preprocess_share"])])
    if "fused_speedup_n500" in d:
        rows.append(["`fused_speedup_n500`", f"**{d['fused_speedup_n500']:.1f}**",
                     *_met("fused_speedup_n500", d["fused_speedup_n500"])])
    if "throughput" in d:
        t = d["throughput"]
        rows.append([f"`throughput_rps` (best: {_layout(t['best_config'])} at {t['throughput_users']} users)",
                     f"**{t['throughput_rps']:.0f}**", "-", "-"])
    return table(["key", "value", "target", "met"], rows)


def render_bench_latency(fig: Figures) -> list[str]:
    d = fig["data"]
    if "latency" not in d:
        return _skipped("latency")
    lat, base = d["latency"], d["latency"][f"in_process_{d['served_runtime']}"]["p50_ms"]
    rows = []
    for key, label in LATENCY_PATHS.items():
        if key not in lat:
            continue
        ratio = f"{lat[key]['p50_ms'] / base:.2f}" if key.startswith("triton") or \
            key == f"in_process_{d['served_runtime']}" else ""
        rows.append([label + (" (what the server runs)" if key == f"in_process_{d['served_runtime']}" else ""),
                     f"{lat[key]['p50_ms']:.2f}", f"{lat[key]['p90_ms']:.2f}", f"{lat[key]['p99_ms']:.2f}", ratio])
    lines = [f"N={d['candidates']}, L={d['actions']}, {d['requests']} timed requests per path, one client:", ""]
    return lines + table(["path", "p50 ms", "p90 ms", "p99 ms", f"over in-process {d['served_runtime']} p50"], rows)


def render_bench_breakdown(fig: Figures) -> list[str]:
    d = fig["data"]
    if "time_breakdown" not in d:
        return _skipped("latency")
    tb, inproc, mean = d["time_breakdown"], d["in_process_steps_mean_ms"], d["latency"]["triton_http"]["mean_ms"]
    rows = [[step, f"{t['success_ms']:.2f} ({t['queue_ms']:.2f} / {t['compute_infer_ms']:.2f})",
             f"{t['share_of_end_to_end']:.1%}", f"{inproc[step]:.2f}", f"{t['success_ms'] - inproc[step]:.2f}"]
            for step, t in ((s, tb[s]) for s in ("preprocess", "ranker", "postprocess") if s in tb)]
    rows.append(["outside the steps (HTTP, (de)serialization, ensemble scheduling)", f"{tb['outside_models_ms']:.2f}",
                 f"{tb['outside_models_share']:.1%}", "-", f"{tb['outside_models_ms']:.2f}"])
    return table(["step", "Triton ms/request (queue / compute)", f"share of end-to-end ({mean:.2f} ms mean)",
                  "in-process ms", "Triton overhead ms"], rows)


def render_bench_fusion(fig: Figures) -> list[str]:
    if "fusion" not in fig["data"]:
        return _skipped("fusion")
    return table(["N", "early ms", "early GFLOP", "fused ms", "fused GFLOP", "speedup (ms)", "FLOP ratio"],
                 [[n, f"{r['early']['ms']:.1f}", f"{r['early']['gflop']:.2f}", f"{r['fused']['ms']:.2f}",
                   f"{r['fused']['gflop']:.3f}", f"{r['speedup']:.1f}x", f"{r['flop_ratio']:.0f}x"]
                  for n, r in fig["data"]["fusion"]["by_n"].items()])


def _layout(config: str) -> str:
    """"pre2-ranker2-post1" -> "ensemble 2:2:1"; "single2" -> "single model x2"."""
    counts = re.findall(r"\d+", config)
    return f"single model x{counts[0]}" if config.startswith("single") else "ensemble " + ":".join(counts)


def render_bench_throughput(fig: Figures) -> list[str]:
    if "throughput" not in fig["data"]:
        return _skipped("throughput")
    t = fig["data"]["throughput"]
    users = [lv["users"] for lv in next(iter(t["configs"].values()))["levels"]]
    rows = []
    for name, c in t["configs"].items():
        cells = [f"{lv['rps']:.0f} ({lv['p50_ms']:.0f} / {lv['p99_ms']:.0f})" for lv in c["levels"]]
        rows.append([bold(_layout(name), name == t["best_config"]), *cells, sum(lv["failures"] for lv in c["levels"])])
    return table(["layout, instances", *[f"{u} users req/s (p50 / p99 ms)" for u in users], "failures"], rows)


def render_loadtest(fig: Figures) -> list[str]:
    d = fig["data"]
    rows = [[lv["users"], f"{lv['rps']:.1f}", f"{lv['p50_ms']:.0f}", f"{lv['p95_ms']:.0f}", f"{lv['p99_ms']:.0f}",
             lv["failures"]] for lv in d["levels"]]
    rows.append([f"**{d['users']}, {d['duration_s']:g} s (final)**", f"**{d['rps']:.1f}**", f"**{d['p50_ms']:.0f}**",
                 f"**{d['p95_ms']:.0f}**", f"**{d['p99_ms']:.0f}**", f"**{d['failures']} of {d['requests']:,}**"])
    return table(["users", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures"], rows)


def render_perf_analyzer(fig: Figures) -> list[str]:
    """Triton's perf_analyzer beside the project's locust, one server, same replayed requests and concurrency."""
    rows = []
    for r in fig["data"]["side_by_side"]:
        own, pa = r["locust"], r["perf_analyzer"]
        rows.append([r["concurrency"], f"{own['throughput_rps']:.0f}", f"{pa['throughput_rps']:.0f}",
                     f"{r['rps_ratio_locust_over_pa']:.2f}", f"{own['p50_ms']:.1f}", f"{pa['p50_ms']:.2f}",
                     f"{own['p99_ms']:.1f}", f"{pa['p99_ms']:.2f}", own["failures"]])
    return table(["concurrency", "locust req/s", "perf_analyzer req/s", "req/s ratio", "locust p50 ms",
                  "perf_analyzer p50 ms", "locust p99 ms", "perf_analyzer p99 ms", "locust failures"], rows)


def render_step_validation(fig: Figures) -> list[str]:
    d, rows = fig["data"], []
    for n, c in d["checks_us"].items():
        p50 = d["served_ms"].get(n, {}).get("p50_ms")
        rows.append([n, *[f"{c[k]:.1f} us" for k in ("names_us", "ranker_feed_us", "ranker_output_us", "postprocess_us",
                                                     "checks_total_us")],
                     f"{c['ranker_call_us'] / 1000:.2f} ms", f"{c['checks_total_us'] / c['ranker_call_us']:.2%}",
                     f"{p50:.2f} ms" if p50 else "-", f"{c['checks_total_us'] / (1000 * p50):.2%}" if p50 else "-"])
    return table(["N", "names", "ranker feed", "ranker output", "postprocess", "all checks", "ranker call",
                  "share of ranker call", "served p50", "share of served p50"], rows)


# ---------------------------------------------------------------- extractors (results file -> figures)

def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _mtime(*paths: Path) -> str:
    latest = max(p.stat().st_mtime for p in paths)
    return dt.datetime.fromtimestamp(latest, dt.timezone.utc).isoformat(timespec="seconds")


def _here() -> str:
    """The machine the results were written on, for results files that do not record it:
    `--from-results` runs where the command just ran."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


def _envelope(command: str, source: str, data: dict[str, Any], date: str, machine: str | None) -> Figures:
    return {"command": command, "date": date, "machine": machine or _here(), "source": source, "data": data}


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: a head without positives (close-up on a log without tags) is left out."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items() if not (isinstance(v, float) and math.isnan(v))}
    return [_no_nan(v) for v in value] if isinstance(value, list) else value


def extract_demo(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "demo.json")
    if d is None:
        return None
    keep = ("server", "model_name", "protocol", "num_requests", "candidates_per_request", "p50_latency_ms",
            "p90_latency_ms")
    return _envelope("make demo", "results/demo.json", {k: d[k] for k in keep}, _mtime(results / "demo.json"), None)


def extract_demo_quality(results: Path, artifacts: Path) -> Figures | None:
    paths = [artifacts / "checkpoints" / f"{m}.metrics.json" for m in ("pinnerformer", "ranker")]
    pf, rk = (_load(p) for p in paths)
    if pf is None or rk is None:
        return None
    data = {"pinnerformer": {k: pf[k] for k in ("steps", "eval_k", "eval_recall", "eval_pop_recall",
                                                "eval_eval_users", "train_cut_ms", "train_seconds")},
            "ranker": {k: rk[k] for k in ("mode", "steps", "metrics", "train_seconds")}}
    return _envelope("make demo", "artifacts/checkpoints/{pinnerformer,ranker}.metrics.json", data, _mtime(*paths),
                     None)


def extract_loo(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "loo_ml100k.json")
    if d is None:
        return None
    keep = {"recipe": d["recipe"], "objective": d["objective"], "test": d["test"], "validation": d["validation"],
            "training": {k: d["training"][k] for k in ("steps", "best_step", "train_seconds")},
            "baselines": {n: {k: ({x: b[k][x] for x in ("steps", "best_step", "train_seconds")} if k == "training"
                                  else b[k]) for k in ("test", "validation", "training") if k in b}
                          for n, b in d["baselines"].items()},
            "settings": d["settings"]}
    return _envelope("make eval-loo-ml100k", "results/loo_ml100k.json", keep, _mtime(results / "loo_ml100k.json"),
                     None)


def _real(name: str, command: str) -> Callable[[Path, Path], Figures | None]:
    def extract(results: Path, artifacts: Path) -> Figures | None:
        d = _load(results / f"{name}.json")
        if d is None:
            return None
        data = {"loo": d["loo"], "window": d["window"], "settings": d["settings"],
                "window_settings": {ds: r["settings"] for ds, r in d["reports"]["window"].items()}}
        return _envelope(command, f"results/{name}.json", data, _mtime(results / f"{name}.json"), None)
    return extract


def extract_ranker_real(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "ranker_real.json")
    if d is None:
        return None
    return _envelope("make eval-ranker-real", "results/ranker_real.json", _no_nan(d),
                     _mtime(results / "ranker_real.json"), None)


def extract_reliability(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "reliability.json")
    if d is None:
        return None
    # Process tables (pids, shared-memory names) say nothing a reader needs.
    data = {**d, "stub_kill": {k: v for k, v in d["stub_kill"].items() if k not in ("stubs_before", "stubs_after")}}
    return _envelope("make reliability", "results/reliability.json", data, d["date"], None)


def extract_bench(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "bench.json")
    if d is None:
        return None
    data = {k: v for k, v in d.items() if k not in ("date", "machine", "repository", "ranker", "repositories")}
    return _envelope("make bench", "results/bench.json", data, d["date"], d["machine"])


def extract_loadtest(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "loadtest.json")
    if d is None:
        return None
    data = {k: v for k, v in d.items() if k not in ("date", "machine", "url")}
    return _envelope("make loadtest", "results/loadtest.json", data, d["date"], d["machine"])


def extract_perf_analyzer(results: Path, artifacts: Path) -> Figures | None:
    d = _load(results / "perf_analyzer.json")
    if d is None or "perf_analyzer" not in d:
        return None
    return _envelope("make perf-analyzer", "results/perf_analyzer.json", d["perf_analyzer"], d["date"], d["machine"])


def extract_step_validation(results: Path, artifacts: Path) -> Figures | None:
    path = results / "step_validation.json"
    d = _load(path)
    return None if d is None else _envelope(STEP_VALIDATION, "results/step_validation.json", d, _mtime(path), None)


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Table:
    name: str  # the marker: <!-- figures:NAME -->
    doc: str  # relative to the repository root
    figures: str  # docs/figures/<figures>.json
    render: Callable[[Figures], list[str]]


TABLES = [
    Table("two-commands", "docs/benchmarks.md", "two_commands", render_two_commands),
    Table("demo-latency", "docs/benchmarks.md", "demo", render_demo_latency),
    Table("bench-headline", "docs/benchmarks.md", "bench", render_bench_headline),
    Table("bench-latency", "docs/benchmarks.md", "bench", render_bench_latency),
    Table("bench-breakdown", "docs/benchmarks.md", "bench", render_bench_breakdown),
    Table("bench-fusion", "docs/benchmarks.md", "bench", render_bench_fusion),
    Table("bench-throughput", "docs/benchmarks.md", "bench", render_bench_throughput),
    Table("loadtest", "docs/benchmarks.md", "loadtest", render_loadtest),
    Table("step-validation", "docs/benchmarks.md", "step_validation", render_step_validation),
    Table("perf-analyzer", "docs/benchmarks.md", "perf_analyzer", render_perf_analyzer),
    Table("demo-quality", "docs/results.md", "demo_quality", render_demo_quality),
    Table("loo-ml100k", "docs/results.md", "loo_ml100k", render_loo),
    Table("item-features", "docs/results.md", "item_features", render_item_features),
    Table("real", "docs/results.md", "real", render_real),
    Table("ranker-real", "docs/results.md", "ranker_real", render_ranker_ablation),
    Table("reliability", "docs/reliability.md", "reliability", render_reliability),
]

#: figures file -> how `--from-results` makes it. two_commands has none: it was
#: measured by hand on fresh clones (its file names each run's command).
EXTRACTORS: dict[str, Callable[[Path, Path], Figures | None]] = {
    "demo": extract_demo, "demo_quality": extract_demo_quality, "loo_ml100k": extract_loo,
    "real": _real("real", "make eval-real"), "item_features": _real("item_features", "make eval-item-features"),
    "ranker_real": extract_ranker_real, "reliability": extract_reliability, "bench": extract_bench,
    "loadtest": extract_loadtest, "step_validation": extract_step_validation, "perf_analyzer": extract_perf_analyzer,
}


# ---------------------------------------------------------------- rendering into the docs

def region(spec: Table, figures: Figures) -> str:
    return "\n".join([provenance(figures, spec.figures), "", *spec.render(figures)]) + "\n"


def render_docs(root: Path) -> tuple[dict[str, tuple[str, str]], list[str], list[str]]:
    """{doc: (text now, text rendered)}, the problems (a marker missing, a
    region with no figures file that does not say it is hand-written), and the
    hand-written regions (name: the comment)."""
    by_name = {t.name: t for t in TABLES}
    docs = {t.doc: (root / t.doc).read_text() for t in TABLES}
    problems, handwritten = [], []
    rendered = {}
    for doc, text in docs.items():
        found = set()

        def fill(m: re.Match[str], doc: str = doc, found: set[str] = found) -> str:
            name, body = m["name"], m["body"]
            spec = by_name.get(name)
            if spec is None or spec.doc != doc:
                problems.append(f"{doc}: unknown figures region {name!r}")
                return m[0]
            found.add(name)
            path = root / FIGURES / f"{spec.figures}.json"
            if not path.is_file():
                comment = next((ln for ln in body.splitlines() if ln.startswith(HANDWRITTEN)), None)
                if comment is None:
                    problems.append(f"{doc}: {name}: no {FIGURES}/{spec.figures}.json and no `{HANDWRITTEN} ...` "
                                    "comment saying which command measures it")
                else:
                    handwritten.append(f"{name}: {comment}")
                return m[0]
            return m[1] + region(spec, json.loads(path.read_text())) + m[4]

        rendered[doc] = (text, REGION.sub(fill, text))
        problems += [f"{doc}: no <!-- figures:{t.name} --> region" for t in TABLES if t.doc == doc
                     and t.name not in found]
    return rendered, problems, handwritten


def _utc(date: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(date)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def refresh(root: Path, results: Path, artifacts: Path) -> list[str]:
    """Rewrite docs/figures/*.json from the results files that exist and are
    newer than the record: an old results file left in results/ never
    replaces a newer record, and the same run again keeps the record's
    hand-added note and trimming. Returns what was refreshed."""
    done = []
    for stem, extract in EXTRACTORS.items():
        figures, path = extract(results, artifacts), root / FIGURES / f"{stem}.json"
        if figures is None or (path.is_file() and _utc(figures["date"]) <= _utc(json.loads(path.read_text())["date"])):
            continue
        path.write_text(json.dumps(figures, indent=1) + "\n")
        done.append(stem)
    if "loadtest" in done and (results / "loadtest.png").is_file():
        shutil.copyfile(results / "loadtest.png", root / "docs" / "loadtest.png")  # the chart beside its table
    return done


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--check", is_flag=True, help="Change nothing; exit 1 with a diff if a doc's tables differ from "
                                            "what their figures files render.")
@click.option("--from-results", "results", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="First refresh docs/figures/*.json from the results files in this folder (those present).")
@click.option("--artifacts", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts"),
              show_default=True, help="With --from-results: where the checkpoints' metrics files are.")
@click.option("--root", type=click.Path(path_type=Path, exists=True, file_okay=False), default=ROOT,
              show_default=True, help="Repository root holding docs/.")
def main(check: bool, results: Path | None, artifacts: Path, root: Path) -> None:
    if results is not None:
        if check:
            raise click.UsageError("--check compares only; run --from-results without it")
        click.echo("refreshed " + (", ".join(f"{FIGURES}/{s}.json" for s in refresh(root, results, artifacts))
                                   or f"nothing (no results file in {results} newer than its record)"))
    rendered, problems, handwritten = render_docs(root)
    for line in handwritten:
        click.echo(f"hand-written (no figures file yet): {line}")
    stale = {doc: pair for doc, pair in rendered.items() if pair[0] != pair[1]}
    if check:
        for doc, (now, new) in stale.items():
            sys.stdout.writelines(difflib.unified_diff(now.splitlines(True), new.splitlines(True), f"{doc} (now)",
                                                       f"{doc} (from {FIGURES})"))
    else:
        for doc, (_, new) in stale.items():
            (root / doc).write_text(new)
            click.echo(f"rewrote {doc}")
    for p in problems:
        click.echo(f"problem: {p}", err=True)
    if problems or (check and stale):
        sys.exit(1)


if __name__ == "__main__":
    main()
