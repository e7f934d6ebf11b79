"""Named recipes: one switch changes one thing."""

from __future__ import annotations

import numpy as np
import pytest

from pinrank.models.sasrec import SASRec
from pinrank.train.recipes import FULL_SOFTMAX_MAX_ITEMS, RECIPES, build


def test_build_swaps_only_the_objective():
    model, cfg = build("next_item", 10, np.zeros((10, 32), np.float32), objective="next_action")
    assert cfg.objective == "next_action" and cfg.negatives == "full" and model.config.dropout == 0.4
    with pytest.raises(ValueError, match="objective"):
        build("next_item", 10, np.zeros((10, 32), np.float32), objective="nope")


def test_every_recipe_builds_its_model():
    for name, recipe in RECIPES.items():
        model, cfg = build(name, 10, np.zeros((10, 32), np.float32))
        assert isinstance(model, SASRec) == (recipe.model == "sasrec")
        assert cfg.objective in ("dense_all_action", "sasrec")


def test_large_catalogues_sample_instead_of_an_exact_softmax():
    n = FULL_SOFTMAX_MAX_ITEMS + 1
    _model, cfg = build("next_item", n, np.zeros((n, 32), np.float32))
    assert cfg.negatives == "mixed" and cfg.logq and cfg.max_in_batch_negatives == 1024
    _model, cfg = build("next_item", n, np.zeros((n, 32), np.float32), train_options={"negatives": "full"})
    assert cfg.negatives == "full"
