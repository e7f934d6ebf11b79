"""What tests/train/test_distributed.py runs on each of 2 CPU ranks (torchrun, gloo),
and the same computations for the single-process reference.

    torchrun --standalone --nproc_per_node=2 tests/train/ddp_worker.py OUT_DIR

Each rank writes OUT_DIR/rank{r}.pt: the loss and the (DDP-averaged)
gradients of one fixed global batch for both models (PinnerFormer with each
negatives mix); rank 0 also writes the checkpoints of 3 data-parallel
training steps of both models.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinrank.data.dataset import Dataset
from pinrank.data.synthetic import SyntheticConfig, simulate
from pinrank.models.pinnerformer import PinnerFormer, PinnerFormerConfig
from pinrank.models.ranker import Ranker, RankerConfig
from pinrank.train.common import seed_everything
from pinrank.train.distributed import (
    SINGLE,
    DistContext,
    even_bounds,
    from_env,
    shutdown,
)
from pinrank.train.pinnerformer import (
    PinnerFormerStep,
    PinnerFormerTrainConfig,
    draw_batch,
    make_sampler,
    train_pinnerformer,
)
from pinrank.train.pinnerformer_loss import NEGATIVES, DenseAllActionLoss
from pinrank.train.ranker import TrainConfig, batch_loss, request_batches, train_ranker
from pinrank.train.ranker_data import RankerData, build_ranker_data

PF_MODEL = PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=16, item_hidden=32)
# Odd sizes on purpose: 11 windows and 51 random negatives split unevenly over 2
# ranks, and 30 in-batch negatives cut the global labels mid-way through rank 1's.
PF_TRAIN = PinnerFormerTrainConfig(steps=3, batch_size=11, positions_per_seq=4, num_random_negatives=51,
                                   max_in_batch_negatives=30, warmup_steps=1, log_every=1,
                                   checkpoint_every=1000, lr=3e-3)
# No dropout: its masks depend on how a batch is laid out, so only the dropout-free
# model can match bit for bit; the time-window mask stays on (drawn per request).
RANKER_MODEL = RankerConfig(mode="fused", dropout=0.0, use_pinnerformer=False)
RANKER_TRAIN = TrainConfig(steps=3, batch_size=96, warmup_steps=1, log_every=1, checkpoint_every=0, lr=3e-3)


@lru_cache(maxsize=1)
def dataset() -> Dataset:
    return simulate(SyntheticConfig(users=150, items=300, topics=10, days=14, eval_days=4, seed=3))[0]


@lru_cache(maxsize=1)
def ranker_train_data() -> RankerData:
    ds = dataset()
    return build_ranker_data(ds, None).split(ds.train_end_ms)[0]


def pinnerformer_grads(ctx: DistContext = SINGLE, negatives: str = "mixed", idle_rank: bool = False) -> dict[str, Any]:
    """Global loss and gradients of one fixed PinnerFormer batch (logQ on).

    `idle_rank`: drop the labels of the second half of the windows, so that on
    2 ranks the second one holds windows but no labelled position.
    """
    ds = dataset()
    seed_everything(0)
    model = PinnerFormer(PF_MODEL, ds.item_emb)
    loss_fn = DenseAllActionLoss(ds.num_items, max_in_batch=PF_TRAIN.max_in_batch_negatives, seed=0,
                                 negatives=negatives)
    batch, neg = draw_batch(make_sampler(ds, PF_MODEL, PF_TRAIN), np.random.default_rng(5), PF_TRAIN,
                            negatives, model.num_items)
    if idle_rank:
        keep = batch.row < even_bounds(batch.inputs["action"].shape[0], 2)[1]
        batch = replace(batch, row=batch.row[keep], col=batch.col[keep], label=batch.label[keep],
                        owner=batch.owner[keep], src_flat=batch.src_flat[keep], label_flat=batch.label_flat[keep])
    module = PinnerFormerStep(model, loss_fn, ctx)
    net = ctx.wrap(module)  # held until backward: DDP's hooks reference it weakly
    loss, stats = net(batch, neg)
    (loss * ctx.world_size).backward()
    total, rows = ctx.sum([float(loss.detach()), stats["rows"]])
    return {"loss": total, "rows": rows, "local_rows": stats["rows"], "global_rows": int(batch.label.size),
            "grads": {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None},
            "sketch": loss_fn.sketch.table.clone()}


def ranker_grads(ctx: DistContext = SINGLE, requests: int | None = None) -> dict[str, Any]:
    """Global loss and gradients of one fixed ranker request batch (time-window mask on);
    `requests` keeps only that many (1: fewer requests than ranks, like an epoch's tail)."""
    ds = dataset()
    data = ranker_train_data()
    seed_everything(0)
    model = Ranker(RANKER_MODEL, item_emb=ds.item_emb).train()
    reqs = request_batches(np.diff(data.offsets), RANKER_TRAIN.batch_size, RANKER_TRAIN.seed, 0)[0][:requests]
    weights = torch.from_numpy(RANKER_TRAIN.weight_matrix())
    net = ctx.wrap(model, find_unused_parameters=True)
    loss = batch_loss(net, data, reqs, weights, RANKER_TRAIN, 0, ctx)
    (loss * ctx.world_size).backward()
    return {"loss": ctx.sum([float(loss.detach())])[0], "impressions": int(np.diff(data.offsets)[reqs].sum()),
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}}


def train_both(out: Path, ctx: DistContext = SINGLE) -> None:
    """3 steps of each trainer, checkpoints in `out` (pinnerformer.pt, ranker.pt)."""
    ds = dataset()
    train_pinnerformer(ds, out / "pinnerformer.pt", PF_TRAIN, PF_MODEL, progress=False, evaluate=False, ctx=ctx)
    train_ranker(ranker_train_data(), ds.item_emb, RANKER_MODEL, RANKER_TRAIN, out=out / "ranker.pt",
                 progress=False, ctx=ctx)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = from_env("gloo")
    assert ctx.world_size == 2, ctx
    result = {"world_size": ctx.world_size, "ranker": ranker_grads(ctx), "ranker-1": ranker_grads(ctx, 1),
              "pinnerformer-idle": pinnerformer_grads(ctx, idle_rank=True),
              **{f"pinnerformer-{neg}": pinnerformer_grads(ctx, neg) for neg in NEGATIVES}}
    torch.save(result, out / f"rank{ctx.rank}.pt")
    train_both(out, ctx)
    if ctx.is_main:  # rank 0 still busy (evaluating, merging) while the others are done
        time.sleep(1.0)
        (out / "rank0_done_at").write_text(repr(time.time()))
    shutdown(ctx)
    (out / f"rank{ctx.rank}_left_at").write_text(repr(time.time()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
