"""Per-user costs of the daily embedding measured here, and the arithmetic
that turns them into a size for 100 million users (docs/deploy.md, "Sizing
for 100 million users").

    python -m deploy.daily.sizing --out results/daily_sizing.json   # make daily-sizing
    python -m deploy.daily.sizing --render deploy/daily/sizing.json --docs docs/deploy.md

The record committed as deploy/daily/sizing.json is what docs/deploy.md's
table is rendered from (between `<!-- daily-sizing -->` markers;
tests/deploy/test_daily_docs.py checks the two agree): measure with the
first line, copy the result over it, rewrite the table with the second.

Measured on this machine: the embedding compute per user on one CPU thread
(the quick PinnerFormer of `make train-pinnerformer`, at the dataset's own
history lengths and at the 256-action cap; the paper-size tower with random
weights at the cap, for scale), its floating-point operations per user
(torch's FlopCounterMode, exact for this model), a whole `pinrank embed`
process on one thread (its fixed part: start-up and loading the log), and
the bytes per user of the snapshot it writes, and per action of the log.

Assumed, and named in the output: the user count, the share of users with
new actions on a day, how many threads a shard pod runs (with linear
scaling), how long a shard may take, a GPU's sustained throughput on this
model, the history each user keeps in the log, and how many runs and
repository versions the volume keeps. Everything in "estimate" follows
from those two sections by the formulas in `estimate()`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pinrank.data.dataset import load_dataset
from pinrank.embed.batch import user_embeddings
from pinrank.models.pinnerformer import PinnerFormer, PinnerFormerConfig, UserTimelines, load_pinnerformer, to_tensors

#: What is assumed, not measured (each one is a CLI option).
ASSUMPTIONS = {
    "users": 100_000_000,
    "active_fraction": 0.2,
    "threads_per_shard": 4,
    "shard_minutes": 30.0,
    "gpu_tflops": 50.0,
    "actions_per_user": 256,
    "kept_runs": 7,
    "kept_versions": 7,
}
ASSUMPTION_NOTES = {
    "users": "users with a PinnerFormer embedding",
    "active_fraction": "share of users with new actions on a day (recomputed by the incremental run); "
                       "the synthetic log here has about a quarter (results/daily_loop.json, day 1)",
    "threads_per_shard": "torch threads per embedding pod (embed-threads), taken to scale linearly",
    "shard_minutes": "wall time one shard may take on a full (retrain) run",
    "gpu_tflops": "sustained TFLOP/s of one data-centre GPU on this model in FP32/TF32 eager PyTorch, padding "
                  "included (a fraction of an H100's peak); `pinrank embed` itself runs on CPU today",
    "actions_per_user": "actions per user the log keeps (the sequence cap)",
    "kept_runs": "run directories kept on the volume (keep-runs)",
    "kept_versions": "repository versions kept (each holds a copy of its snapshot)",
}


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _flops_per_user(model: PinnerFormer, timelines: UserTimelines, rows: np.ndarray, ends: np.ndarray) -> float:
    inputs = to_tensors(timelines.batch(rows, ends, model.max_len))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.embed_users(**inputs)
    return counter.get_total_flops() / rows.size


def measure(data: Path, checkpoint: Path, repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(1)
    ds = load_dataset(data)
    model, _ = load_pinnerformer(checkpoint)
    timelines = UserTimelines(ds, model.config.sequence_actions)
    as_of = int(ds.train_end_ms)
    rows = np.arange(len(timelines))
    ends = timelines.ends_before(rows, as_of)
    history = ends - timelines.offsets[:-1]
    rows, ends, history = rows[history > 0], ends[history > 0], history[history > 0]
    window = np.minimum(history, model.max_len)
    capped = window >= model.max_len
    log(f"sizing: {rows.size} users ({int(capped.sum())} at the {model.max_len}-action cap), one thread")

    seconds = _best_seconds(lambda: user_embeddings(model, timelines, rows, as_of), repeats)
    cap_rows, cap_ends = rows[capped], ends[capped]
    cap_seconds = _best_seconds(lambda: user_embeddings(model, timelines, cap_rows, as_of), repeats)
    quick = {
        "config": {k: v for k, v in model.config.to_dict().items()
                   if k in ("num_layers", "hidden", "heads", "out_dim", "max_len")},
        "users": int(rows.size), "mean_window": round(float(window.mean()), 1),
        "cpu_seconds_per_user": seconds / rows.size,
        "users_at_cap": int(capped.sum()), "cpu_seconds_per_user_at_cap": cap_seconds / max(int(capped.sum()), 1),
        "flops_per_user": _flops_per_user(model, timelines, rows[:256], ends[:256]),
        "flops_per_user_at_cap": _flops_per_user(model, timelines, cap_rows[:64], cap_ends[:64]),
    }
    log(f"  quick tower: {quick['cpu_seconds_per_user'] * 1e3:.2f} ms/user (mean window {quick['mean_window']}), "
        f"{quick['cpu_seconds_per_user_at_cap'] * 1e3:.2f} ms/user at the cap")

    # The paper's tower (random weights: the cost does not depend on them), on a few capped users.
    torch.manual_seed(0)
    paper = PinnerFormer(PinnerFormerConfig.paper(), ds.item_emb).eval()
    few_rows, few_ends = cap_rows[:16], cap_ends[:16]
    paper_inputs = to_tensors(timelines.batch(few_rows, few_ends, paper.max_len))

    def paper_forward() -> None:
        with torch.inference_mode():
            paper.embed_users(**paper_inputs)

    paper_seconds = _best_seconds(paper_forward, repeats)
    paper_cost = {
        "config": {k: v for k, v in paper.config.to_dict().items()
                   if k in ("num_layers", "hidden", "heads", "out_dim", "max_len")},
        "users": int(few_rows.size),
        "cpu_seconds_per_user_at_cap": paper_seconds / few_rows.size,
        "flops_per_user_at_cap": _flops_per_user(paper, timelines, few_rows, few_ends),
    }
    log(f"  paper tower: {paper_cost['cpu_seconds_per_user_at_cap'] * 1e3:.1f} ms/user at the cap")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "snapshot"
        argv = [str(Path(sys.executable).parent / "pinrank"), "embed", "--checkpoint", str(checkpoint),
                "--data", str(data), "--out", str(out), "--threads", "1", "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        meta = json.loads((out / "meta.json").read_text())
        users = meta["counts"]["users"]
        files = {p.name: p.stat().st_size for p in out.iterdir()}
    process = {"command": ["pinrank", *argv[1:3], "CHECKPOINT", "--data", "DATA", "--out", "OUT", *argv[-3:]],
               "wall_seconds": wall, "users": users,
               "fixed_seconds": max(wall - quick["cpu_seconds_per_user"] * users, 0.0)}
    snapshot = {"users": users, "files": files, "bytes_total": sum(files.values()),
                "bytes_per_user": (files["user_ids.npy"] + files["user_emb.npy"]) / users}
    log_bytes = sum(p.stat().st_size for p in data.glob("actions*.parquet"))
    return {
        "dataset": {"path": str(data), "users": int(len(timelines)), "actions": int(ds.actions["ts_ms"].size),
                    "actions_bytes": log_bytes, "bytes_per_action": log_bytes / ds.actions["ts_ms"].size},
        "quick": quick, "paper": paper_cost, "embed_process": process, "snapshot": snapshot,
        "repeats": repeats, "threads": 1,
    }


def estimate(measured: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    """100M-user figures from the measured costs and the assumptions `a`."""
    users = a["users"]
    per_user = measured["quick"]["cpu_seconds_per_user_at_cap"]
    full_core_s = users * per_user
    shard_core_s = a["threads_per_shard"] * a["shard_minutes"] * 60
    shards = math.ceil(full_core_s / shard_core_s)
    users_per_shard = math.ceil(users / shards)

    def gpu_hours(flops_per_user: float, fraction: float) -> float:
        return users * fraction * flops_per_user / (a["gpu_tflops"] * 1e12) / 3600

    snap_gb = users * measured["snapshot"]["bytes_per_user"] / 1e9
    log_gb = users * a["actions_per_user"] * measured["dataset"]["bytes_per_action"] / 1e9
    return {
        "cpu_core_hours_full": full_core_s / 3600,
        "cpu_core_hours_incremental": full_core_s * a["active_fraction"] / 3600,
        "shards": shards, "users_per_shard": users_per_shard,
        "shard_minutes_full": users_per_shard * per_user / a["threads_per_shard"] / 60,
        "shard_minutes_incremental": users_per_shard * a["active_fraction"] * per_user / a["threads_per_shard"] / 60,
        "pod_cpus": shards * a["threads_per_shard"],
        "gpu_hours_full_quick": gpu_hours(measured["quick"]["flops_per_user_at_cap"], 1.0),
        "gpu_hours_incremental_quick": gpu_hours(measured["quick"]["flops_per_user_at_cap"], a["active_fraction"]),
        "gpu_hours_full_paper": gpu_hours(measured["paper"]["flops_per_user_at_cap"], 1.0),
        "gpu_hours_incremental_paper": gpu_hours(measured["paper"]["flops_per_user_at_cap"], a["active_fraction"]),
        "cpu_core_hours_full_paper": users * measured["paper"]["cpu_seconds_per_user_at_cap"] / 3600,
        "snapshot_gb": snap_gb,
        "shards_gb_full": snap_gb,
        "action_log_gb": log_gb,
        "volume_gb": log_gb + (a["kept_runs"] + a["kept_versions"]) * snap_gb + snap_gb,
    }


def _g(x: float) -> str:
    """Three significant figures, thousands separated."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def markdown(record: dict[str, Any]) -> str:
    """The table docs/deploy.md carries (tests/deploy/test_daily_docs.py checks it is this)."""
    m, a, e = record["measured"], record["assumptions"], record["estimate"]
    q, p = m["quick"], m["paper"]
    users = f"{a['users'] / 1e6:,.0f} million"
    rows = [
        ("**measured** CPU time per user, quick tower (1 thread, 256-action history)",
         f"{q['cpu_seconds_per_user_at_cap'] * 1e3:.2f} ms ({q['cpu_seconds_per_user'] * 1e3:.2f} ms at this "
         f"log's mean window of {q['mean_window']:.0f})"),
        ("**measured** FLOPs per user, quick / paper-size tower (256 actions)",
         f"{q['flops_per_user_at_cap'] / 1e6:,.0f} MFLOP / {p['flops_per_user_at_cap'] / 1e9:,.1f} GFLOP"),
        ("**measured** CPU time per user, paper-size tower (1 thread)",
         f"{p['cpu_seconds_per_user_at_cap'] * 1e3:,.0f} ms"),
        ("**measured** fixed cost of one `pinrank embed` process (start-up, loading this log)",
         f"{m['embed_process']['fixed_seconds']:.1f} s"),
        ("**measured** snapshot bytes per user (ids + embeddings, float32 x 64)",
         f"{m['snapshot']['bytes_per_user']:.0f} B"),
        ("**measured** action-log bytes per action (parquet)", f"{m['dataset']['bytes_per_action']:.1f} B"),
        (f"CPU core-hours, full snapshot of {users} users (quick tower)", _g(e["cpu_core_hours_full"])),
        (f"CPU core-hours, daily incremental run ({a['active_fraction']:.0%} active)",
         _g(e["cpu_core_hours_incremental"])),
        (f"shards at {a['threads_per_shard']} threads, {a['shard_minutes']:.0f} min each on a full run",
         f"{e['shards']} ({e['users_per_shard']:,} users each; {e['shard_minutes_incremental']:.0f} min on an "
         f"incremental run)"),
        (f"GPU-hours at {a['gpu_tflops']:.0f} TFLOP/s sustained, quick tower: full / incremental",
         f"{_g(e['gpu_hours_full_quick'])} / {_g(e['gpu_hours_incremental_quick'])}"),
        ("GPU-hours, paper-size tower: full / incremental",
         f"{_g(e['gpu_hours_full_paper'])} / {_g(e['gpu_hours_incremental_paper'])} "
         f"(on CPU: {_g(e['cpu_core_hours_full_paper'])} core-hours full)"),
        ("storage per snapshot (and per repository version, which copies it)", f"{_g(e['snapshot_gb'])} GB"),
        (f"action log at {a['actions_per_user']} actions per user", f"{_g(e['action_log_gb'])} GB"),
        (f"volume: log + {a['kept_runs']} runs + {a['kept_versions']} versions + one run's shards",
         f"{_g(e['volume_gb'])} GB"),
    ]
    machine = record.get("machine", {})
    where = f"{machine.get('cpus', '?')} CPUs, {machine.get('platform', 'machine not recorded').split('-')[0]}"
    lines = [f"Measured by `{record['command']}`, {record['date'][:10]}, {where} (shared, timings are the best of "
             f"{m['repeats']}); record: `deploy/daily/sizing.json`.", "",
             "| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


#: The marked region of docs/deploy.md that holds `markdown(record)`.
DOCS_REGION = re.compile(r"(<!-- daily-sizing -->\n)(.*?)(<!-- /daily-sizing -->)", re.DOTALL)


def rewrite_docs(docs: Path, record: dict[str, Any]) -> bool:
    """Put the table of `record` into the docs' marked region; whether anything changed."""
    text = docs.read_text()
    if not DOCS_REGION.search(text):
        raise click.ClickException(f"{docs}: no <!-- daily-sizing --> region")
    new = DOCS_REGION.sub(lambda m: m.group(1) + markdown(record) + "\n" + m.group(3), text)
    docs.write_text(new)
    return new != text


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--render", "render_record", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Measure nothing: render this record (with --docs, into the docs).")
@click.option("--docs", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Also rewrite the table in this document's <!-- daily-sizing --> region.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("artifacts/data/quick"), show_default=True, help="Dataset to embed (`make data`).")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=Path("artifacts/checkpoints/pinnerformer.pt"), show_default=True,
              help="PinnerFormer checkpoint (`make train-pinnerformer`).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("results/daily_sizing.json"),
              show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timings are the best of this many runs (the machine is shared).")
@click.option("--users", type=click.IntRange(min=1), default=ASSUMPTIONS["users"], show_default=True)
@click.option("--active-fraction", type=click.FloatRange(0, 1), default=ASSUMPTIONS["active_fraction"],
              show_default=True)
@click.option("--threads-per-shard", type=click.IntRange(min=1), default=ASSUMPTIONS["threads_per_shard"],
              show_default=True)
@click.option("--shard-minutes", type=click.FloatRange(min=1), default=ASSUMPTIONS["shard_minutes"],
              show_default=True)
@click.option("--gpu-tflops", type=click.FloatRange(min=0.1), default=ASSUMPTIONS["gpu_tflops"], show_default=True)
@click.option("--actions-per-user", type=click.IntRange(min=1), default=ASSUMPTIONS["actions_per_user"],
              show_default=True)
@click.option("--kept-runs", type=click.IntRange(min=1), default=ASSUMPTIONS["kept_runs"], show_default=True)
@click.option("--kept-versions", type=click.IntRange(min=1), default=ASSUMPTIONS["kept_versions"],
              show_default=True)
def main(render_record: Path | None, docs: Path | None, data: Path, checkpoint: Path, out: Path, repeats: int,
         **assumed: Any) -> None:
    """Measure the daily embedding's per-user costs here and size it for
    100 million users (the assumptions are the options; see the module docs)."""
    if render_record is not None:
        record = json.loads(render_record.read_text())
        click.echo(markdown(record))
        if docs is not None:
            click.echo(f"{docs}: {'rewritten' if rewrite_docs(docs, record) else 'already up to date'}")
        return
    measured = measure(data, checkpoint, repeats, log=click.echo)
    record = {
        "command": "make daily-sizing",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "measured": measured,
        "assumptions": assumed, "assumption_notes": ASSUMPTION_NOTES,
        "estimate": estimate(measured, assumed),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(markdown(record))
    click.echo(f"wrote {out}")
    if docs is not None:
        click.echo(f"{docs}: {'rewritten' if rewrite_docs(docs, record) else 'already up to date'}")


if __name__ == "__main__":
    main()
