"""Request cost: counted GFLOP scale as the serving design says, timings are positive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinrank.backend import schema
from pinrank.models.ranker import Ranker, RankerConfig
from pinrank.train.ranker_cost import gflop_per_request, ms_per_request

NUM_ITEMS = 50


def _ranker(mode: str, **kw) -> Ranker:
    torch.manual_seed(0)
    emb = np.random.default_rng(0).normal(size=(NUM_ITEMS, schema.ITEM_EMB_DIM)).astype(np.float32)
    return Ranker(RankerConfig(mode=mode, **kw), item_emb=emb).eval()


def test_early_fusion_cost_grows_with_n_times_l_fused_does_not():
    early, fused = _ranker("early"), _ranker("fused")
    e100, e200 = gflop_per_request(early, 100), gflop_per_request(early, 200)
    f100, f200 = gflop_per_request(fused, 100), gflop_per_request(fused, 200)
    assert e200 == pytest.approx(2 * e100, rel=0.02)  # the transformer runs per candidate
    assert e100 > 10 * f100  # fused encodes the sequence once
    # Each extra candidate costs early fusion a pass over L tokens; fused one cross-attention read.
    assert (f200 - f100) * 10 < (e200 - e100)


def test_ablations_cost_less_and_timing_is_measured():
    full = gflop_per_request(_ranker("fused"), 100)
    assert gflop_per_request(_ranker("fused", use_realtime=False), 100) < full
    assert gflop_per_request(_ranker("avgpool"), 100) < full
    assert ms_per_request(_ranker("fused"), 20, repeats=3, warmup=1) > 0.0
