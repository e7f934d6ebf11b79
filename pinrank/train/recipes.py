"""Named training recipes: which model, objective and loss to use for which goal.

- `long_term` (the default of `pinrank train pinnerformer`, the paper's
  purpose): dense all-action loss over a 28-day future window, in-batch +
  random negatives with logQ, positive engagements as labels. It learns a
  user's interests over the coming weeks, which a daily snapshot serves.
- `next_item`: the same tower told to predict the next interaction
  (SASRec's objective), scored against the whole catalogue (exact softmax),
  every interaction a label (low ratings included: a rated film was still
  watched), windows ending at each user's latest action (as SASRec trains)
  and dropout 0.4 (picked by validation NDCG@10 on ML-100K over 0.2; see
  docs/results.md). For leave-one-out next-item retrieval, and for
  catalogues small enough for an exact softmax.
- `sasrec`: the field's baseline model (pinrank.models.sasrec) with the
  `next_item` loss, for tables that put it beside pinrank.

`build(recipe, num_items, item_emb, objective=None)` returns the model and
its PinnerFormerTrainConfig; `objective` swaps only the objective, so an
ablation changes one thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from pinrank.models.pinnerformer import (
    DEFAULT_SEQUENCE_ACTIONS,
    PinnerFormer,
    PinnerFormerConfig,
)
from pinrank.models.sasrec import SASRec, SASRecConfig
from pinrank.train.pinnerformer import PinnerFormerTrainConfig
from pinrank.train.pinnerformer_loss import OBJECTIVES

#: An exact softmax costs (labelled rows x catalogue) per step: 3 s a step
#: on ml-latest-small's 9,742 items here, against 0.3 s on ML-100K's 1,682.
#: Past this size the recipes that ask for it sample instead: 1,024 in-batch
#: + 1,024 uniform negatives with logQ correction (what the paper does at
#: any size), unless the caller sets `negatives` explicitly.
FULL_SOFTMAX_MAX_ITEMS = 5000


@dataclass(frozen=True)
class Recipe:
    name: str
    goal: str
    model: str  # "pinnerformer" or "sasrec"
    model_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)


_NEXT_ITEM_TRAIN = {"objective": "sasrec", "negatives": "full", "label_actions": DEFAULT_SEQUENCE_ACTIONS,
                    "window_end": "last", "lr": 1e-3, "batch_size": 64, "warmup_steps": 50}

RECIPES: dict[str, Recipe] = {
    "long_term": Recipe("long_term", "the paper's: interests over the next weeks (window protocol, serving)",
                        "pinnerformer"),
    "next_item": Recipe("next_item", "the next interaction (leave-one-out)", "pinnerformer",
                        {"dropout": 0.4}, _NEXT_ITEM_TRAIN),
    "sasrec": Recipe("sasrec", "baseline: SASRec (Kang and McAuley 2018) with the next_item loss", "sasrec",
                     {}, {**_NEXT_ITEM_TRAIN, "init_temperature": 1.0}),
}


def configs(recipe: str | Recipe, num_items: int, objective: str | None = None,
            model_options: dict[str, Any] | None = None, train_options: dict[str, Any] | None = None,
            model_base: PinnerFormerConfig | None = None,
            ) -> tuple[PinnerFormerConfig | SASRecConfig, PinnerFormerTrainConfig]:
    """The model and train configs of `recipe` for a catalogue of `num_items`;
    overrides win over the recipe, which wins over `model_base` / the defaults."""
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    train = {**r.train_options, **(train_options or {})}
    if objective is not None:
        train["objective"] = objective
    cfg = replace(PinnerFormerTrainConfig(), **train)
    if cfg.negatives == "full" and num_items > FULL_SOFTMAX_MAX_ITEMS and "negatives" not in (train_options or {}):
        cfg = replace(cfg, negatives="mixed", logq=True, max_in_batch_negatives=1024, num_random_negatives=1024)
    options = {**r.model_options, **(model_options or {})}
    if r.model == "sasrec":
        return replace(SASRecConfig(), **options), cfg
    return replace(model_base or PinnerFormerConfig(), **options), cfg


def build(recipe: str | Recipe, num_items: int, item_emb: np.ndarray, objective: str | None = None,
          model_options: dict[str, Any] | None = None, train_options: dict[str, Any] | None = None,
          ) -> tuple[nn.Module, PinnerFormerTrainConfig]:
    """A fresh model and its train config for `recipe`, with optional overrides."""
    model_cfg, cfg = configs(recipe, num_items, objective, model_options, train_options)
    if isinstance(model_cfg, SASRecConfig):
        return SASRec(model_cfg, num_items), cfg
    return PinnerFormer(model_cfg, item_emb), cfg


__all__ = ["FULL_SOFTMAX_MAX_ITEMS", "RECIPES", "Recipe", "build", "configs"]
