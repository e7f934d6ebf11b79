"""Seconds per training step of each leave-one-out recipe (next_item tower, SASRec baseline).

    .venv/bin/python loadtest/bench_train_step.py --data artifacts/data/real/ml-100k --threads 1 --threads 2

Trains each model on the leave-one-out training split for `--seconds` per
(thread count, recipe) and prints the mean step time; figures in
docs/benchmarks.md ("Training step on real logs").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pinrank.data.dataset import load_dataset
from pinrank.eval.splits import leave_one_out
from pinrank.train.pinnerformer import (
    batch_loss,
    draw_batch,
    make_optimizer,
    make_sampler,
)
from pinrank.train.pinnerformer_loss import DenseAllActionLoss
from pinrank.train.recipes import build


def seconds_per_step(train, recipe: str, seconds: float) -> float:  # type: ignore[no-untyped-def]
    model, cfg = build(recipe, train.num_items, train.item_emb)
    model.train()
    loss_fn = DenseAllActionLoss(train.num_items, negatives=cfg.negatives)
    opt = make_optimizer(model, loss_fn, cfg)
    sampler = make_sampler(train, model.config, cfg)
    rng = np.random.default_rng(0)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        batch, neg = draw_batch(sampler, rng, cfg, cfg.negatives, train.num_items)
        loss, _ = batch_loss(model, loss_fn, batch, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="An imported dataset directory (pinrank data import).")
    parser.add_argument("--threads", type=int, action="append", help="torch threads (repeatable; default 1).")
    parser.add_argument("--seconds", type=float, default=15.0, help="Training time per measurement.")
    args = parser.parse_args()
    train = leave_one_out(load_dataset(args.data)).train
    for threads in args.threads or [1]:
        torch.set_num_threads(threads)
        for recipe in ("next_item", "sasrec"):
            print(f"threads {threads}  {recipe:<10} {seconds_per_step(train, recipe, args.seconds):.3f} s/step")


if __name__ == "__main__":
    main()
