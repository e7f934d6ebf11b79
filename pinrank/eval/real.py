"""`make eval-real`: both protocols on the real MovieLens logs, every objective and baseline.

For each dataset folder given (imported on the fly with `pinrank data
import --format movielens`), it runs

- leave-one-out with the `next_item` recipe under each objective, the
  SASRec baseline and popularity (same split, same budget per model);
- the temporal window with the `long_term` recipe under each objective,
  popularity and history-mean;

and writes `results/real.json`

    {"loo": {dataset: {variant: {"hr_at_10", "ndcg_at_10", ...}}},
     "window": {dataset: {variant: {"recall_at_10", "p90_coverage_at_10", "entropy_at_50", ...}}},
     "reports": {...full per-protocol reports...}, "settings": {...}}

plus `results/real.md` (tables) and `results/real.png` (bars).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import matplotlib

matplotlib.use("Agg")  # headless: CI and the batch machines have no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402

from pinrank.data.dataset import load_dataset  # noqa: E402
from pinrank.data.importers import import_source  # noqa: E402
from pinrank.eval.protocols import leave_one_out_report, window_report  # noqa: E402
from pinrank.train.pinnerformer_loss import OBJECTIVES  # noqa: E402

#: The item-feature ablation: the default towers are hybrid (frozen content
#: table + learned id embeddings in both towers); these switch one side off.
ITEM_FEATURE_VARIANTS: dict[str, dict[str, Any]] = {
    "content_only": {"input_id_embedding": False},
    "ids_only": {"content_features": False},
}
LOO_METRICS = ("hr_at_10", "ndcg_at_10")
WINDOW_METRICS = ("recall_at_10", "p90_coverage_at_10", "entropy_at_50")


def _short(variant: str) -> str:
    """Table key of a report variant: "next_item:next_action" -> "next_action"; others unchanged."""
    return variant.split(":")[-1] if ":" in variant else variant


def _flatten(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """variant -> test metrics: objectives by name, then the baselines."""
    rows = {report["objective"]: report["test"]}
    for name, v in report["variants"].items():
        rows[_short(name)] = v["test"]
    for name, v in report["baselines"].items():
        rows[f"{name}_baseline"] = v["test"]
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    lines = []
    for dataset, rows in result["loo"].items():
        lines += [f"### Leave-one-out, {dataset} (test; full ranking, seen items removed)", "",
                  "| variant | HR@10 | NDCG@10 | HR@10, 100 sampled | steps |", "|---|---|---|---|---|"]
        for name, m in rows.items():
            lines.append(f"| {name} | {m['hr_at_10']:.4f} | {m['ndcg_at_10']:.4f} | "
                         f"{m['sampled_hr_at_10']:.4f} | {m.get('steps', '')} |")
        lines.append("")
    for dataset, rows in result["window"].items():
        s = result["reports"]["window"][dataset]["settings"]
        lines += [f"### Temporal window, {dataset} ({s['window_days']:g} days after each user's cut, "
                  f"{s['users']} users)", "",
                  "| variant | Recall@10 | P90 coverage@10 | entropy@50 | steps |", "|---|---|---|---|---|"]
        for name, m in rows.items():
            lines.append(f"| {name} | {m['recall_at_10']:.4f} | {m['p90_coverage_at_10']:.4f} | "
                         f"{m['entropy_at_50']:.3f} | {m.get('steps', '')} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    panels = [("loo", d, "hr_at_10", "leave-one-out HR@10") for d in result["loo"]]
    panels += [("window", d, "recall_at_10", "window Recall@10") for d in result["window"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (proto, dataset, metric, title) in zip(axes[0], panels):
        rows = result[proto][dataset]
        names = list(rows)
        ax.barh(names, [rows[n][metric] for n in names], color="#4c72b0")
        ax.invert_yaxis()
        ax.set_title(f"{title}\n{dataset}", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _with_steps(rows: dict[str, dict[str, Any]], report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = {report["objective"]: report["training"]["steps"]}
    steps.update({_short(k): v["training"]["steps"] for k, v in report["variants"].items()})
    if "sasrec" in report["baselines"]:
        steps["sasrec_baseline"] = report["baselines"]["sasrec"]["training"]["steps"]
    return {k: {**v, **({"steps": steps[k]} if k in steps else {})} for k, v in rows.items()}


@click.command()
@click.option("--src", "sources", multiple=True, type=click.Path(path_type=Path),
              default=("../shared/data/ml-100k", "../shared/data/ml-latest-small"), show_default=True,
              help="MovieLens folders (any release pinrank data import reads); missing ones are skipped.")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/data/real"),
              show_default=True, help="Where the imported datasets go.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("results/real.json"),
              show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Training budget per model (18 models for two datasets).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--item-features", is_flag=True,
              help="Instead: the item-feature ablation (hybrid content + learned ids, content only, ids only) "
                   "of each protocol's recipe, baselines as usual.")
def main(sources: tuple[Path, ...], work: Path, out: Path, minutes: float, seed: int, threads: int | None,
         item_features: bool) -> None:
    """Run both protocols on each real log; write OUT (.json, .md, .png)."""
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    present = [s for s in sources if s.is_dir()]
    if not present:
        raise click.ClickException(f"none of {[str(s) for s in sources]} exists (real data lives in ../shared/data)")
    result: dict[str, Any] = {"loo": {}, "window": {}, "reports": {"loo": {}, "window": {}}}
    others = [o for o in OBJECTIVES if o != "sasrec"]
    for src in present:
        name = src.name
        data = work / name
        if not (data / "meta.json").exists():
            import_source("movielens", src, data)
        ds = load_dataset(data)
        click.echo(f"{name}: leave-one-out")
        if item_features:
            loo = leave_one_out_report(ds, recipe="next_item", minutes=minutes, sasrec_baseline=False,
                                       extra_models=ITEM_FEATURE_VARIANTS, seed=seed)
            click.echo(f"{name}: temporal window")
            win = window_report(ds, recipe="long_term", minutes=minutes, extra_models=ITEM_FEATURE_VARIANTS,
                                seed=seed)
        else:
            loo = leave_one_out_report(ds, recipe="next_item", minutes=minutes, extra_objectives=others, seed=seed)
            click.echo(f"{name}: temporal window")
            win = window_report(ds, recipe="long_term", minutes=minutes,
                                extra_objectives=[o for o in OBJECTIVES if o != "dense_all_action"], seed=seed)
        result["reports"]["loo"][name], result["reports"]["window"][name] = loo, win
        result["loo"][name] = _with_steps(_flatten(loo), loo)
        result["window"][name] = _with_steps(_flatten(win), win)
    result["settings"] = {"minutes_per_model": minutes, "seed": seed, "threads": torch.get_num_threads(),
                          "total_seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(render_markdown(result))
    plot(result, out.with_suffix(".png"))
    click.echo(render_markdown(result))
    click.echo(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')} "
               f"in {result['settings']['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
