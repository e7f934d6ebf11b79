"""Ranker training and evaluation: weighted multi-head BCE, AdamW, seeded,
resumable; AUC and HIT@3 per head on held-out requests.

Loss (TransAct eq. 1-2): L = sum_h w_h * BCE(y_h, f_h), with per-example head
weights w_h = 1 + sum_a M[h, a] * y_a from a hand-set label-weight matrix M
(rows and columns in schema.HEADS order). The default M makes a hide weigh
the save and click heads' (negative) labels 10x: "this user really did not
want it" is a much stronger negative than "not engaged".

Batches hold whole requests (~`batch_size` impressions), so the fused ranker
encodes each sequence once. Every random draw (batch order, time window,
dropout) is derived from (seed, step), so resuming from a checkpoint replays
exactly the run that was interrupted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pinrank.backend import schema
from pinrank.metrics import auc
from pinrank.models.checkpoints import (
    RANKER_KIND,
    load_checkpoint,
    ranker_config,
    save_checkpoint,
)
from pinrank.models.ranker import Ranker, RankerConfig, ranker_from_checkpoint
from pinrank.train.common import plot_curves, seed_everything
from pinrank.train.distributed import SINGLE, DistContext, weighted_bounds
from pinrank.train.ranker_data import RankerData

#: Extra weight M[h, a] that label a adds to head h (schema.HEADS names).
DEFAULT_LABEL_WEIGHTS: dict[tuple[str, str], float] = {("save", "hide"): 9.0, ("click", "hide"): 9.0}


def label_weight_matrix(extra: Mapping[tuple[str, str], float] | None = None) -> np.ndarray:
    """M [H, H] (float32, schema.HEADS order) from {(head, label): weight}."""
    extra = DEFAULT_LABEL_WEIGHTS if extra is None else extra
    m = np.zeros((schema.NUM_HEADS, schema.NUM_HEADS), np.float32)
    for (head, label), w in extra.items():
        if head not in schema.HEADS or label not in schema.HEADS:
            raise ValueError(f"unknown head in label weight ({head!r}, {label!r}); heads are {schema.HEADS}")
        m[schema.HEADS.index(head), schema.HEADS.index(label)] = w
    return m


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weight_matrix: torch.Tensor,
                 num_rows: int | None = None) -> torch.Tensor:
    """Mean over examples of sum_h w_h * BCE_h, w = 1 + labels @ M^T.

    With `num_rows` (a data-parallel rank's part of a global batch of that
    many impressions): the sum over these examples / num_rows, the rank's
    share of the global mean.
    """
    w = 1.0 + labels @ weight_matrix.t()
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    per_row = (w * bce).sum(dim=1)
    return per_row.mean() if num_rows is None else per_row.sum() / num_rows


# --- metrics -------------------------------------------------------------------


def hit_at_k(req_index: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 3,
             seed: int = 0) -> tuple[float, int]:
    """HIT@k over requests: (rate, number of eligible requests).

    Only requests with at least one positive label count. Within each, the
    candidate order is shuffled with `seed` (so ties break randomly, never by
    log order), candidates are ranked by score, highest first, and the request
    is a hit when a positive lands in the top k. HIT@k = hits / eligible
    requests; requests with <= k candidates always hit. NaN if none eligible.
    """
    req = np.asarray(req_index, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if req.size == 0:
        return float("nan"), 0
    shuffle = np.random.default_rng(seed).permutation(req.size)
    order = np.lexsort((shuffle, -s, req))  # by request, then score desc, then random
    req_sorted = req[order]
    first = np.flatnonzero(np.concatenate([[True], req_sorted[1:] != req_sorted[:-1]]))
    run_start = np.repeat(first, np.diff(np.concatenate([first, [req.size]])))
    top = (np.arange(req.size) - run_start) < k
    n_req = int(req.max()) + 1
    has_pos = np.bincount(req, weights=y, minlength=n_req) > 0
    hit = np.bincount(req_sorted, weights=(top & y[order]), minlength=n_req) > 0
    eligible = int(has_pos.sum())
    return (float(hit[has_pos].mean()) if eligible else float("nan")), eligible


def random_hit_at_k(req_index: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Expected HIT@k of a random ranking (the floor to read HIT@k against)."""
    req = np.asarray(req_index, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    n = np.bincount(req)
    p = np.bincount(req, weights=y, minlength=n.size).astype(np.int64)
    elig = p > 0
    if not elig.any():
        return float("nan")
    n, p = n[elig], p[elig]
    # P(no positive in a random top-k) = C(n-p, k) / C(n, k)
    miss = np.array([math.comb(int(a - b), k) / math.comb(int(a), k) if a > k else 0.0 for a, b in zip(n, p)])
    return float(1.0 - miss.mean())


@torch.no_grad()
def predict(model: Ranker, data: RankerData, requests_per_batch: int = 256) -> np.ndarray:
    """Probabilities [M, H] for every impression of `data` (eval mode, no window mask)."""
    was_training = model.training
    model.eval()
    out = np.zeros((data.num_impressions, schema.NUM_HEADS), np.float32)
    for lo in range(0, data.num_requests, requests_per_batch):
        reqs = np.arange(lo, min(lo + requests_per_batch, data.num_requests))
        b = data.torch_batch(reqs)
        logits = model(b["cand_idx"], b["req_index"], b["user_emb"], b["seq_item_idx"], b["seq_action"],
                       b["seq_surface"], b["seq_age_h"], b["context"], None)
        out[data.offsets[reqs[0]]:data.offsets[reqs[-1] + 1]] = torch.sigmoid(logits).numpy()
    model.train(was_training)
    return out


def evaluate(model: Ranker, data: RankerData, seed: int = 0, k: int = 3) -> dict[str, Any]:
    """AUC and HIT@k per head on `data`, plus the random-ranking HIT@k floor.

    `hit@k` ranks by the head's own probability (does the model find this
    request's saves?). `hit@k_utility` ranks by the served utility
    (schema.UTILITY_WEIGHTS): what users see, where the hide figure should be low.
    """
    probs = predict(model, data)
    utility = probs @ schema.utility_weight_vector()
    result: dict[str, Any] = {"requests": data.num_requests, "impressions": data.num_impressions}
    for j, head in enumerate(schema.HEADS):
        y = data.labels[:, j]
        hit, eligible = hit_at_k(data.req_index, y, probs[:, j], k, seed)
        hit_u, _ = hit_at_k(data.req_index, y, utility, k, seed)
        result[head] = {
            "auc": auc(y, probs[:, j]),
            f"hit@{k}": hit,
            f"hit@{k}_random": random_hit_at_k(data.req_index, y, k),
            f"hit@{k}_utility": hit_u,
            "eligible_requests": eligible,
            "positive_rate": float(y.mean()) if y.size else float("nan"),
        }
    return result


# --- training ------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults = QUICK (fused mode, ~2 min on 2 cores)."""

    steps: int = 800
    batch_size: int = 512  # impressions per step (whole requests, so approximate)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    mask_window_h: float = 24.0  # T ~ U[0, this] per request during training; 0 = off
    log_every: int = 20
    checkpoint_every: int = 200
    eval_seed: int = 0
    label_weights: dict[str, float] | None = None  # {"head:label": w}; None = DEFAULT_LABEL_WEIGHTS

    def weight_matrix(self) -> np.ndarray:
        if self.label_weights is None:
            return label_weight_matrix()
        return label_weight_matrix({tuple(k.split(":", 1)): v for k, v in self.label_weights.items()})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def request_batches(counts: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of request batches: a seeded permutation of the requests cut
    where the running impression count crosses multiples of batch_size."""
    perm = np.random.default_rng([seed, epoch]).permutation(counts.size)
    cum = np.cumsum(counts[perm])
    cuts = np.searchsorted(cum, np.arange(batch_size, int(cum[-1]), batch_size), side="left") + 1
    return [b for b in np.split(perm, np.unique(cuts)) if b.size]


def _batch_for_step(counts: np.ndarray, cfg: TrainConfig, step: int,
                    cache: dict[int, list[np.ndarray]]) -> np.ndarray:
    """The request batch of a global step (epochs may differ by a batch or two)."""
    epoch = 0
    while True:
        if epoch not in cache:
            cache[epoch] = request_batches(counts, cfg.batch_size, cfg.seed, epoch)
        if step < len(cache[epoch]):
            return cache[epoch][step]
        step -= len(cache[epoch])
        epoch += 1


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup then cosine to 10% (TransAct's schedule, scaled down)."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return f


def batch_loss(model: nn.Module, data: RankerData, reqs: np.ndarray, weights: torch.Tensor, cfg: TrainConfig,
               step: int, ctx: DistContext = SINGLE) -> torch.Tensor:
    """Weighted BCE of step `step`'s request batch `reqs` (time windows drawn from (seed, step)).

    Alone: the batch mean. Data-parallel (every rank holds the same `reqs`):
    this rank takes a contiguous part of the requests with about 1/W of the
    impressions (whole requests, so the fused ranker still encodes each
    sequence once) and returns its share of the global mean; the shares add
    up to the single-process loss. `model` may be DDP-wrapped.
    """
    window = None
    if cfg.mask_window_h > 0:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        window = torch.rand(reqs.size, generator=g) * cfg.mask_window_h
    num_rows, scale = None, 1.0
    if ctx.enabled:
        counts = np.diff(data.offsets)[reqs]
        num_rows = int(counts.sum())
        if reqs.size >= ctx.world_size:
            bounds = weighted_bounds(counts, ctx.world_size)
        else:  # an epoch's last batch can be tiny: one request per rank while they last
            bounds = np.minimum(np.arange(ctx.world_size + 1), reqs.size)
        lo, hi = int(bounds[ctx.rank]), int(bounds[ctx.rank + 1])
        if lo == hi:
            # Nothing left for this rank, but DDP needs its forward and backward:
            # any request, weighted 0, adds nothing to the loss or the gradient.
            lo, hi, scale = 0, 1, 0.0
        reqs = reqs[lo:hi]
        window = window[lo:hi] if window is not None else None
    b = {k: v.to(ctx.device) for k, v in data.torch_batch(reqs).items()}
    if window is not None:
        window = window.to(ctx.device)
    # Dropout, reproducible across resumes; ranks draw different masks (rank 0 = the single-process one).
    torch.manual_seed(cfg.seed * 7_919 + step + ctx.rank * 1_000_000_007)
    logits = model(b["cand_idx"], b["req_index"], b["user_emb"], b["seq_item_idx"], b["seq_action"],
                   b["seq_surface"], b["seq_age_h"], b["context"], window)
    loss = weighted_bce(logits, b["labels"], weights, num_rows)
    return loss * scale if scale != 1.0 else loss


@dataclass
class TrainResult:
    model: Ranker
    history: dict[str, list[float]]
    metrics: dict[str, Any] | None
    seconds: float
    step: int


def train_ranker(train: RankerData, item_emb: np.ndarray, model_cfg: RankerConfig, cfg: TrainConfig,
                 out: str | Path | None = None, eval_data: RankerData | None = None, resume: bool = False,
                 curve: str | Path | None = None, extra: dict[str, Any] | None = None,
                 progress: bool = True, ctx: DistContext = SINGLE) -> TrainResult:
    """Train (or resume) a ranker; checkpoint to `out`, evaluate on `eval_data`.

    `item_emb` [num_items, ITEM_EMB_DIM] is the frozen table (vocab order).
    `extra` is stored in the checkpoint (e.g. item_ids, data provenance).
    With a distributed `ctx` (torchrun), `cfg.batch_size` is the global batch
    and each rank trains on its part (`batch_loss`); only rank 0 writes the
    checkpoint and curve, shows progress and evaluates (others get metrics None).
    """
    if train.num_impressions == 0:
        raise ValueError("no training impressions (is train_end_ms after the first request?)")
    gen = seed_everything(cfg.seed)
    del gen  # per-step generators below make resumption exact
    model = Ranker(model_cfg, item_emb=item_emb).to(ctx.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    history: dict[str, list[float]] = {"loss": [], "lr": []}
    step = 0
    prior_seconds = 0.0
    if resume and out is not None and Path(out).exists():
        ckpt = load_checkpoint(out, kind=RANKER_KIND)
        saved = RankerConfig.from_dict(ckpt["config"]["ranker"])
        if saved != model_cfg:
            raise ValueError(f"{out}: checkpoint architecture {saved} differs from requested {model_cfg}")
        model.load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        history = ckpt["extra"].get("history", history)
        prior_seconds = float(ckpt["extra"].get("train_seconds", 0.0))
        if ckpt["extra"].get("scheduler"):
            sched.load_state_dict(ckpt["extra"]["scheduler"])
    weights = torch.from_numpy(cfg.weight_matrix()).to(ctx.device)
    # Every mode leaves some parameters out of the graph (surface embedding,
    # the other layout's readout), so DDP must look for unused ones.
    net = ctx.wrap(model, find_unused_parameters=True)
    counts = np.diff(train.offsets)
    cache: dict[int, list[np.ndarray]] = {}
    ckpt_extra = dict(extra or {})

    start = time.perf_counter()

    def seconds() -> float:
        return prior_seconds + time.perf_counter() - start

    def save(at_step: int, metrics: dict[str, Any] | None = None, train_seconds: float | None = None) -> None:
        if out is None or not ctx.is_main:
            return
        save_checkpoint(
            out, kind=RANKER_KIND, model=model, optimizer=opt, step=at_step,
            config=ranker_config(model_cfg.to_dict(), model.num_items, train=asdict(cfg)),
            extra={**ckpt_extra, "history": history, "metrics": metrics,
                   "train_seconds": seconds() if train_seconds is None else train_seconds,
                   "scheduler": sched.state_dict()},
        )

    model.train()
    running: list[float] = []
    bar = tqdm(total=cfg.steps, initial=step, desc=f"ranker[{model_cfg.mode}]", disable=not (progress and ctx.is_main),
               dynamic_ncols=True)
    while step < cfg.steps:
        reqs = _batch_for_step(counts, cfg, step, cache)
        loss = batch_loss(net, train, reqs, weights, cfg, step, ctx)
        opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; each loss is a share of the global mean.
        (loss * ctx.world_size if ctx.enabled else loss).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        running.append(ctx.sum([loss.item()])[0] if ctx.enabled else loss.item())
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history["loss"].append(float(np.mean(running)))
            history["lr"].append(float(sched.get_last_lr()[0]))
            history.setdefault("step", []).append(step)
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
            running = []
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save(step)
    bar.close()
    elapsed = seconds()
    metrics = None
    model.cpu()  # evaluation and callers work on CPU tensors
    if not ctx.is_main:
        return TrainResult(model.eval(), history, None, elapsed, step)
    if eval_data is not None and eval_data.num_impressions:
        metrics = evaluate(model, eval_data, seed=cfg.eval_seed)
    save(step, metrics, train_seconds=elapsed)
    if curve is not None:
        plot_curves(history, curve, title=f"ranker ({model_cfg.mode})")
    return TrainResult(model.eval(), history, metrics, elapsed, step)


def load_trained(checkpoint_path: str | Path) -> tuple[Ranker, dict[str, Any]]:
    """(eval-mode Ranker, checkpoint dict) from a ranker checkpoint."""
    ckpt = load_checkpoint(checkpoint_path, kind=RANKER_KIND)
    return ranker_from_checkpoint(ckpt), ckpt


def format_metrics(metrics: Mapping[str, Any], k: int = 3) -> str:
    """A small per-head table for the CLI."""
    lines = [f"{'head':<8} {'AUC':>6} {'HIT@' + str(k):>7} {'random':>7} {'utility':>8} {'requests':>9}"]
    for head in schema.HEADS:
        m = metrics[head]
        lines.append(f"{head:<8} {m['auc']:6.4f} {m[f'hit@{k}']:7.4f} {m[f'hit@{k}_random']:7.4f} "
                     f"{m[f'hit@{k}_utility']:8.4f} {m['eligible_requests']:9d}")
    return "\n".join(lines)
