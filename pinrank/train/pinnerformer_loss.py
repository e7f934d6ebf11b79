"""PinnerFormer's dense all-action loss: label sampling (numpy) and the sampled softmax.

Dense all-action objective (PinnerFormer §3): for a window of a user's
actions, sample positions; the causal output e_s at each sampled position
predicts ONE random positive action from that position's own future window
(ts_s, ts_s + K days]. Labels may lie beyond the window's end (the future of
the newest position is always outside it), but never at or after the
training cut, because the timelines handed in stop there.

Sampled softmax with a learned temperature (clamped >= min_temperature),
negatives = in-batch positives of other users (the user's own are masked) +
uniform random items, and every logit corrected by -log Q(v), Q(v) = the
expected number of times v appears among the candidates, estimated from a
count-min sketch of label frequencies (logQ / sampling-probability correction).

Ablation variants (PinnerFormer §4 / Table 2): the sampler's `objective`
decides which (position, label) pairs are emitted, the loss's `negatives` and
`logq` which candidates are scored and whether logQ is subtracted:

- "dense_all_action" (default): as above.
- "all_action": only the newest position e_1 of each window, predicting up to
  `positions_per_seq` distinct positives drawn from its future window.
- "sasrec": every labelled position of the window predicts its NEXT positive
  (the first positive strictly later in time, before the cut; no K-day limit).
- "next_action": only e_1, predicting its next positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pinrank.backend.units import MS_PER_DAY
from pinrank.models.pinnerformer import UserTimelines

OBJECTIVES = ("dense_all_action", "all_action", "sasrec", "next_action")
NEGATIVES = ("mixed", "in_batch", "random", "full")
#: Where a training window ends: at a uniformly drawn action ("random": every
#: prefix of a history is a training example, the paper's sampling), or at the
#: user's last action ("last": the last max_len actions, as SASRec trains; every
#: position weighs the same instead of early ones being covered by more windows).
WINDOW_ENDS = ("random", "last")


@dataclass
class DenseBatch:
    """One training batch: model inputs plus the sampled (position, label) pairs.

    `inputs` are [B, L] int64 arrays (pinnerformer.INPUT_NAMES). Each of the R
    labelled pairs has a batch row `row`, a window column `col` (0 = newest),
    the label item index `label`, and `owner` = the user's timeline row (the
    same user may appear twice in a batch; their labels must not be negatives
    for each other). `src_flat` / `label_flat` index the flat timeline arrays
    (for tests and debugging).
    """

    inputs: dict[str, np.ndarray]
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray
    owner: np.ndarray
    src_flat: np.ndarray
    label_flat: np.ndarray


class DenseAllActionSampler:
    """Samples windows, positions and labels on the fly (seeded rng in, no global state).

    `objective` (see the module docstring) picks the (position, label) pairs;
    for "all_action" / "next_action" every window ends right after a labelled
    action so that its newest position e_1 has a label.
    """

    def __init__(self, seq: UserTimelines, positives: UserTimelines, window_days: float, max_len: int,
                 positions_per_seq: int = 16, include_newest: bool = True,
                 objective: str = "dense_all_action", window_end: str = "random") -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if window_end not in WINDOW_ENDS:
            raise ValueError(f"window_end must be one of {WINDOW_ENDS}, got {window_end!r}")
        self.window_end = window_end
        self.objective = objective
        self.newest_only = objective in ("all_action", "next_action")
        self.next_label = objective in ("sasrec", "next_action")
        self.seq, self.pos = seq, positives
        self.window_ms = int(round(window_days * MS_PER_DAY))
        self.max_len = max_len
        self.positions_per_seq = positions_per_seq
        self.include_newest = include_newest
        self.lo, self.hi = self._future_ranges()
        if self.next_label:
            # Next positive = lo; a position is labelled if any later positive exists before the cut.
            prow = np.repeat(positives.rows_of(seq.user_ids), seq.lengths)
            self.hi = np.where(prow >= 0, positives.offsets[prow + 1], 0).astype(np.int64)
        labelled = self.hi > self.lo
        # A row is usable if any of its actions has a future positive; its
        # windows may end anywhere after the first such action.
        row_of_flat = np.repeat(np.arange(len(seq)), seq.lengths)
        idx = np.flatnonzero(labelled)
        first = np.full(len(seq), -1, dtype=np.int64)
        uniq, first_pos = np.unique(row_of_flat[idx], return_index=True)
        first[uniq] = idx[first_pos]
        self.first_labelled = first
        self.rows = np.flatnonzero(first >= 0)
        self.labelled = labelled

    def _future_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per flat sequence action k: positives [lo, hi) with ts in (ts_k, ts_k + window]."""
        seq, pos = self.seq, self.pos
        n = seq.ts_ms.size
        prow = pos.rows_of(seq.user_ids)  # positives row of each sequence row, -1 if none
        seq_prow = np.repeat(prow, seq.lengths)
        pos_row = np.repeat(np.arange(len(pos)), pos.lengths)
        # Composite (row, time-rank) keys make one vectorised searchsorted do
        # every per-user search; ranks keep the keys small enough for int64.
        values = np.concatenate([pos.ts_ms, seq.ts_ms, seq.ts_ms + self.window_ms])
        uniq, inv = np.unique(values, return_inverse=True)
        r = np.int64(uniq.size + 1)
        pos_key = pos_row * r + inv[: pos.ts_ms.size]
        q_lo = seq_prow * r + inv[pos.ts_ms.size: pos.ts_ms.size + n]
        q_hi = seq_prow * r + inv[pos.ts_ms.size + n:]
        lo = np.searchsorted(pos_key, q_lo, side="right")
        hi = np.searchsorted(pos_key, q_hi, side="right")
        none = seq_prow < 0
        lo[none] = 0
        hi[none] = 0
        return lo.astype(np.int64), hi.astype(np.int64)

    def __len__(self) -> int:
        return int(self.rows.size)

    def sample(self, rng: np.random.Generator, batch_size: int) -> DenseBatch:
        if self.rows.size == 0:
            raise ValueError("no user has a positive action after another action before the training cut")
        seq = self.seq
        rows = self.rows[rng.integers(0, self.rows.size, size=batch_size)]
        ends = np.empty(batch_size, dtype=np.int64)
        b_idx, cols, src = [], [], []
        all_action_labels: list[np.ndarray] = []
        for b, r in enumerate(rows):
            if self.newest_only:
                # Window end (exclusive) right after a uniformly chosen labelled action: e_1 is labelled.
                lab = int(seq.offsets[r]) + np.flatnonzero(self.labelled[seq.offsets[r]: seq.offsets[r + 1]])
                end = int(lab[rng.integers(0, lab.size)]) + 1
            elif self.window_end == "last":
                end = int(seq.offsets[r + 1])
            else:
                # Window end (exclusive) uniform over cuts that keep >= 1 labelled action.
                end = int(rng.integers(self.first_labelled[r] + 1, seq.offsets[r + 1] + 1))
            ends[b] = end
            start = max(int(seq.offsets[r]), end - self.max_len)
            cand = start + np.flatnonzero(self.labelled[start:end])
            k = min(self.positions_per_seq, cand.size)
            if self.newest_only:
                chosen = np.array([end - 1])
                if self.objective == "all_action":  # up to K distinct future positives for e_1
                    lo, hi = int(self.lo[end - 1]), int(self.hi[end - 1])
                    drawn = lo + rng.choice(hi - lo, size=min(self.positions_per_seq, hi - lo), replace=False)
                    all_action_labels.append(drawn.astype(np.int64))
                    chosen = np.repeat(chosen, drawn.size)
            elif self.objective == "sasrec":
                chosen = cand  # every labelled position
            elif self.include_newest and self.labelled[end - 1]:
                others = cand[cand != end - 1]
                chosen = np.concatenate([[end - 1], rng.choice(others, size=min(k - 1, others.size), replace=False)])
            else:
                chosen = rng.choice(cand, size=k, replace=False)
            chosen = chosen.astype(np.int64)
            b_idx.append(np.full(chosen.size, b, dtype=np.int64))
            cols.append(end - 1 - chosen)
            src.append(chosen)
        src_flat = np.concatenate(src)
        if src_flat.size == 0:  # every window slid past its labelled actions: rare, draw again
            return self.sample(rng, batch_size)
        lo, hi = self.lo[src_flat], self.hi[src_flat]
        if self.next_label:
            label_flat = lo.copy()
        elif self.objective == "all_action":
            label_flat = np.concatenate(all_action_labels)
        else:
            label_flat = lo + np.floor(rng.random(src_flat.size) * (hi - lo)).astype(np.int64)
        row = np.concatenate(b_idx)
        return DenseBatch(
            inputs=seq.batch(rows, ends, self.max_len),
            row=row,
            col=np.concatenate(cols),
            label=self.pos.item_idx[label_flat],
            owner=rows[row],
            src_flat=src_flat,
            label_flat=label_flat,
        )


