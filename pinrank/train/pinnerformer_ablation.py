"""`make eval-pinnerformer`: train each (objective, negatives) variant on one
dataset and write Recall@10, P90 coverage@10 and interest entropy@50 per
variant, plus the popularity and history-mean baselines.

First version: the once/daily/realtime inference table of issue 3 is not
produced yet.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click

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


@click.command()
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/pinnerformer.json"), show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("artifacts/ablation"), show_default=True,
              help="Where the per-variant checkpoints go.")
@click.option("--steps", type=int, default=300, show_default=True, help="Training steps per variant (quick preset).")
@click.option("--threads", type=int, default=2, show_default=True)
def main(data: Path, out: Path, work: Path, steps: int, threads: int) -> None:
    """Train every ablation variant of PinnerFormer and compare them."""
    import torch

    from pinrank.data.dataset import DatasetError, load_dataset
    from pinrank.models.pinnerformer import load_pinnerformer
    from pinrank.train.pinnerformer import PinnerFormerTrainConfig, train_pinnerformer
    from pinrank.train.pinnerformer_eval import evaluate_pinnerformer

    torch.set_num_threads(threads)
    try:
        ds = load_dataset(data)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    rows, baselines = [], {}
    for objective, negatives, logq in VARIANTS:
        name = f"{objective}-{negatives}" + ("" if logq else "-nologq")
        cfg = replace(PinnerFormerTrainConfig(), steps=steps, objective=objective, negatives=negatives, logq=logq)
        started = time.time()
        ckpt = work / f"{name}.pt"
        train_pinnerformer(ds, ckpt, cfg, progress=False, evaluate=False)
        model, _ = load_pinnerformer(ckpt)
        m = evaluate_pinnerformer(model, ds)
        baselines = {b: m[b] for b in ("popularity", "history_mean")}
        row = {"objective": objective, "negatives": negatives, "logq": logq,
               "recall_at_10": m["pinnerformer"]["recall"],
               "p90_coverage_at_10": m["pinnerformer"]["p90_coverage"],
               "entropy_at_50": m["pinnerformer"]["interest_entropy"],
               "eval_users": m["eval_users"], "train_seconds": round(time.time() - started, 1)}
        rows.append(row)
        click.echo(f"{name:<30} R@10 {row['recall_at_10']:.4f}  P90cov {row['p90_coverage_at_10']:.4f}  "
                   f"H@50 {row['entropy_at_50']:.3f}  ({row['train_seconds']} s)")
    for b, v in baselines.items():
        click.echo(f"{b:<30} R@10 {v['recall']:.4f}  P90cov {v['p90_coverage']:.4f}  H@50 {v['interest_entropy']:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(data), "steps": steps, "variants": rows, "baselines": baselines,
                               "inference": "not produced yet (issue 3)"}, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
