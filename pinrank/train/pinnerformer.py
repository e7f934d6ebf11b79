"""Train PinnerFormer with the dense all-action loss, checkpoint, resume, evaluate.

Training data: per user, the time-sorted sequence actions strictly before
the training cut (meta["train_end_ms"] unless `train_cut_ms` moves it
earlier, to leave later days to the ranker: pinrank.train.training_cut);
every step samples windows of up to M actions ending at
random cut points, positions inside them and one future-window positive per
position (`DenseAllActionSampler`, seeded numpy Generator, restored on resume).

Evaluation (`evaluate_recall`): each user's embedding from actions before
train_end_ms, scored by cosine against every item's tower embedding; Recall@k
= |top-k ∩ positives in [train_end, train_end + eval window)| / |positives|
(distinct items), averaged over users, next to two popularity baselines.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.data.dataset import Dataset
from pinrank.embed.batch import user_embeddings
from pinrank.metrics import recall_at_k
from pinrank.models.checkpoints import (
    PINNERFORMER_KIND,
    load_checkpoint,
    pinnerformer_config,
    save_checkpoint,
)
from pinrank.models.pinnerformer import (
    PinnerFormer,
    PinnerFormerConfig,
    UserTimelines,
    load_pinnerformer,
    to_tensors,
)
from pinrank.train.common import plot_curves, seed_everything
from pinrank.train.distributed import SINGLE, DistContext, even_bounds, gather_rows
from pinrank.train.pinnerformer_loss import (
    DenseAllActionLoss,
    DenseAllActionSampler,
    DenseBatch,
)
from pinrank.train.training_cut import check_cut_in_training_period, format_ms

KIND = PINNERFORMER_KIND


@dataclass
class PinnerFormerTrainConfig:
    """Optimisation and sampling knobs. `steps` is the total (a resumed run continues to it).

    The defaults are the QUICK setting: ~2-3 minutes on 2 CPU cores for a
    ~2,000-user / 5,000-item / 200k-action dataset.
    """

    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    positions_per_seq: int = 32
    include_newest: bool = True
    future_window_days: float = float(schema.FUTURE_WINDOW_DAYS)
    num_random_negatives: int = 1024
    max_in_batch_negatives: int = 5000
    init_temperature: float = 0.07
    min_temperature: float = 0.01
    cms_width: int = 1 << 16
    cms_depth: int = 4
    eval_window_days: float = 14.0
    eval_k: int = 10
    log_every: int = 10
    checkpoint_every: int = 100
    # Ablation switches (see pinnerformer_loss): training objective, negative mix, logQ correction.
    #: Learning-rate multiplier of the per-item id embedding table. Each row
    #: gets a gradient only when its item is sampled, so it learns far slower
    #: than the shared weights at the same rate.
    item_id_lr_mult: float = 1.0
    objective: str = "dense_all_action"
    negatives: str = "mixed"
    logq: bool = True
    #: Actions that are labels (the user tower's targets). The paper's are the
    #: positive engagements; leave-one-out on a rating log predicts every
    #: rated item, low ratings included (`pinrank eval loo`).
    label_actions: tuple[str, ...] = schema.POSITIVE_ACTIONS
    #: pinnerformer_loss.WINDOW_ENDS; objectives that train e_1 only ignore it.
    window_end: str = "random"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PinnerFormerTrainConfig":
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in d.items() if k in known}
        if "label_actions" in kept:
            kept["label_actions"] = tuple(kept["label_actions"])
        return cls(**kept)


def make_sampler(ds: Dataset, model_cfg: PinnerFormerConfig, cfg: PinnerFormerTrainConfig) -> DenseAllActionSampler:
    """Sampler over the training period only (actions before train_end_ms)."""
    seq = UserTimelines(ds, model_cfg.sequence_actions, before_ms=ds.train_end_ms)
    pos = UserTimelines(ds, cfg.label_actions, before_ms=ds.train_end_ms)
    return DenseAllActionSampler(seq, pos, cfg.future_window_days, model_cfg.max_len,
                                 cfg.positions_per_seq, cfg.include_newest, cfg.objective, cfg.window_end)


def make_optimizer(model: nn.Module, loss_fn: DenseAllActionLoss, cfg: PinnerFormerTrainConfig) -> torch.optim.AdamW:
    """AdamW for a tower with `num_items` (PinnerFormer, SASRec); each param
    group's `lr_mult` scales the scheduled rate.

    No weight decay on vectors (biases, norms, phases, the log-temperature):
    decay would pull the temperature towards 1 and the norms towards 0. None
    on the per-item id tables either (any embedding with a row per item): a
    row decays at every step but learns only when its item is sampled, so
    decay would erase rare items.
    """
    n_rows = int(getattr(model, "num_items")) + 1
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == n_rows]
    params = [p for p in list(model.parameters()) + list(loss_fn.parameters())
              if not any(p is t for t in tables)]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
         {"params": tables, "weight_decay": 0.0, "lr_mult": cfg.item_id_lr_mult}],
        lr=cfg.lr,
    )


def pinnerformer_train_cut_ms(source: str | Path | dict[str, Any]) -> int:
    """The training cut of a PinnerFormer checkpoint (path or loaded dict): it
    trained on actions strictly before it. Checkpoints from before the cut was
    recorded trained on their dataset's whole training period."""
    ckpt = source if isinstance(source, dict) else load_checkpoint(source, KIND)
    extra = ckpt.get("extra", {})
    if "train_cut_ms" in extra:
        return int(extra["train_cut_ms"])
    try:
        return int(extra["dataset_meta"]["train_end_ms"])
    except (KeyError, TypeError):
        raise ValueError(f"{source if not isinstance(source, dict) else 'checkpoint'}: records no training cut "
                         "(no train_cut_ms, no dataset_meta.train_end_ms)") from None


