"""`make eval-ranker`: train each ranker variant on one dataset and write AUC
and HIT@3 per head plus the serving cost of one request (GFLOP counted by
PyTorch, in-process milliseconds) to results/ranker.json.

Variants (TransAct paper, Table 1 and the hybrid ablation):

- full_early: TransAct (candidate fused into every token) + PinnerFormer;
- full_fused: the same inputs with the request-level dedup encoder;
- no_realtime / no_pinnerformer: drop one user-side input (fused layout for
  no_pinnerformer, so its comparison is with full_fused at equal cost);
- none: neither user-side input (candidate and context only), the floor both
  inputs are measured against;
- avgpool_realtime: TransAct's "WDL + avg-pool sequence" baseline.

Every variant trains on the same requests: from the PinnerFormer
checkpoint's training cut (or a later --train-start) to train_end_ms, so no
training day is embedded by a model that saw its future
(pinrank.train.training_cut).

`hit_at_3` ranks each held-out request (candidate order shuffled) by the
served utility, as users see it: higher is better for save/click/closeup,
lower for hide. `hit_at_3_own_head` ranks by the head's own probability.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import torch

from pinrank.backend import schema
from pinrank.backend.snapshot import SnapshotError
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.embed.batch import build_daily_snapshots
from pinrank.models.ranker import RankerConfig
from pinrank.train.common import write_report
from pinrank.train.pinnerformer import pinnerformer_train_cut_ms
from pinrank.train.ranker import TrainConfig, train_ranker
from pinrank.train.ranker_cost import gflop_per_request, ms_per_request
from pinrank.train.ranker_data import build_ranker_data
from pinrank.train.training_cut import (
    format_ms,
    ranker_periods,
    ranker_train_start,
    resolve_cut,
)

#: name -> RankerConfig overrides.
VARIANTS: dict[str, dict[str, Any]] = {
    "full_early": {"mode": "early"},
    "full_fused": {"mode": "fused"},
    "no_realtime": {"mode": "fused", "use_realtime": False},
    "no_pinnerformer": {"mode": "fused", "use_pinnerformer": False},
    "none": {"mode": "fused", "use_realtime": False, "use_pinnerformer": False},
    "avgpool_realtime": {"mode": "avgpool"},
}
COST_N: tuple[int, ...] = (100, 500, 1000)


def variant_row(metrics: dict[str, Any], cost: dict[int, tuple[float, float]]) -> dict[str, Any]:
    """One results row from `evaluate` metrics and {N: (gflop, ms)}."""
    row: dict[str, Any] = {
        "auc": {h: metrics[h]["auc"] for h in schema.HEADS},
        "hit_at_3": {h: metrics[h]["hit@3_utility"] for h in schema.HEADS},
        "hit_at_3_own_head": {h: metrics[h]["hit@3"] for h in schema.HEADS},
        "hit_at_3_random": {h: metrics[h]["hit@3_random"] for h in schema.HEADS},
    }
    row["gflop_per_request"] = cost[500][0] if 500 in cost else None
    row["ms_per_request"] = cost[500][1] if 500 in cost else None
    row["cost_by_n"] = {str(n): {"gflop": g, "ms": m} for n, (g, m) in cost.items()}
    return row


def render_markdown(report: dict[str, Any]) -> str:
    """Utility-ranked HIT@3 and AUC per head, and the cost at N=500, as a Markdown table.

    Heads without a positive in the evaluation period (AUC NaN in every row,
    e.g. close-up on a log without tags) are left out."""
    rows = report["variants"].values()
    heads = [h for h in schema.HEADS if not all(math.isnan(r["auc"][h]) for r in rows)]
    head_cols = " | ".join(f"{h} AUC / HIT@3" for h in heads)
    lines = [f"| variant | {head_cols} | GFLOP/request | ms/request |",
             "|---|" + "---|" * (len(heads) + 2)]
    for name, r in report["variants"].items():
        cells = " | ".join(f"{r['auc'][h]:.3f} / {r['hit_at_3'][h]:.3f}" for h in heads)
        lines.append(f"| {name} | {cells} | {r['gflop_per_request']:.3f} | {r['ms_per_request']:.1f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--pinnerformer", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="PinnerFormer checkpoint: daily snapshots are built from it (a day reads the one before it).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/ranker.json"), show_default=True)
@click.option("--train-start", default=None, metavar="FRACTION|YYYY-MM-DD",
              help="First day of the rankers' training requests (as `pinrank train ranker --train-start`); "
                   "default: the PinnerFormer checkpoint's training cut, and never before it.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("artifacts/ranker_ablation"),
              show_default=True, help="Where the per-variant checkpoints go.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training steps per variant (quick preset, ~18 min in all on 2 cores; full_early costs "
                   "~8x per step). At 400 steps the realtime variants are still far from converged.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--variants", "only", type=click.Choice(list(VARIANTS)), multiple=True,
              help="Run only these variants (repeatable; default: all).")
@click.option("--cost-repeats", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed serving calls per N (median reported).")
def main(data: Path, pinnerformer: Path, out: Path, train_start: str | None, work: Path, steps: int, threads: int,
         only: tuple[str, ...], cost_repeats: int) -> None:
    """Train every ranker ablation variant and compare quality and cost."""
    # Deferred so that --help and argument errors answer without loading torch and the models.
    torch.set_num_threads(threads)
    t_all = time.time()
    try:
        ds = load_dataset(data)
        cut = pinnerformer_train_cut_ms(pinnerformer)
        start = ranker_train_start(ds.train_end_ms, resolve_cut(train_start, ds) if train_start else None, cut)
        assert start is not None  # a PinnerFormer is always given, so its cut bounds the start
        snaps = build_daily_snapshots(pinnerformer, ds, start, int(ds.meta["end_ms"]))
        train, evaluation = ranker_periods(build_ranker_data(ds, snaps), ds.train_end_ms, start, cut)
    except (DatasetError, SnapshotError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if evaluation.num_impressions == 0:
        raise click.ClickException(f"{data}: no impressions after train_end_ms to evaluate on")
    click.echo(f"PinnerFormer trained before {format_ms(cut)}; rankers train on {train.num_requests} requests "
               f"from {format_ms(start)} to {format_ms(ds.train_end_ms)} (known users {train.user_known.mean():.1%}), "
               f"evaluate on {evaluation.num_requests} (known users {evaluation.user_known.mean():.1%})")
    progress = sys.stderr.isatty()
    rows: dict[str, Any] = {}
    for name, overrides in VARIANTS.items():
        if only and name not in only:
            continue
        model_cfg = replace(RankerConfig(), **overrides)
        cfg = replace(TrainConfig(), steps=steps)
        result = train_ranker(train, ds.item_emb, model_cfg, cfg, out=work / f"{name}.pt", eval_data=evaluation,
                              progress=progress)
        model = result.model.eval()
        cost = {n: (gflop_per_request(model, n), ms_per_request(model, n, repeats=cost_repeats)) for n in COST_N}
        rows[name] = {"config": overrides, **variant_row(result.metrics, cost),
                      "train_seconds": round(result.seconds, 1)}
        r = rows[name]
        click.echo(f"{name:<18} save AUC {r['auc']['save']:.4f} HIT@3 {r['hit_at_3']['save']:.4f} | hide HIT@3 "
                   f"{r['hit_at_3']['hide']:.4f} | {r['gflop_per_request']:.3f} GFLOP {r['ms_per_request']:.1f} ms "
                   f"@N=500 | {r['train_seconds']:.0f} s")
    report = {"data": str(data), "pinnerformer": str(pinnerformer), "steps": steps,
              "pinnerformer_train_cut_ms": cut, "train_start_ms": start, "train_end_ms": ds.train_end_ms,
              "train_requests": train.num_requests, "eval_requests": evaluation.num_requests,
              "known_users": {"train": float(train.user_known.mean()), "eval": float(evaluation.user_known.mean())},
              "threads": threads, "variants": rows,
              "total_seconds": round(time.time() - t_all, 1)}
    click.echo(write_report(out, report, render_markdown(report)))


if __name__ == "__main__":
    main()