class CountMinSketch(nn.Module):
    """Streaming item-frequency estimate (never under-counts); state lives in buffers."""

    _PRIME = 2_147_483_647  # 2^31 - 1: a*x + b stays inside int64 for x < 2^31

    def __init__(self, width: int = 1 << 16, depth: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.width = width
        self.register_buffer("a", torch.randint(1, self._PRIME, (depth, 1), generator=g))
        self.register_buffer("b", torch.randint(0, self._PRIME, (depth, 1), generator=g))
        self.register_buffer("table", torch.zeros(depth, width, dtype=torch.float64))
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))

    def _buckets(self, items: Tensor) -> Tensor:
        x = items.reshape(1, -1).to(torch.int64) % self._PRIME
        return ((self.a * x + self.b) % self._PRIME) % self.width  # [depth, n]

    @torch.no_grad()
    def update(self, items: Tensor) -> None:
        idx = self._buckets(items)
        self.table.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        self.total += items.numel()

    @torch.no_grad()
    def frequency(self, items: Tensor) -> Tensor:
        """Estimated share of all updates that were each item (float32, shape of items)."""
        idx = self._buckets(items)
        counts = self.table.gather(1, idx).min(dim=0).values
        return (counts / self.total.clamp_min(1.0)).to(torch.float32).reshape(items.shape)


