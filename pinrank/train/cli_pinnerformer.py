"""`pinrank train pinnerformer`, `pinrank embed` (the daily snapshot job) and `pinrank embed-merge`."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import click
import torch
from click.core import ParameterSource

from pinrank.backend.snapshot import SnapshotError, UserSnapshot
from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.embed.batch import build_snapshot
from pinrank.embed.shards import EmbeddingShard, build_shard, merge_shards
from pinrank.models.pinnerformer import PinnerFormerConfig
from pinrank.train.common import write_json
from pinrank.train.distributed import BACKENDS, distributed_from_env, gather_objects, world_size_from_env
from pinrank.train.pinnerformer import PinnerFormerTrainConfig, recall_summary
from pinrank.train.pinnerformer import train_pinnerformer as train
from pinrank.train.pinnerformer_loss import NEGATIVES, OBJECTIVES
from pinrank.train.recipes import RECIPES
from pinrank.train.recipes import configs as recipe_configs
from pinrank.train.training_cut import format_ms, resolve_cut

_DEFAULT_TRAIN = PinnerFormerTrainConfig()
_PINNERFORMER_RECIPES = [name for name, r in RECIPES.items() if r.model == "pinnerformer"]
_DEFAULT_MODEL = PinnerFormerConfig()


def _load_data(path: Path):  # type: ignore[no-untyped-def]
    try:
        return load_dataset(path)
    except DatasetError as exc:
        raise click.ClickException(f"bad dataset: {exc}") from None


#: Shared by both `train` commands: they run data-parallel when torchrun starts them.
BACKEND_OPTION = click.option(
    "--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
    help="Process-group backend when started by torchrun with WORLD_SIZE > 1 (data-parallel, "
         "--batch-size is the global batch; docs/distributed.md): auto = nccl with one GPU per rank "
         "when CUDA is available, else gloo on CPU. Ignored in a single process.")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
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
@click.option("--train-cut", default=None, metavar="FRACTION|YYYY-MM-DD",
              help="Train on the actions before this cut only and evaluate on the window after it, leaving "
                   "the later training days to the ranker (which refuses days before the cut: a checkpoint "
                   "that saw a day's future positives must not embed its training requests). A fraction f "
                   "is the UTC midnight before the f-quantile of the training-period action times; "
                   "default: the whole training period (train_end_ms).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--recipe", type=click.Choice(_PINNERFORMER_RECIPES), default="long_term", show_default=True,
              help="Training recipe (README, 'Which recipe for which goal'): long_term = the paper's dense "
                   "all-action loss; next_item = the next interaction, for leave-one-out retrieval. Options "
                   "given on the command line override it.")
@BACKEND_OPTION
def train_pinnerformer(data: Path, out: Path, steps: int, batch_size: int, positions: int, lr: float,
                       window_days: float, objective: str, negatives: str, no_logq: bool, layers: int, hidden: int,
                       heads: int, paper_size: bool, seed: int, resume: bool,
                       curve: Path | None, metrics_path: Path | None, no_eval: bool, train_cut: str | None,
                       threads: int | None, progress: bool, recipe: str, backend: str) -> None:
    """Train the PinnerFormer user tower (default: the dense all-action loss).

    Prints Recall@10 on the evaluation period (after train_end_ms) next to a
    popularity baseline, and writes the checkpoint, metrics JSON and curve.
    Data-parallel under torchrun (`torchrun --standalone --nproc_per_node=N
    -m pinrank.cli train pinnerformer ...`): rank 0 writes everything.
    """
    _set_threads(threads)
    # Options typed on the command line win over the recipe; their defaults do not.
    source = click.get_current_context().get_parameter_source
    given = {field: value for field, (param, value) in {
        "batch_size": ("batch_size", batch_size), "positions_per_seq": ("positions", positions), "lr": ("lr", lr),
        "future_window_days": ("window_days", window_days), "objective": ("objective", objective),
        "negatives": ("negatives", negatives), "logq": ("no_logq", not no_logq),
    }.items() if source(param) is not ParameterSource.DEFAULT}
    try:
        with distributed_from_env(backend) as ctx:
            ds = _load_data(data)
            base = (PinnerFormerConfig.paper() if paper_size
                    else replace(_DEFAULT_MODEL, num_layers=layers, hidden=hidden, heads=heads))
            model_cfg, cfg = recipe_configs(recipe, ds.num_items, train_options={**given, "steps": steps, "seed": seed},
                                            model_base=base)
            cut = resolve_cut(train_cut, ds) if train_cut is not None else None
            metrics = train(ds, out, cfg, model_cfg, resume=resume, curve=curve, progress=progress,
                            evaluate=not no_eval, ctx=ctx, train_cut_ms=cut)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if not ctx.is_main:
        return
    path = write_json(metrics_path or out.with_suffix(".metrics.json"), metrics)
    if not progress and not no_eval:  # with progress on, training already printed it
        click.echo(recall_summary(metrics))
    click.echo(f"checkpoint {out} ({metrics['steps']} steps, {metrics['train_seconds']:.0f} s, actions before "
               f"{format_ms(metrics['train_cut_ms'])}); metrics {path}")


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
              help="Snapshot directory to write (user_ids.npy, user_emb.npy, cold_start.npy, meta.json); "
                   "with --shard-index, the shard directory instead.")
@click.option("--as-of", "as_of", default=None, metavar="YYYY-MM-DD",
              help="Use actions strictly before this UTC midnight (default: the dataset's train_end_ms).")
@click.option("--previous", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Yesterday's snapshot: recompute only users active since its as_of and carry the rest.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Users per forward pass (small batches are faster on CPU: less padding, cache-friendly).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--num-shards", type=click.IntRange(min=1), default=None,
              help="Embed one of this many disjoint user shards (key: splitmix64(user_id) % N) and write it "
                   "to --out as a shard; join all N with `pinrank embed-merge`. Give the same --as-of and "
                   "--previous to every shard.")
@click.option("--shard-index", type=click.IntRange(min=0), default=None,
              help="Which shard (0 .. --num-shards - 1) this process embeds.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar over user batches.")
def embed(checkpoint: Path, data: Path, out: Path, as_of: str | None, previous: Path | None, batch_size: int,
          threads: int | None, num_shards: int | None, shard_index: int | None, progress: bool) -> None:
    """Build the daily user-embedding snapshot that serving reads.

    Sharded: run `--num-shards N --shard-index I` as N independent processes,
    then `pinrank embed-merge`; or start this command under torchrun (`torchrun
    --standalone --nproc_per_node=N -m pinrank.cli embed ...`): each rank
    embeds one shard and rank 0 merges them into --out.
    """
    if (num_shards is None) != (shard_index is None):
        raise click.UsageError("give --num-shards and --shard-index together")
    if num_shards is not None and shard_index is not None and shard_index >= num_shards:
        raise click.BadParameter(f"{shard_index} is not below --num-shards {num_shards}", param_hint="--shard-index")
    if num_shards is not None and world_size_from_env() > 1:
        raise click.UsageError("--num-shards/--shard-index are for independent processes; under torchrun each "
                               "rank already embeds its own shard")
    _set_threads(threads)
    ds = _load_data(data)
    as_of_ms = _parse_day(as_of) if as_of is not None else ds.train_end_ms
    try:
        prev = UserSnapshot.load(previous) if previous is not None else None
        if num_shards is not None and shard_index is not None:
            shard = build_shard(checkpoint, ds, as_of_ms, shard_index, num_shards, prev, batch_size=batch_size)
            shard.save(out)
            click.echo(f"shard {shard_index} of {num_shards} -> {out}: {shard.user_ids.size} users recomputed "
                       f"(as of {shard.meta['version']})")
            return
        # Embedding runs on CPU, so the group only moves shards: gloo even on GPU hosts.
        with distributed_from_env("gloo") as ctx:
            if not ctx.enabled:
                snap = build_snapshot(checkpoint, ds, as_of_ms, prev, batch_size=batch_size, progress=progress)
            else:
                shard = build_shard(checkpoint, ds, as_of_ms, ctx.rank, ctx.world_size, prev, batch_size=batch_size)
                shard.origin = f"rank {ctx.rank}"
                shards = gather_objects(shard, ctx)
                if not ctx.is_main:
                    return
                snap = merge_shards(shards or [], prev)
    except (SnapshotError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    snap.save(out)
    click.echo(f"snapshot {out}: version {snap.meta['version']}, " + json.dumps(snap.meta["counts"]))


@click.command("embed-merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Snapshot directory to write (the same layout `pinrank embed` writes).")
@click.option("--previous", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="The snapshot the shards were built against with `pinrank embed --previous`: its users "
                   "that no shard recomputed are carried over. Required for such shards, refused otherwise.")
def embed_merge(shards: tuple[Path, ...], out: Path, previous: Path | None) -> None:
    """Merge the shard directories of `pinrank embed --num-shards N --shard-index I`
    into one versioned snapshot.

    Refuses a missing or repeated shard, shards of different models, dates,
    data or previous snapshots, and overlapping users.
    """
    try:
        loaded = [EmbeddingShard.load(p) for p in shards]
        prev = UserSnapshot.load(previous) if previous is not None else None
        snap = merge_shards(loaded, prev)
    except (SnapshotError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    snap.save(out)
    click.echo(f"snapshot {out}: version {snap.meta['version']} from {len(loaded)} shards, "
               + json.dumps(snap.meta["counts"]))