def with_train_end(ds: Dataset, cut_ms: int) -> Dataset:
    """`ds` as PinnerFormer sees it under a training cut: the same arrays, with
    train_end_ms moved to the cut (its sampler and evaluation read train_end_ms)."""
    return ds if cut_ms == ds.train_end_ms else replace(ds, meta={**ds.meta, "train_end_ms": int(cut_ms)})


def _lr_factor(step: int, cfg: PinnerFormerTrainConfig) -> float:
    # Linear warm-up then cosine to 10%: a pure function of the step, so a
    # resumed run needs no scheduler state.
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def draw_batch(sampler: DenseAllActionSampler, rng: np.random.Generator, cfg: PinnerFormerTrainConfig,
               negatives: str, num_items: int) -> tuple[DenseBatch, np.ndarray]:
    """The next global batch and its random negatives (item indices), from `rng`."""
    batch = sampler.sample(rng, cfg.batch_size)
    n_random = 0 if negatives in ("in_batch", "full") else cfg.num_random_negatives
    return batch, rng.integers(1, num_items + 1, size=n_random)


def encode_pairs(model: nn.Module, inputs: dict[str, np.ndarray], row: np.ndarray, col: np.ndarray,
                 device: torch.device | None = None, groups: int = 4) -> Tensor:
    """Hidden states [R, H] at the labelled (window row, column) pairs.

    Windows are encoded in `groups` groups of similar length, each trimmed
    to its own longest window: one long user would otherwise pad the whole
    batch to max_len, and attention cost grows with the square of that width
    (3x faster on MovieLens). Trailing padding changes no output, so the
    states are the ones a single padded forward would give.
    """
    if row.size == 0:
        # A data-parallel rank may hold no labelled pair; it still runs the encoder so
        # its graph (and DDP's gradient sync) covers the same parameters as the others.
        hidden = model.encode(**{k: t.to(device) if device is not None else t for k, t in to_tensors(inputs).items()})
        return hidden[:0, 0]
    lengths = (inputs["action"] > 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    local = np.empty(lengths.size, dtype=np.int64)
    parts, picked = [], []
    for group in np.array_split(order, min(groups, lengths.size)):
        if group.size == 0:
            continue
        width = max(1, int(lengths[group].max()))
        local[group] = np.arange(group.size)
        sel = np.flatnonzero(np.isin(row, group))
        if sel.size == 0:
            continue
        sub = to_tensors({k: v[group, :width] for k, v in inputs.items()})
        hidden = model.encode(**{k: t.to(device) if device is not None else t for k, t in sub.items()})
        r = torch.from_numpy(local[row[sel]])
        c = torch.from_numpy(col[sel])
        if device is not None:
            r, c = r.to(device), c.to(device)
        parts.append(hidden[r, c])
        picked.append(sel)
    back = torch.from_numpy(np.argsort(np.concatenate(picked), kind="stable"))
    out = torch.cat(parts)
    return out[back.to(out.device)]


def batch_loss(model: PinnerFormer, loss_fn: DenseAllActionLoss, batch: DenseBatch, neg: np.ndarray,
               ctx: DistContext = SINGLE) -> tuple[Tensor, dict[str, float]]:
    """The dense all-action loss of `batch` with random negatives `neg`.

    Alone: the batch mean. Data-parallel (every rank holds the same `batch`
    and `neg`): this rank encodes its contiguous part of the windows, of the
    labels and of the random negatives; the item embeddings are gathered from
    every rank (differentiably), so each rank's rows score against the whole
    global batch's in-batch negatives and all random ones, as in a single
    process. The returned loss is this rank's share: the shares add up to
    the single-process mean (trainers multiply by world_size before
    backward, since DDP averages gradients).
    """
    dev = ctx.device
    label = torch.from_numpy(batch.label).to(dev)
    owner = torch.from_numpy(batch.owner).to(dev)
    neg_t = torch.from_numpy(np.asarray(neg, dtype=np.int64)).to(dev)
    if not ctx.enabled:
        user = model.head(encode_pairs(model, batch.inputs, batch.row, batch.col))  # sampled positions only
        if loss_fn.negatives == "full":
            return loss_fn.full_softmax(user, label, model.all_item_embeddings())
        items = model.encode_items(torch.cat([label, neg_t]))
        return loss_fn(user, label, items[: label.numel()], owner, neg_t, items[label.numel():])

    windows = even_bounds(batch.inputs["action"].shape[0], ctx.world_size)
    pairs = np.searchsorted(batch.row, windows)  # rows are in window order: each rank's pairs are contiguous
    negs = even_bounds(neg_t.numel(), ctx.world_size)
    r = ctx.rank
    w_lo, p_lo, p_hi = int(windows[r]), int(pairs[r]), int(pairs[r + 1])
    inputs = {k: v[w_lo: windows[r + 1]] for k, v in batch.inputs.items()}
    user = model.head(encode_pairs(model, inputs, batch.row[p_lo:p_hi] - w_lo, batch.col[p_lo:p_hi], dev))
    if loss_fn.negatives == "full":
        # Every rank scores its rows against the whole catalogue: nothing to gather.
        return loss_fn.full_softmax(user, label[p_lo:p_hi], model.all_item_embeddings(), num_rows=int(label.numel()))
    mine = model.encode_items(torch.cat([label[p_lo:p_hi], neg_t[negs[r]: negs[r + 1]]]))
    n_labels, n_negs = np.diff(pairs), np.diff(negs)
    blocks = gather_rows(mine, (n_labels + n_negs).tolist(), ctx)
    label_emb = torch.cat([b[: n_labels[i]] for i, b in enumerate(blocks)])
    neg_emb = torch.cat([b[n_labels[i]:] for i, b in enumerate(blocks)])
    return loss_fn(user, label[p_lo:p_hi], mine[: p_hi - p_lo], owner[p_lo:p_hi], neg_t, neg_emb,
                   batch_label=label, batch_label_emb=label_emb, batch_owner=owner, num_rows=int(label.numel()))


def train_step(model: PinnerFormer, loss_fn: DenseAllActionLoss, sampler: DenseAllActionSampler,
               rng: np.random.Generator, cfg: PinnerFormerTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample a batch and compute the loss (no optimiser step), in a single process."""
    batch, neg = draw_batch(sampler, rng, cfg, loss_fn.negatives, model.num_items)
    return batch_loss(model, loss_fn, batch, neg)


class PinnerFormerStep(nn.Module):
    """Model + loss as one module, so DistributedDataParallel syncs the
    temperature's gradient too and sees the whole step in one forward."""

    def __init__(self, model: PinnerFormer, loss_fn: DenseAllActionLoss, ctx: DistContext = SINGLE) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.ctx = ctx

    def forward(self, batch: DenseBatch, neg: np.ndarray) -> tuple[Tensor, dict[str, float]]:  # type: ignore[override]
        return batch_loss(self.model, self.loss_fn, batch, neg, self.ctx)


def eval_targets(ds: Dataset, sequence_actions: Any,
                 window_days: float) -> tuple[UserTimelines, list[int], list[np.ndarray]]:
    """History timelines (before train_end_ms), the evaluated history rows and each one's
    distinct positive items in [train_end, train_end + window_days)."""
    t0 = ds.train_end_ms
    t1 = t0 + int(window_days * MS_PER_DAY)
    hist = UserTimelines(ds, sequence_actions, before_ms=t0)
    pos = UserTimelines(ds, schema.POSITIVE_ACTIONS)
    rows = hist.rows_of(pos.user_ids)
    truth, users = [], []
    for prow, hrow in enumerate(rows):
        lo, hi = pos.offsets[prow], pos.offsets[prow + 1]
        sel = (pos.ts_ms[lo:hi] >= t0) & (pos.ts_ms[lo:hi] < t1)
        if hrow >= 0 and sel.any():
            truth.append(np.unique(pos.item_idx[lo:hi][sel]))
            users.append(int(hrow))
    return hist, users, truth


@torch.inference_mode()
def evaluate_recall(model: PinnerFormer, ds: Dataset, k: int = 10, window_days: float = 14.0,
                    batch_size: int = 64) -> dict[str, float]:
    """Recall@k of the model and of popularity on the eval window (see module docstring)."""
    t0 = ds.train_end_ms
    hist, users, truth = eval_targets(ds, model.config.sequence_actions, window_days)
    train_pos = UserTimelines(ds, schema.POSITIVE_ACTIONS, before_ms=t0)
    result: dict[str, float] = {"eval_users": float(len(users)), "k": float(k)}
    if not users:
        return {**result, "recall": float("nan"), "pop_recall": float("nan"), "recent_pop_recall": float("nan")}

    was_training = model.training
    model.eval()
    items = model.all_item_embeddings()
    items[0] = 0.0  # row 0 is OOV, not an item
    emb = torch.from_numpy(user_embeddings(model, hist, np.asarray(users), t0, batch_size))
    tops = []
    for i in range(0, emb.size(0), 1024):
        scores = emb[i: i + 1024] @ items.T
        scores[:, 0] = -math.inf
        tops.append(scores.topk(k, dim=1).indices.numpy())
    model.train(was_training)
    result["recall"] = recall_at_k(np.concatenate(tops), truth)

    def pop_top(since_ms: int) -> np.ndarray:
        counts = np.bincount(train_pos.item_idx[train_pos.ts_ms >= since_ms], minlength=model.num_items + 1)
        counts[0] = -1
        return np.argsort(-counts, kind="stable")[:k]

    result["pop_recall"] = recall_at_k(np.tile(pop_top(-2**62), (len(truth), 1)), truth)
    recent = t0 - int(window_days * MS_PER_DAY)
    result["recent_pop_recall"] = recall_at_k(np.tile(pop_top(recent), (len(truth), 1)), truth)
    return result


def recall_summary(metrics: dict[str, Any]) -> str:
    """One line: model vs popularity Recall@k from `train_pinnerformer` metrics."""
    if "eval_recall" not in metrics:
        return "no evaluation"
    return (
        f"Recall@{int(metrics['eval_k'])} on the eval period ({int(metrics['eval_eval_users'])} users): "
        f"pinnerformer {metrics['eval_recall']:.4f} | popularity {metrics['eval_pop_recall']:.4f} | "
        f"recent popularity {metrics['eval_recent_pop_recall']:.4f}"
    )


def train_pinnerformer(ds: Dataset, out: str | Path, cfg: PinnerFormerTrainConfig | None = None,
                       model_cfg: PinnerFormerConfig | None = None, *, resume: bool = False,
                       curve: str | Path | None = None, progress: bool = True,
                       evaluate: bool = True, stop_at: int | None = None,
                       ctx: DistContext = SINGLE, train_cut_ms: int | None = None) -> dict[str, Any]:
    """Train (or resume) and write the checkpoint `out`; return metrics and timing.

    With `resume=True` and an existing `out`, the model/train config, weights,
    optimiser, loss state (temperature, count-min sketch), data RNG, step and
    history come from the checkpoint; `cfg.steps` is the new total.
    `stop_at` ends this run early (checkpointed) at that step, e.g. to split
    a long run across jobs; the schedule still follows `cfg.steps`.

    `train_cut_ms` (default: ds.train_end_ms, or the resumed checkpoint's)
    trains on the actions before it only and evaluates on the window after
    it; the checkpoint records it, and the ranker then trains on requests
    from the cut on (pinrank.train.training_cut).

    With a distributed `ctx` (torchrun), `cfg.batch_size` is the global batch:
    every rank draws it from the same seeded RNG and trains on its part
    (`batch_loss`), so the run follows the single-process one and a
    checkpoint resumes on any number of ranks. Only rank 0 writes the
    checkpoint and the curve, shows progress and evaluates.
    """
    out = Path(out)
    cfg = cfg or PinnerFormerTrainConfig()
    if cfg.batch_size < ctx.world_size:
        raise ValueError(f"batch size {cfg.batch_size} < {ctx.world_size} ranks: every rank needs a window")
    seed_everything(cfg.seed)
    ckpt = None
    if resume and out.exists():
        ckpt = load_checkpoint(out, KIND)
        model_cfg = PinnerFormerConfig.from_dict(ckpt["config"]["model"])
        saved = PinnerFormerTrainConfig.from_dict(ckpt["config"]["train"])
        cfg = PinnerFormerTrainConfig(**{**asdict(saved), "steps": cfg.steps})
        if not np.array_equal(np.asarray(ckpt["extra"]["item_ids"]), ds.item_ids):
            raise ValueError(f"{out}: checkpoint was trained on a different item catalogue")
        saved_cut = pinnerformer_train_cut_ms(ckpt)
        if train_cut_ms is not None and int(train_cut_ms) != saved_cut:
            raise ValueError(f"{out}: checkpoint trained with cut {format_ms(saved_cut)}, "
                             f"not the requested {format_ms(train_cut_ms)}")
        train_cut_ms = saved_cut
    model_cfg = model_cfg or PinnerFormerConfig()
    full_meta = dict(ds.meta)
    cut = ds.train_end_ms if train_cut_ms is None else int(train_cut_ms)
    check_cut_in_training_period(cut, ds)
    ds = with_train_end(ds, cut)

    model = PinnerFormer(model_cfg, ds.item_emb)
    loss_fn = DenseAllActionLoss(ds.num_items, cfg.init_temperature, cfg.min_temperature,
                                 cfg.max_in_batch_negatives, cfg.cms_width, cfg.cms_depth, cfg.seed,
                                 negatives=cfg.negatives, logq=cfg.logq)
    model.to(ctx.device)
    loss_fn.to(ctx.device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = make_optimizer(model, loss_fn, cfg)
    rng = np.random.default_rng(cfg.seed)
    step, history = 0, {"loss": [], "temperature": [], "batch_acc": [], "lr": []}
    # Running sums since the last logged point; checkpointed so a split run logs like a straight one.
    window = {"loss": 0.0, "temperature": 0.0, "batch_acc": 0.0, "n": 0}
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        loss_fn.load_state_dict(ckpt["extra"]["loss_state"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["extra"]["rng_state"]
        step, history = int(ckpt["step"]), ckpt["extra"]["history"]
        window = dict(ckpt["extra"].get("log_window", window))

    sampler = make_sampler(ds, model_cfg, cfg)

    # A switched-off id table stays out of the graph; DDP must be told.
    step_fn = ctx.wrap(PinnerFormerStep(model, loss_fn, ctx),
                       find_unused_parameters=not (model.use_item_id and model.use_input_id))

    def save() -> None:
        if not ctx.is_main:
            return
        save_checkpoint(
            out, kind=KIND, model=model, optimizer=opt, step=step,
            config=pinnerformer_config(model_cfg.to_dict(), ds.num_items, train=asdict(cfg)),
            extra={"loss_state": loss_fn.state_dict(), "rng_state": rng.bit_generator.state,
                   "history": history, "log_window": dict(window), "item_ids": ds.item_ids.copy(),
                   "dataset_meta": full_meta, "train_cut_ms": cut},
        )

    model.train()
    t_start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="pinnerformer", disable=not (progress and ctx.is_main),
               dynamic_ncols=True)
    last = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    while step < last:
        lr = cfg.lr * _lr_factor(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        batch, neg = draw_batch(sampler, rng, cfg, loss_fn.negatives, model.num_items)
        loss, stats = step_fn(batch, neg)
        opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; each loss is a share of the global mean.
        (loss * ctx.world_size if ctx.enabled else loss).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        if ctx.enabled:
            total, correct = ctx.sum([float(loss.detach()), stats["batch_acc"] * stats["rows"]])
            window["loss"] += total
            window["batch_acc"] += correct / batch.label.size
        else:
            window["loss"] += float(loss.detach())
            window["batch_acc"] += stats["batch_acc"]
        window["temperature"] += stats["temperature"]
        window["n"] += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = window.pop("n")
            for key, total in window.items():
                history[key].append(total / n)
            history["lr"].append(lr)
            history.setdefault("step", []).append(step)
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", tau=f"{history['temperature'][-1]:.3f}")
            window = {"loss": 0.0, "temperature": 0.0, "batch_acc": 0.0, "n": 0}
        if step % cfg.checkpoint_every == 0:
            save()
        bar.update(1)
    bar.close()
    train_seconds = time.perf_counter() - t_start
    save()

    metrics: dict[str, Any] = {"steps": step, "train_seconds": round(train_seconds, 2),
                               "final_loss": history["loss"][-1] if history["loss"] else None,
                               "checkpoint": str(out), "world_size": ctx.world_size, "train_cut_ms": cut}
    model.cpu()  # evaluation and callers work on CPU tensors
    if not ctx.is_main:
        model.eval()
        return metrics
    if evaluate:
        ev = evaluate_recall(model, ds, cfg.eval_k, cfg.eval_window_days)
        metrics.update({f"eval_{k}": v for k, v in ev.items()})
        if progress:
            print(recall_summary(metrics))
    if curve is not None:
        plot_curves({k: v for k, v in history.items() if k != "lr"}, curve, f"PinnerFormer ({step} steps)")
    model.eval()
    return metrics


__all__ = [
    "PinnerFormerStep",
    "PinnerFormerTrainConfig",
    "batch_loss",
    "draw_batch",
    "eval_targets",
    "evaluate_recall",
    "load_pinnerformer",
    "make_optimizer",
    "make_sampler",
    "pinnerformer_train_cut_ms",
    "recall_summary",
    "train_pinnerformer",
    "train_step",
    "with_train_end",
]