class DenseAllActionLoss(nn.Module):
    """Sampled softmax over [positive | in-batch | random] with learned temperature and logQ.

    `negatives`: "mixed" (in-batch + random), "in_batch" (random ones ignored)
    or "random" (no in-batch ones); `logq=False` drops the -log Q correction.
    "full" scores every item of the catalogue (an exact softmax, SASRec's
    loss): no sampling, so no logQ; affordable for catalogues of up to tens
    of thousands of items, not for Pinterest's billions (`full_softmax`).
    """

    def __init__(self, num_items: int, init_temperature: float = 0.07, min_temperature: float = 0.01,
                 max_in_batch: int = 5000, cms_width: int = 1 << 16, cms_depth: int = 4, seed: int = 0,
                 negatives: str = "mixed", logq: bool = True) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives
        self.logq = logq
        self.num_items = num_items
        self.min_temperature = min_temperature
        self.max_in_batch = max_in_batch
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(init_temperature))))
        self.sketch = CountMinSketch(cms_width, cms_depth, seed)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp().clamp_min(self.min_temperature)

    def full_softmax(self, user: Tensor, label: Tensor, all_items: Tensor,
                     num_rows: int | None = None) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of each row's label against every item: user [R, D],
        label [R] (1-based item indices), all_items [num_items + 1, D] (row 0 = OOV,
        never a candidate). `num_rows` as in `forward` for data-parallel shares."""
        logits = (user @ all_items[1:].T) / self.temperature
        target = label - 1
        if num_rows is None:
            loss = F.cross_entropy(logits, target)
        else:
            loss = F.cross_entropy(logits, target, reduction="sum") / num_rows
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == target).float().mean().item() if user.size(0) else 0.0
        return loss, {"temperature": float(self.temperature.detach()), "batch_acc": acc,
                      "num_candidates": float(logits.size(1) - 1), "rows": float(user.size(0))}

    def forward(self, user: Tensor, label: Tensor, label_emb: Tensor, owner: Tensor,
                neg: Tensor, neg_emb: Tensor, *, batch_label: Tensor | None = None,
                batch_label_emb: Tensor | None = None, batch_owner: Tensor | None = None,
                num_rows: int | None = None) -> tuple[Tensor, dict[str, float]]:
        """user/label_emb [R, D] unit-norm, label/owner [R], neg [N], neg_emb [N, D].

        Data-parallel ranks pass their own R rows plus the global batch: its
        labels, label embeddings (gathered from every rank) and owners as
        `batch_*` (the in-batch negatives and the sketch come from these, as
        in a single process), the same `neg` on every rank, and `num_rows` =
        the global row count. The loss is then this rank's rows' sum /
        num_rows: the ranks' losses add up to the single-process mean.
        """
        if batch_label is None or batch_label_emb is None or batch_owner is None:
            batch_label, batch_label_emb, batch_owner = label, label_emb, owner
        self.sketch.update(batch_label)
        n_in = 0 if self.negatives == "random" else min(batch_label.size(0), self.max_in_batch)
        if self.negatives == "in_batch":
            neg, neg_emb = neg[:0], neg_emb[:0]
        inb, inb_emb, inb_owner = batch_label[:n_in], batch_label_emb[:n_in], batch_owner[:n_in]

        def log_q(items: Tensor) -> Tensor:
            if not self.logq:
                return torch.zeros(items.shape, device=items.device)
            # Expected appearances among the candidates: in-batch draws follow
            # the label distribution, random draws are uniform over the catalogue.
            expected = n_in * self.sketch.frequency(items) + neg.size(0) / self.num_items
            return torch.log(expected.clamp_min(1e-12))

        tau = self.temperature
        pos_logit = (user * label_emb).sum(-1, keepdim=True) / tau - log_q(label).unsqueeze(1)
        inb_logit = user @ inb_emb.T / tau - log_q(inb).unsqueeze(0)
        neg_logit = user @ neg_emb.T / tau - log_q(neg).unsqueeze(0)
        # Mask the user's own positives and accidental hits of the label item.
        inb_mask = (owner.unsqueeze(1) == inb_owner.unsqueeze(0)) | (label.unsqueeze(1) == inb.unsqueeze(0))
        neg_mask = label.unsqueeze(1) == neg.unsqueeze(0)
        logits = torch.cat(
            [pos_logit, inb_logit.masked_fill(inb_mask, -1e9), neg_logit.masked_fill(neg_mask, -1e9)], dim=1
        )
        target = torch.zeros(user.size(0), dtype=torch.long, device=user.device)
        if num_rows is None:
            loss = F.cross_entropy(logits, target)
        else:
            loss = F.cross_entropy(logits, target, reduction="sum") / num_rows
        with torch.no_grad():
            # A rank may hold no labelled rows this step; its accuracy then counts for nothing.
            acc = (logits.argmax(dim=1) == 0).float().mean().item() if user.size(0) else 0.0
        return loss, {"temperature": float(tau.detach()), "batch_acc": acc,
                      "num_candidates": float(logits.size(1) - 1), "rows": float(user.size(0))}
