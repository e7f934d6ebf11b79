"""Train a tower for a wall-clock budget and keep the checkpoint validation likes best.

The protocols compare models at equal cost on the machine at hand, so the
budget is minutes, not steps: the learning rate warms up over the first
steps, then follows a cosine over the elapsed share of the budget. Every
`budget / evals` seconds of training the model is validated (validation
time is not charged to the budget) and the best state is kept; the model
returned holds it. A run is therefore not step-for-step reproducible across
machines, but its selection is honest: test targets are never looked at.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pinrank.data.dataset import Dataset
from pinrank.train.common import seed_everything
from pinrank.train.pinnerformer import (
    PinnerFormerTrainConfig,
    batch_loss,
    draw_batch,
    make_optimizer,
    make_sampler,
)
from pinrank.train.pinnerformer_loss import DenseAllActionLoss


@dataclass
class BudgetRun:
    steps: int = 0
    train_seconds: float = 0.0
    best_step: int = 0
    best_score: float = -math.inf
    curve: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "train_seconds": round(self.train_seconds, 1), "best_step": self.best_step,
                "best_validation": self.best_score, "validation_curve": self.curve}


def _lr_factor(step: int, elapsed: float, budget: float, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, elapsed / budget)))


def train_for_budget(model: nn.Module, train: Dataset, cfg: PinnerFormerTrainConfig, minutes: float,
                     validate: Callable[[nn.Module], float], evals: int = 8, desc: str = "train",
                     progress: bool = True) -> BudgetRun:
    """Train `model` in place on `train` for `minutes`; leave it holding the best-validated weights."""
    seed_everything(cfg.seed)
    loss_fn = DenseAllActionLoss(train.num_items, cfg.init_temperature, cfg.min_temperature,
                                 cfg.max_in_batch_negatives, cfg.cms_width, cfg.cms_depth, cfg.seed,
                                 negatives=cfg.negatives, logq=cfg.logq)
    opt = make_optimizer(model, loss_fn, cfg)
    params = list(model.parameters()) + list(loss_fn.parameters())
    sampler = make_sampler(train, model.config, cfg)  # type: ignore[arg-type]
    rng = np.random.default_rng(cfg.seed)
    budget = max(1.0, minutes * 60.0)
    run = BudgetRun()
    best_state = copy.deepcopy(model.state_dict())
    next_eval = budget / evals
    bar = tqdm(total=round(budget), desc=desc, unit="s", disable=not progress, dynamic_ncols=True, leave=False,
               mininterval=2.0)

    def checkpoint() -> None:
        nonlocal best_state
        score = float(validate(model))
        model.train()
        run.curve.append({"step": run.steps, "seconds": round(run.train_seconds, 1), "validation": score})
        if score > run.best_score:
            run.best_score, run.best_step = score, run.steps
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(val=f"{score:.4f}", best=f"{run.best_score:.4f}")

    model.train()
    while run.train_seconds < budget:
        t0 = time.perf_counter()
        lr = cfg.lr * _lr_factor(run.steps, run.train_seconds, budget, cfg.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        batch, neg = draw_batch(sampler, rng, cfg, loss_fn.negatives, train.num_items)
        loss, _stats = batch_loss(model, loss_fn, batch, neg)  # type: ignore[arg-type]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        run.steps += 1
        dt = time.perf_counter() - t0
        run.train_seconds += dt
        whole = min(int(run.train_seconds), round(budget))
        if whole > bar.n:  # whole seconds only: fractional updates flood a log
            bar.update(whole - bar.n)
        if run.train_seconds >= next_eval:
            checkpoint()
            next_eval += budget / evals
    if not run.curve or run.curve[-1]["step"] != run.steps:
        checkpoint()
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return run


__all__ = ["BudgetRun", "train_for_budget"]
