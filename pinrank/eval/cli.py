"""`pinrank eval loo` and `pinrank eval window`: the field's two protocols on any imported dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch

from pinrank.data.dataset import DatasetError, load_dataset
from pinrank.eval.protocols import leave_one_out_report, window_report
from pinrank.train.pinnerformer_loss import OBJECTIVES
from pinrank.train.recipes import RECIPES

_PINRANK_RECIPES = [name for name, r in RECIPES.items() if r.model == "pinnerformer"]


def _common(fn: Any) -> Any:
    options = [
        click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
                     help="Dataset directory (`pinrank data import ...` or `pinrank data synth`)."),
        click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
                     help="Report JSON to write (see docs/results.md for its keys)."),
        click.option("--minutes", type=click.FloatRange(min=0.05), default=10.0, show_default=True,
                     help="Wall-clock training budget per trained model (validation time not charged)."),
        click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
                     help="Swap the recipe's objective (everything else stays)."),
        click.option("--also", "also", type=click.Choice(OBJECTIVES), multiple=True,
                     help="Also train the recipe with these objectives, same split and budget (repeatable)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads."),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(data: Path, threads: int | None):  # type: ignore[no-untyped-def]
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return load_dataset(data)
    except DatasetError as exc:
        raise click.ClickException(f"bad dataset: {exc}") from None


def _write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


@click.group("eval", context_settings={"help_option_names": ["-h", "--help"]})
def eval_group() -> None:
    """Measure retrieval quality with the field's protocols (docs/results.md, "Real logs")."""


@eval_group.command("loo")
@_common
@click.option("--recipe", type=click.Choice(_PINRANK_RECIPES), default="next_item", show_default=True,
              help="Training recipe (pinrank.train.recipes): next_item is the one for next-item retrieval.")
@click.option("--sasrec/--no-sasrec", "sasrec", default=True, show_default=True,
              help="Train the SASRec baseline with the same budget on the same split.")
@click.option("--evals", type=click.IntRange(min=1), default=8, show_default=True,
              help="Validations per training run; the best one's weights are tested.")
def loo(data: Path, out: Path, minutes: float, objective: str | None, also: tuple[str, ...], seed: int,
        threads: int | None, progress: bool, recipe: str, sasrec: bool, evals: int) -> None:
    """Next-item leave-one-out: per user the last item is the test target, the
    second-to-last the validation target, the rest training.

    Full ranking over every item with the input's items removed (HR@10,
    NDCG@10) and the 100-sampled-negatives variant; validation NDCG@10 picks
    the checkpoint. Baselines on the same split: popularity, and SASRec
    trained for the same budget.
    """
    ds = _load(data, threads)
    try:
        report = leave_one_out_report(ds, recipe=recipe, objective=objective, minutes=minutes,
                                      extra_objectives=also, sasrec_baseline=sasrec, seed=seed, evals=evals,
                                      progress=progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _write(out, report)
    click.echo(_loo_summary(report))
    click.echo(f"report {out}")


@eval_group.command("window")
@_common
@click.option("--recipe", type=click.Choice(_PINRANK_RECIPES), default="long_term", show_default=True,
              help="Training recipe: long_term is the paper's dense all-action recipe.")
@click.option("--train-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.8,
              show_default=True, help="Each user's history is their first share of actions (unless the dataset "
                                      "was imported with --split per-user: its cuts win).")
@click.option("--window-days", type=click.FloatRange(min=0, min_open=True), default=14.0, show_default=True,
              help="Targets: the distinct positive items this many days after each user's cut.")
def window(data: Path, out: Path, minutes: float, objective: str | None, also: tuple[str, ...], seed: int,
           threads: int | None, progress: bool, recipe: str, train_fraction: float, window_days: float) -> None:
    """The paper's long-horizon protocol with a per-user temporal cut.

    Recall@10 of the positives in the window after each user's cut, P90
    coverage@10 and interest entropy@50; baselines: popularity and
    history-mean (mean content embedding of the history).
    """
    ds = _load(data, threads)
    try:
        report = window_report(ds, recipe=recipe, objective=objective, minutes=minutes, extra_objectives=also,
                               train_fraction=train_fraction, window_days=window_days, seed=seed, progress=progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _write(out, report)
    click.echo(_window_summary(report))
    click.echo(f"report {out}")


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    main = f"{report['recipe']} ({report['objective']})"
    return ([(main, report["test"])] + [(k, v["test"]) for k, v in report["variants"].items()]
            + [(f"{k} baseline", v["test"]) for k, v in report["baselines"].items()])


def _loo_summary(report: dict[str, Any]) -> str:
    lines = [f"leave-one-out, {report['settings']['users']} users, {report['settings']['catalogue']} items:"]
    for name, m in _rows(report):
        lines.append(f"  {name:<32} HR@10 {m['hr_at_10']:.4f}  NDCG@10 {m['ndcg_at_10']:.4f}  "
                     f"(100 sampled: HR@10 {m['sampled_hr_at_10']:.4f})")
    return "\n".join(lines)


def _window_summary(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"temporal window ({s['window_days']:g} days after each user's cut), {s['users']} users:"]
    for name, m in _rows(report):
        lines.append(f"  {name:<32} Recall@10 {m['recall_at_10']:.4f}  P90 coverage@10 "
                     f"{m['p90_coverage_at_10']:.4f}  entropy@50 {m['entropy_at_50']:.3f}")
    return "\n".join(lines)


__all__ = ["eval_group"]
