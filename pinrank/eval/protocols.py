"""The two protocols end to end: split, train each variant for a budget, score, baselines.

`leave_one_out_report` and `window_report` return JSON-ready dicts:

    {"protocol", "dataset", "recipe", "objective", "test": {...}, "validation": {...} (leave-one-out),
     "training": {...}, "baselines": {name: {"test": {...}, ...}}, "variants": {name: {...}},
     "settings": {...}}

"test" / "validation" belong to the recommended recipe (or the one asked
for); "variants" holds extra objectives trained in the same run (make
eval-real), "baselines" the field's baselines, all on the same split.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from torch import nn

from pinrank.backend import schema
from pinrank.data.dataset import Dataset
from pinrank.eval.budget import train_for_budget
from pinrank.eval.metrics import leave_one_out_metrics, window_metrics
from pinrank.eval.scorers import history_mean_scorer, popularity_scorer, tower_scorer
from pinrank.eval.splits import (
    LeaveOneOut,
    TemporalWindow,
    leave_one_out,
    temporal_window,
)
from pinrank.train.recipes import RECIPES, build


def _variant_name(recipe: str, objective: str | None) -> str:
    return recipe if objective is None else f"{recipe}:{objective}"


def train_loo_variant(split: LeaveOneOut, recipe: str, objective: str | None, minutes: float, *,
                      seed: int = 0, evals: int = 8, progress: bool = True,
                      model_options: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train one recipe on the split's training set, validation NDCG@10 picking the checkpoint."""
    model, cfg = build(recipe, split.train.num_items, split.train.item_emb, objective, model_options,
                       train_options={"seed": seed})

    def validate(m: nn.Module) -> float:
        return leave_one_out_metrics(split.validation, tower_scorer(m), sampled=0)["ndcg_at_10"]

    run = train_for_budget(model, split.train, cfg, minutes, validate, evals=evals,
                           desc=_variant_name(recipe, objective), progress=progress)
    scorer = tower_scorer(model)
    return model, {
        "test": leave_one_out_metrics(split.test, scorer, seed=seed),
        "validation": leave_one_out_metrics(split.validation, scorer, seed=seed),
        "training": {**run.to_dict(), "objective": cfg.objective, "negatives": cfg.negatives},
    }


def leave_one_out_report(ds: Dataset, *, recipe: str = "next_item", objective: str | None = None,
                         minutes: float = 10.0, extra_objectives: Sequence[str] = (), sasrec_baseline: bool = True,
                         extra_models: dict[str, dict[str, Any]] | None = None, seed: int = 0, evals: int = 8,
                         progress: bool = True) -> dict[str, Any]:
    """Leave-one-out (pinrank.eval.splits) with popularity and, by default, a SASRec trained for the same budget.

    `extra_objectives` and `extra_models` (name -> model options, e.g. the
    item-feature ablation) become "variants", trained on the same split."""
    t0 = time.perf_counter()
    split = leave_one_out(ds, seed=seed)
    _model, main = train_loo_variant(split, recipe, objective, minutes, seed=seed, evals=evals, progress=progress)
    pop = popularity_scorer(split.train, RECIPES["next_item"].train_options["label_actions"])
    baselines: dict[str, Any] = {"popularity": {
        "test": leave_one_out_metrics(split.test, pop, seed=seed),
        "validation": leave_one_out_metrics(split.validation, pop, seed=seed)}}
    if sasrec_baseline:
        baselines["sasrec"] = train_loo_variant(split, "sasrec", None, minutes, seed=seed, evals=evals,
                                                progress=progress)[1]
    variants = {_variant_name(recipe, o): train_loo_variant(split, recipe, o, minutes, seed=seed, evals=evals,
                                                            progress=progress)[1]
                for o in extra_objectives}
    for name, options in (extra_models or {}).items():
        variants[f"{recipe}+{name}"] = train_loo_variant(split, recipe, objective, minutes, seed=seed, evals=evals,
                                                         progress=progress, model_options=options)[1]
    return {
        "protocol": "leave_one_out", "dataset": _dataset_name(ds), "recipe": recipe,
        "objective": main["training"]["objective"], **main, "baselines": baselines, "variants": variants,
        "settings": {"minutes_per_model": minutes, "seed": seed, "validation_evals": evals,
                     "users": int(split.test.rows.size), "catalogue": ds.num_items,
                     "train_actions": int(split.train.actions["user_id"].size),
                     "selection": "validation NDCG@10 (full ranking)", "k": 10, "sampled_negatives": 100,
                     "seen_items_removed": True, "total_seconds": round(time.perf_counter() - t0, 1)},
    }


def train_window_variant(split: TemporalWindow, item_topic: np.ndarray, recipe: str, objective: str | None,
                         minutes: float, *, seed: int = 0, progress: bool = True,
                         model_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train for the whole budget (the paper's protocol has no validation split) and score the window."""
    model, cfg = build(recipe, split.train.num_items, split.train.item_emb, objective, model_options,
                       train_options={"seed": seed})
    run = train_for_budget(model, split.train, cfg, minutes, lambda m: 0.0, evals=1,
                           desc=_variant_name(recipe, objective), progress=progress)
    return {"test": window_metrics(split.test, tower_scorer(model), item_topic),
            "training": {**run.to_dict(), "objective": cfg.objective, "negatives": cfg.negatives}}


def window_report(ds: Dataset, *, recipe: str = "long_term", objective: str | None = None, minutes: float = 10.0,
                  extra_objectives: Sequence[str] = (), extra_models: dict[str, dict[str, Any]] | None = None,
                  train_fraction: float = 0.8, window_days: float = 14.0, seed: int = 0,
                  progress: bool = True) -> dict[str, Any]:
    """The paper's long-horizon metrics on a per-user temporal cut, with popularity and history-mean."""
    t0 = time.perf_counter()
    split = temporal_window(ds, train_fraction, window_days, seed=seed)
    topic = np.asarray(ds.item_topic)
    main = train_window_variant(split, topic, recipe, objective, minutes, seed=seed, progress=progress)
    baselines = {
        "popularity": {"test": window_metrics(split.test, popularity_scorer(split.train), topic)},
        "history_mean": {"test": window_metrics(split.test, history_mean_scorer(split.train), topic)},
    }
    variants = {_variant_name(recipe, o): train_window_variant(split, topic, recipe, o, minutes, seed=seed,
                                                               progress=progress)
                for o in extra_objectives}
    for name, options in (extra_models or {}).items():
        variants[f"{recipe}+{name}"] = train_window_variant(split, topic, recipe, objective, minutes, seed=seed,
                                                            progress=progress, model_options=options)
    return {
        "protocol": "temporal_window", "dataset": _dataset_name(ds), "recipe": recipe,
        "objective": main["training"]["objective"], **main, "baselines": baselines, "variants": variants,
        "settings": {"minutes_per_model": minutes, "seed": seed, "train_fraction": train_fraction,
                     "window_days": window_days, "users": int(split.test.rows.size), "catalogue": ds.num_items,
                     "train_actions": int(split.train.actions["user_id"].size),
                     "targets": "distinct positive items (" + ", ".join(schema.POSITIVE_ACTIONS) + ") in the window",
                     "k": 10, "entropy_k": 50, "seen_items_removed": True,
                     "total_seconds": round(time.perf_counter() - t0, 1)},
    }


def _dataset_name(ds: Dataset) -> str:
    return str(ds.path) if ds.path is not None else str(ds.meta.get("source"))


__all__ = ["leave_one_out_report", "train_loo_variant", "train_window_variant", "window_report"]
