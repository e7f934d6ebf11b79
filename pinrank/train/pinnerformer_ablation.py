"""`make eval-pinnerformer`: train each (objective, negatives) variant on one
dataset and write Recall@10, P90 coverage@10 and interest entropy@50 per
variant, the popularity and history-mean baselines, and an inference table:
Recall@10 of each objective (mixed negatives, logQ) when its embedding is
computed once, daily or in realtime over the eval window (PinnerFormer
paper §5.3).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import torch

from pinrank.backend import schema
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.models.pinnerformer import load_pinnerformer
from pinrank.train.common import write_report
from pinrank.train.pinnerformer import PinnerFormerTrainConfig, train_pinnerformer
from pinrank.train.pinnerformer_eval import evaluate_inference_modes, evaluate_pinnerformer

#: (objective, negatives, logq) rows, the paper's comparisons first.
VARIANTS: tuple[tuple[str, str, bool], ...] = (
    ("dense_all_action", "mixed", True),
    ("all_action", "mixed", True),
    ("sasrec", "mixed", True),
    ("next_action", "mixed", True),
    ("dense_all_action", "in_batch", True),
    ("dense_all_action", "random", True),
    ("dense_all_action", "mixed", False),
)


def variant_name(objective: str, negatives: str, logq: bool) -> str:
    return f"{objective}-{negatives}" + ("" if logq else "-nologq")


VARIANT_NAMES = tuple(variant_name(*v) for v in VARIANTS)


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables as Markdown (variants + baselines, then inference modes)."""
    lines = ["| objective | negatives | logQ | Recall@10 | P90 coverage@10 | entropy@50 | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        lines.append(f"| {r['objective']} | {r['negatives']} | {'yes' if r['logq'] else 'no'} | "
                     f"{r['recall_at_10']:.4f} | {r['p90_coverage_at_10']:.4f} | {r['entropy_at_50']:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    for name, b in report["baselines"].items():
        lines.append(f"| {name} baseline | | | {b['recall']:.4f} | {b['p90_coverage']:.4f} | "
                     f"{b['interest_entropy']:.3f} | |")
    if report["inference"]:
        lines += ["", "| objective (Recall@10) | once | daily | realtime |", "|---|---|---|---|"]
        for obj, m in report["inference"].items():
            lines.append(f"| {obj} | {m['once']:.4f} | {m['daily']:.4f} | {m['realtime']:.4f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/pinnerformer.json"), show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("artifacts/ablation"), show_default=True,
              help="Where the per-variant checkpoints go.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training steps per variant (quick preset).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--variants", "only", type=click.Choice(VARIANT_NAMES), multiple=True,
              help="Run only these variants (repeatable; default: all).")
@click.option("--eval-window-days", type=click.FloatRange(min=0.0, min_open=True), default=14.0, show_default=True,
              help="Positives in [train_end, train_end + this) are the targets (the paper: 14).")
@click.option("--future-window-days", type=click.FloatRange(min=0.0, min_open=True),
              default=float(schema.FUTURE_WINDOW_DAYS), show_default=True,
              help="Dense all-action / all-action label window (the paper: 28).")
def main(data: Path, out: Path, work: Path, steps: int, threads: int, only: tuple[str, ...],
         eval_window_days: float, future_window_days: float) -> None:
    """Train every ablation variant of PinnerFormer and compare them."""
    torch.set_num_threads(threads)
    try:
        ds = load_dataset(data)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    rows, baselines, inference = [], {}, {}
    progress = sys.stderr.isatty()  # one training bar per variant; plain lines in logs
    t_all = time.time()
    for objective, negatives, logq in VARIANTS:
        name = variant_name(objective, negatives, logq)
        if only and name not in only:
            continue
        cfg = replace(PinnerFormerTrainConfig(), steps=steps, objective=objective, negatives=negatives, logq=logq,
                      future_window_days=future_window_days, eval_window_days=eval_window_days)
        started = time.time()
        ckpt = work / f"{name}.pt"
        train_pinnerformer(ds, ckpt, cfg, progress=progress, evaluate=False)
        train_seconds = round(time.time() - started, 1)
        model, _ = load_pinnerformer(ckpt)
        m = evaluate_pinnerformer(model, ds, window_days=eval_window_days)
        baselines = {b: m[b] for b in ("popularity", "history_mean", "interest_oracle") if b in m}
        row = {"objective": objective, "negatives": negatives, "logq": logq,
               "recall_at_10": m["pinnerformer"]["recall"],
               "p90_coverage_at_10": m["pinnerformer"]["p90_coverage"],
               "entropy_at_50": m["pinnerformer"]["interest_entropy"],
               "eval_users": m["eval_users"], "train_seconds": train_seconds}
        if negatives == "mixed" and logq:
            inference[objective] = evaluate_inference_modes(model, ds, k=10, window_days=eval_window_days)
            row["inference"] = inference[objective]
        rows.append(row)
        modes = "  ".join(f"{k} {v:.4f}" for k, v in row.get("inference", {}).items())
        click.echo(f"{name:<30} R@10 {row['recall_at_10']:.4f}  P90cov {row['p90_coverage_at_10']:.4f}  "
                   f"H@50 {row['entropy_at_50']:.3f}  ({row['train_seconds']} s)  {modes}")
    for b, v in baselines.items():
        click.echo(f"{b:<30} R@10 {v['recall']:.4f}  P90cov {v['p90_coverage']:.4f}  H@50 {v['interest_entropy']:.3f}")
    report = {"data": str(data), "steps": steps, "eval_window_days": eval_window_days,
              "future_window_days": future_window_days, "variants": rows, "baselines": baselines,
              "inference": inference, "total_seconds": round(time.time() - t_all, 1)}
    click.echo(write_report(out, report, render_markdown(report)))


if __name__ == "__main__":
    main()
