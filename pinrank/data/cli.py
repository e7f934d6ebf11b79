"""`pinrank data ...`: make, import and check datasets.

The lead attaches `data` to the top-level CLI; it also runs on its own as
`python -m pinrank.data.cli`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from pinrank.backend import schema
from pinrank.data.cuts import SPLITS
from pinrank.data.dataset import Dataset, DatasetError, load_dataset
from pinrank.data.importers import FORMATS, import_source
from pinrank.data.synthetic import QUICK, SyntheticConfig, generate


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Make, import and validate pinrank datasets.

    A dataset is a directory with actions.parquet, impressions.parquet,
    items.parquet, item_embeddings.npy, meta.json and, for per-user splits,
    user_cuts.parquet (pinrank.data.dataset).
    """


@data.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the dataset to (created if missing).")
@click.option("--users", type=click.IntRange(min=1), default=QUICK.users, show_default=True, help="Number of users.")
@click.option("--items", type=click.IntRange(min=2), default=QUICK.items, show_default=True, help="Catalogue size.")
@click.option("--topics", type=click.IntRange(min=2), default=QUICK.topics, show_default=True,
              help="Number of interest topics.")
@click.option("--days", type=click.IntRange(min=2), default=QUICK.days, show_default=True,
              help="Days of logs in total.")
@click.option("--eval-days", type=click.IntRange(min=1), default=QUICK.eval_days, show_default=True,
              help="Trailing days held out as the evaluation period.")
@click.option("--items-per-request", type=click.IntRange(min=1), default=QUICK.items_per_request,
              show_default=True, help="Items shown per request (K).")
@click.option("--seed", type=int, default=QUICK.seed, show_default=True, help="Random seed (same seed, same files).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(out: Path, users: int, items: int, topics: int, days: int, eval_days: int,
          items_per_request: int, seed: int, quiet: bool) -> None:
    """Generate a seeded synthetic dataset (defaults: the quick config).

    Users with drifting long-term interests browse in sessions, each with
    its own intent; every shown item is an impression, every engagement an
    action. Same options and seed give identical files.
    """
    lo, hi = QUICK.interests_per_user
    cfg: SyntheticConfig = _guard(lambda: replace(
        QUICK, users=users, items=items, topics=topics, days=days, eval_days=eval_days,
        items_per_request=items_per_request, seed=seed,
        interests_per_user=(min(lo, topics), min(hi, topics)),  # so small --topics still works
    ))
    t0 = time.perf_counter()
    path = _guard(lambda: generate(cfg, out, progress=not quiet))
    counts = load_dataset(path).meta["counts"]
    click.echo(
        f"wrote {path}: {counts['actions']:,} actions, {counts['impressions']:,} impressions, "
        f"{counts['users']:,} users, {counts['items']:,} items in {time.perf_counter() - t0:.1f}s"
    )


@data.command("import")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="Source format: movielens (a MovieLens folder of any release, see above), "
                   "taobao (UserBehavior CSV or folder), rees46 (eCommerce CSV or folder).")
@click.option("--src", required=True, type=click.Path(path_type=Path), help="Source file or folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the dataset to.")
@click.option("--skip-bad-rows", is_flag=True,
              help="Drop malformed rows (counted in meta.json) instead of failing on the first one.")
@click.option("--negatives", type=click.IntRange(min=0), default=4, show_default=True,
              help="Sampled catalogue items shown beside each engaged item.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for negatives and embeddings.")
@click.option("--train-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.8,
              show_default=True, help="Share of actions in training: of all actions by time (--split global) "
                                      "or of each user's actions (--split per-user).")
@click.option("--split", type=click.Choice(SPLITS), default="global", show_default=True,
              help="global: one cut time for everyone (the --train-fraction quantile of action times). "
                   "per-user: each user's first --train-fraction of actions train (at least one, and one "
                   "held out when they have two or more); cuts go to user_cuts.parquet.")
def import_cmd(fmt: str, src: Path, out: Path, skip_bad_rows: bool, negatives: int, seed: int,
               train_fraction: float, split: str) -> None:
    """Import a public interaction log into the dataset format.

    Actions map to schema actions (e.g. MovieLens rating >= 4 -> save);
    impressions are made from each action plus sampled negatives; item
    embeddings are an SVD stand-in. Malformed rows fail with file:line
    unless --skip-bad-rows; a file whose first line has the wrong layout
    always fails there.

    \b
    --format movielens reads whichever release --src holds:
      CSV releases  ratings.csv [movies.csv] [tags.csv]  (UTF-8, header)
      ML-1M/ML-10M  ratings.dat [movies.dat] [tags.dat]  ('::', latin-1)
      ML-100K       u.data [u.item] [u.genre]            (tab / '|', latin-1)
    Topic = the movie's first genre, "(unknown)" without a movies file.
    The catalogue is the items in the log.

    Actions of one user in the same second get distinct times (+2 ms per
    tie, ordered by item id), so the log order is the time order.
    """
    path = _guard(lambda: import_source(fmt, src, out, skip_bad_rows=skip_bad_rows, negatives=negatives,
                                        seed=seed, train_fraction=train_fraction, split=split))
    meta = load_dataset(path).meta
    c, bad = meta["counts"], meta["bad_rows"]
    click.echo(
        f"wrote {path}: {c['actions']:,} actions, {c['impressions']:,} impressions, {c['users']:,} users, "
        f"{c['items']:,} items" + (f"; skipped {bad['count']} bad rows" if bad["count"] else "")
    )


@data.command("validate")
@click.argument("directory", type=click.Path(path_type=Path))
def validate(directory: Path) -> None:
    """Load DIRECTORY as a dataset, check it and print a short summary."""
    ds = _guard(lambda: load_dataset(directory))
    click.echo(summary(ds))


def summary(ds: Dataset) -> str:
    """A few lines on sizes, action mix, time span and split."""
    a, meta = ds.actions, ds.meta
    lines = [
        f"dataset {ds.path} (source: {meta.get('source')})",
        f"  users: {np.unique(a['user_id']).size:,}  items: {ds.num_items:,}  "
        f"topics: {np.unique(ds.item_topic).size:,}",
        f"  actions: {a['user_id'].size:,} ("
        + ", ".join(f"{name} {int((a['action'] == i).sum()):,}" for name, i in schema.ACTION_IDS.items()
                    if (a["action"] == i).any())
        + ")",
    ]
    if ds.impressions is not None:
        im = ds.impressions
        rates = ", ".join(f"{h} {im['labels'][:, j].mean():.3f}" for j, h in enumerate(schema.HEADS))
        lines.append(f"  impressions: {im['request_id'].size:,} in {np.unique(im['request_id']).size:,} requests "
                     f"(label rates: {rates})")
    else:
        lines.append("  impressions: none")
    if a["ts_ms"].size:
        lines.append(f"  time span: {_iso(int(a['ts_ms'].min()))} .. {_iso(int(a['ts_ms'].max()))}")
    if ds.user_train_end_ms is None:
        split_at = f"split at {_iso(ds.train_end_ms)}"
    else:
        split_at = (f"split per user ({ds.user_train_end_ms['user_id'].size:,} user cuts, "
                    f"first {meta.get('split', {}).get('train_fraction', '?')} of each user's actions)")
    n_train = int((a["ts_ms"] < ds.train_cut_ms(a["user_id"])).sum())
    lines.append(f"  {split_at}: train {n_train:,} actions, eval {a['ts_ms'].size - n_train:,} actions")
    return "\n".join(lines)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _guard(fn: Any) -> Any:
    """Run fn, turning expected failures into a one-line ClickException."""
    try:
        return fn()
    except (DatasetError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    data()
