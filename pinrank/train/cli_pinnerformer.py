"""`pinrank train pinnerformer` and `pinrank embed` (the daily snapshot job)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import click

from pinrank.models.pinnerformer import PinnerFormerConfig
from pinrank.train.pinnerformer import PinnerFormerTrainConfig
from pinrank.train.pinnerformer_loss import NEGATIVES, OBJECTIVES

_DEFAULT_TRAIN = PinnerFormerTrainConfig()
_DEFAULT_MODEL = PinnerFormerConfig()


def _load_data(path: Path):  # type: ignore[no-untyped-def]
    from pinrank.data.dataset import DatasetError, load_dataset

    try:
        return load_dataset(path)
    except DatasetError as exc:
        raise click.ClickException(f"bad dataset: {exc}") from None


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@click.command("pinnerformer")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Dataset directory (e.g. from `pinrank data synth`); trains on actions before "
                   "meta train_end_ms.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Checkpoint to write (kind=pinnerformer); `--resume` continues from it.")
@click.option("--steps", type=click.IntRange(min=1), default=_DEFAULT_TRAIN.steps, show_default=True,
              help="Total optimiser steps (a resumed run continues up to this total).")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULT_TRAIN.batch_size, show_default=True,
              help="User windows per step (each gives up to --positions labelled positions).")
@click.option("--positions", type=click.IntRange(min=1), default=_DEFAULT_TRAIN.positions_per_seq,
              show_default=True, help="Sampled positions per window (dense all-action loss).")
@click.option("--lr", type=float, default=_DEFAULT_TRAIN.lr, show_default=True)
@click.option("--window-days", type=click.FloatRange(min=0, min_open=True),
              default=_DEFAULT_TRAIN.future_window_days, show_default=True,
              help="Future window K (days) a position's label is drawn from.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=_DEFAULT_TRAIN.objective, show_default=True,
              help="Training objective (ablation): which positions predict which positives.")
@click.option("--negatives", type=click.Choice(NEGATIVES), default=_DEFAULT_TRAIN.negatives, show_default=True,
              help="Negatives of the sampled softmax: in-batch + random, in-batch only, or random only.")
@click.option("--no-logq", is_flag=True, help="Do not subtract log Q (sampling-probability correction).")
@click.option("--layers", type=click.IntRange(min=1), default=_DEFAULT_MODEL.num_layers, show_default=True)
@click.option("--hidden", type=click.IntRange(min=8), default=_DEFAULT_MODEL.hidden, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=_DEFAULT_MODEL.heads, show_default=True)
@click.option("--paper-size", is_flag=True,
              help="The paper's tower (6 layers, H=768, D=256; overrides --layers/--hidden/--heads). Offline "
                   "evaluation only unless the schema's USER_EMB_DIM is 256 too; slow on CPU.")
@click.option("--seed", type=int, default=_DEFAULT_TRAIN.seed, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --out (weights, optimiser, data RNG, step) if it exists.")
@click.option("--curve", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the training-curve PNG here.")
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write metrics JSON here (default: OUT with .metrics.json).")
@click.option("--no-eval", is_flag=True, help="Skip the Recall@10 evaluation after training.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_pinnerformer(data: Path, out: Path, steps: int, batch_size: int, positions: int, lr: float,
                       window_days: float, objective: str, negatives: str, no_logq: bool, layers: int, hidden: int, heads: int, paper_size: bool, seed: int, resume: bool,
                       curve: Path | None, metrics_path: Path | None, no_eval: bool, threads: int | None,
                       progress: bool) -> None:
    """Train the PinnerFormer user tower with the dense all-action loss.

    Prints Recall@10 on the evaluation period (after train_end_ms) next to a
    popularity baseline, and writes the checkpoint, metrics JSON and curve.
    """
    from pinrank.train.common import write_json
    from pinrank.train.pinnerformer import recall_summary
    from pinrank.train.pinnerformer import train_pinnerformer as train

    _set_threads(threads)
    ds = _load_data(data)
    cfg = replace(_DEFAULT_TRAIN, steps=steps, batch_size=batch_size, positions_per_seq=positions, lr=lr,
                  future_window_days=window_days, seed=seed, objective=objective, negatives=negatives,
                  logq=not no_logq)
    try:
        model_cfg = (PinnerFormerConfig.paper() if paper_size
                     else replace(_DEFAULT_MODEL, num_layers=layers, hidden=hidden, heads=heads))
        metrics = train(ds, out, cfg, model_cfg, resume=resume, curve=curve, progress=progress,
                        evaluate=not no_eval)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    path = write_json(metrics_path or out.with_suffix(".metrics.json"), metrics)
    if not progress and not no_eval:  # with progress on, training already printed it
        click.echo(recall_summary(metrics))
    click.echo(f"checkpoint {out} ({metrics['steps']} steps, {metrics['train_seconds']:.0f} s); metrics {path}")


def _parse_day(value: str) -> int:
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a YYYY-MM-DD date", param_hint="--as-of") from None
    return int(day.timestamp() * 1000)


@click.command("embed")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="PinnerFormer checkpoint (from `pinrank train pinnerformer`).")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Dataset directory whose action log is embedded.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Snapshot directory to write (user_ids.npy, user_emb.npy, cold_start.npy, meta.json).")
@click.option("--as-of", "as_of", default=None, metavar="YYYY-MM-DD",
              help="Use actions strictly before this UTC midnight (default: the dataset's train_end_ms).")
@click.option("--previous", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Yesterday's snapshot: recompute only users active since its as_of and carry the rest.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Users per forward pass (small batches are faster on CPU: less padding, cache-friendly).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
def embed(checkpoint: Path, data: Path, out: Path, as_of: str | None, previous: Path | None, batch_size: int,
          threads: int | None) -> None:
    """Build the daily user-embedding snapshot that serving reads."""
    from pinrank.embed import build_snapshot
    from pinrank.snapshot import SnapshotError, UserSnapshot

    _set_threads(threads)
    ds = _load_data(data)
    as_of_ms = _parse_day(as_of) if as_of is not None else ds.train_end_ms
    try:
        prev = UserSnapshot.load(previous) if previous is not None else None
        snap = build_snapshot(checkpoint, ds, as_of_ms, prev, batch_size=batch_size)
    except (SnapshotError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    snap.save(out)
    click.echo(f"snapshot {out}: version {snap.meta['version']}, " + json.dumps(snap.meta["counts"]))
