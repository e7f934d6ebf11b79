"""`pinrank train ranker`: featurize impressions, train, evaluate, checkpoint."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from pinrank.backend.snapshot import SnapshotError, UserSnapshot
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.embed import batch as embed_batch  # a module: tests replace build_daily_snapshots on it
from pinrank.models.ranker import RankerConfig
from pinrank.models.realtime import MODES
from pinrank.train.cli_pinnerformer import BACKEND_OPTION
from pinrank.train.common import write_json
from pinrank.train.distributed import SINGLE, DistContext, broadcast_object, distributed_from_env
from pinrank.train.pinnerformer import pinnerformer_train_cut_ms
from pinrank.train.ranker import TrainConfig, format_metrics
from pinrank.train.ranker import train_ranker as run_training
from pinrank.train.ranker_data import build_ranker_data
from pinrank.train.training_cut import (
    format_ms,
    ranker_periods,
    ranker_train_start,
    resolve_cut,
)

_DEFAULT_MODEL = RankerConfig()
_DEFAULT_TRAIN = TrainConfig()


def _load_snapshot_dir(root: Path) -> list:
    subdirs = sorted(p for p in root.iterdir() if (p / "user_ids.npy").exists())
    if (root / "user_ids.npy").exists():
        subdirs = [root]
    if not subdirs:
        raise click.ClickException(
            f"{root}: no snapshots (expected one subdirectory per day, each holding user_ids.npy)")
    return [UserSnapshot.load(p) for p in subdirs]


def _snapshots(ds, pinnerformer: Path | None, snapshots_dir: Path | None,  # type: ignore[no-untyped-def]
               ctx: DistContext = SINGLE, from_ms: int | None = None, progress: bool = False) -> list:
    """Daily snapshots: built from a PinnerFormer checkpoint for the days from
    `from_ms` (default: the dataset's start) on, and saved to snapshots_dir if
    given; or loaded from snapshots_dir. Data-parallel: rank 0 builds and
    saves them, and sends them to the other ranks."""
    if pinnerformer is None:
        assert snapshots_dir is not None
        return _load_snapshot_dir(snapshots_dir)
    if not ctx.is_main:
        return broadcast_object(None, ctx)
    start = int(ds.meta["start_ms"]) if from_ms is None else from_ms
    snaps = embed_batch.build_daily_snapshots(pinnerformer, ds, start, int(ds.meta["end_ms"]), progress=progress)
    broadcast_object(snaps, ctx)
    if snapshots_dir is not None:
        for s in snaps:
            s.save(snapshots_dir / format_ms(s.as_of_ms))  # UTC midnights: named by date
    return snaps


@click.command("ranker")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Dataset directory with impressions (e.g. from `pinrank data synthetic`).")
@click.option("--pinnerformer", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="PinnerFormer checkpoint: daily user-embedding snapshots are built from it.")
@click.option("--no-pinnerformer", is_flag=True,
              help="Train without the long-term user embedding (zero embeddings; ablation).")
@click.option("--snapshots-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --pinnerformer: where to save the built daily snapshots. "
                   "Alone: read existing daily snapshots (one subdirectory each) instead of building them.")
@click.option("--train-start", default=None, metavar="FRACTION|YYYY-MM-DD",
              help="Train on the requests from this cut to train_end_ms (same forms as `train pinnerformer "
                   "--train-cut`). Default: the --pinnerformer checkpoint's training cut (a start before it is "
                   "refused: that checkpoint saw those days' future positives); the whole training period "
                   "with --no-pinnerformer; required with --snapshots-dir alone.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Checkpoint to write (kind=ranker); `--resume` continues from it.")
@click.option("--mode", type=click.Choice(list(MODES)), default=_DEFAULT_MODEL.mode, show_default=True,
              help="early = TransAct (candidate fused into every token, N x L); "
                   "fused = request-level dedup (sequence encoded once, L + N); "
                   "avgpool = mean of the action tokens, no transformer (TransAct's baseline).")
@click.option("--no-realtime", is_flag=True, help="Drop the realtime sequence encoder (ablation).")
@click.option("--steps", type=click.IntRange(min=1), default=_DEFAULT_TRAIN.steps, show_default=True,
              help="Optimizer steps. The default is the quick run: ~2-3 min fused on 2 CPU cores "
                   "for the quick synthetic data; early fusion costs ~10x more per step.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULT_TRAIN.batch_size, show_default=True,
              help="Impressions per step (whole requests, so approximate).")
@click.option("--lr", type=float, default=_DEFAULT_TRAIN.lr, show_default=True)
@click.option("--mask-window-h", type=click.FloatRange(min=0), default=_DEFAULT_TRAIN.mask_window_h,
              show_default=True, help="Training time-window mask: T ~ U[0, this] hours; 0 turns it off.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --out if it exists.")
@click.option("--curve", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the training-loss curve PNG here.")
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the evaluation metrics JSON here (default: OUT with .metrics.json).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@BACKEND_OPTION
def train_ranker(data: Path, pinnerformer: Path | None, no_pinnerformer: bool, snapshots_dir: Path | None,
                 train_start: str | None, out: Path, mode: str, no_realtime: bool, steps: int, batch_size: int,
                 lr: float, mask_window_h: float, seed: int, resume: bool, curve: Path | None,
                 metrics_path: Path | None,
                 threads: int | None, progress: bool, backend: str) -> None:
    """Train the ranker (DCN v2 over candidate, PinnerFormer user embedding,
    context and the realtime action sequence; one head per schema.HEADS) on the
    dataset's impressions from --train-start (default: the PinnerFormer's
    training cut) to meta train_end_ms, then report AUC and HIT@3 per head on
    the requests after it.

    User embeddings come from daily snapshots: a request on day d reads the
    newest snapshot as of d's UTC midnight, as serving would. Data-parallel
    under torchrun (`torchrun --standalone --nproc_per_node=N -m pinrank.cli
    train ranker ...`): rank 0 builds the snapshots and writes everything.
    """
    chosen = [pinnerformer is not None, no_pinnerformer, snapshots_dir is not None and pinnerformer is None]
    if no_pinnerformer and (pinnerformer is not None or snapshots_dir is not None):
        raise click.ClickException("--no-pinnerformer cannot be combined with --pinnerformer or --snapshots-dir")
    if not any(chosen):
        raise click.ClickException("give --pinnerformer CKPT, --snapshots-dir DIR, or --no-pinnerformer")
    if snapshots_dir is not None and pinnerformer is None and not snapshots_dir.is_dir():
        raise click.ClickException(f"{snapshots_dir}: no such snapshot directory")
    if snapshots_dir is not None and pinnerformer is None and train_start is None:
        raise click.ClickException("--snapshots-dir alone needs --train-start: snapshots do not record the "
                                   "training cut of the PinnerFormer that built them (start at or after it)")
    if threads:
        torch.set_num_threads(threads)

    model_cfg = replace(_DEFAULT_MODEL, mode=mode, use_pinnerformer=not no_pinnerformer,
                        use_realtime=not no_realtime)
    train_cfg = replace(_DEFAULT_TRAIN, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        mask_window_h=mask_window_h)
    t0 = time.perf_counter()
    try:
        with distributed_from_env(backend) as ctx:
            ds = load_dataset(data)
            cut = pinnerformer_train_cut_ms(pinnerformer) if pinnerformer is not None else None
            start = ranker_train_start(ds.train_end_ms, resolve_cut(train_start, ds) if train_start else None, cut)
            snaps = None if no_pinnerformer else _snapshots(ds, pinnerformer, snapshots_dir, ctx, start, progress)
            full = build_ranker_data(ds, snaps, progress=progress and ctx.is_main)
            train, evaluation = ranker_periods(full, ds.train_end_ms, start, cut)
            if ctx.is_main:
                since = f" from {format_ms(start)}" if start is not None else ""
                click.echo(f"featurized {full.num_requests} requests / {full.num_impressions} impressions in "
                           f"{time.perf_counter() - t0:.1f}s: train{since} {train.num_impressions}, eval "
                           f"{evaluation.num_impressions}; known users {train.user_known.mean():.1%} (train), "
                           f"{evaluation.user_known.mean() if evaluation.num_requests else 0:.1%} (eval)")
            extra = {"item_ids": np.asarray(ds.item_ids, dtype=np.int64), "data": str(data),
                     "pinnerformer": str(pinnerformer) if pinnerformer else None,
                     "snapshots": len(snaps) if snaps else 0, "train_end_ms": ds.train_end_ms,
                     "train_start_ms": start, "pinnerformer_train_cut_ms": cut}
            result = run_training(train, ds.item_emb, model_cfg, train_cfg, out=out, eval_data=evaluation,
                                  resume=resume, curve=curve, extra=extra, progress=progress, ctx=ctx)
    except (DatasetError, SnapshotError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if not ctx.is_main:
        return
    click.echo(f"trained {result.step} steps ({mode}) in {result.seconds:.0f}s -> {out}")
    if result.metrics is None:
        click.echo("no eval-period impressions: nothing evaluated")
        return
    click.echo(format_metrics(result.metrics))
    write_json(metrics_path or out.with_suffix(".metrics.json"),
               {"mode": mode, "steps": result.step, "train_seconds": result.seconds,
                "ranker": model_cfg.to_dict(), "metrics": result.metrics})
