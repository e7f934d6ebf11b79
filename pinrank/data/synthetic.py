"""Seeded synthetic action logs: a small world in which the papers' effects show.

The world (DESIGN.md section 3):

- Items have a topic, a Zipf popularity (which also sets a latent quality) and
  a content embedding = topic centroid + item-specific noise.
- Users hold a few long-term interests: topic logits that random-walk slowly
  from day to day, plus a private "taste" direction in embedding space.
- Users come in sessions at plausible times of day (a daily rhythm, busier
  weekends). Each session has an intent topic, usually one of the user's
  interests but sometimes a topic they never showed before. Only the
  session's own actions reveal it, which is what the realtime sequence is for.
- Each request shows K items mixed from the user's interests, the session
  intent (more so on search), the topic of the last engaged item (on
  related), global popularity and uniform random items. Engagement follows an
  affinity that adds long-term interest, session intent, the topics engaged
  so far in the session, item quality and taste; hides fall on low-affinity
  (off-interest) items.

Everything random comes from one `numpy.random.Generator(seed)`, so a config
and seed give the same dataset byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY, MS_PER_HOUR
from pinrank.data.dataset import Dataset, save_dataset
from pinrank.metrics import auc

MS_PER_S = 1000
#: 2026-01-05 00:00 UTC, a Monday.
DEFAULT_START_MS = 1_767_571_200_000
#: Every action happens within this long after the request that showed it.
ACTION_WINDOW_MS = 65_000

# Candidate sources (SyntheticTruth.imp_source).
SRC_INTEREST, SRC_INTENT, SRC_RELATED, SRC_POPULAR, SRC_RANDOM = range(5)
SOURCE_NAMES = ("interest", "intent", "related", "popular", "random")

# Source mix per surface, columns in SRC_* order. Search is intent-driven,
# related follows the last engaged item, profile shows the user's interests.
_SURFACE_MIX = {
    "home": (0.45, 0.15, 0.00, 0.20, 0.20),
    "search": (0.15, 0.55, 0.00, 0.10, 0.20),
    "related": (0.20, 0.15, 0.35, 0.10, 0.20),
    "profile": (0.60, 0.10, 0.00, 0.10, 0.20),
}
# Surface of a session's first request (nothing engaged yet, so no related)
# and of later ones, in schema.SURFACES order.
_FIRST_SURFACE_P = (0.60, 0.25, 0.00, 0.15)
_LATER_SURFACE_P = (0.35, 0.20, 0.35, 0.10)
# Relative session rate by hour of day (UTC) and by weekday (Monday first).
_HOUR_RHYTHM = np.array(
    [0.30, 0.15, 0.10, 0.08, 0.08, 0.15, 0.40, 0.80, 1.00, 0.80, 0.70, 0.80,
     1.00, 0.90, 0.70, 0.70, 0.80, 0.90, 1.10, 1.30, 1.50, 1.50, 1.20, 0.70]
)
_WEEKDAY_RHYTHM = np.array([1.0, 0.95, 0.95, 1.0, 1.05, 1.25, 1.3])


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and behaviour of the synthetic world. The defaults are the quick
    config: both models train on it in minutes on two CPU cores."""

    users: int = 2000
    items: int = 5000
    #: 50 topics and a Zipf exponent of 0.8 keep the global top-10 a weak
    #: answer for any one user (as on a real catalogue, where popularity
    #: alone retrieves little): with 20 topics and Zipf 1.0 even an oracle
    #: that knows each user's true interests beat popularity by only 1.8x.
    topics: int = 50
    days: int = 35
    #: The last `eval_days` days are the evaluation period (meta train_end_ms).
    eval_days: int = 7
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    #: Range of per-user session rates per day (drawn log-uniformly).
    sessions_per_day: tuple[float, float] = (0.08, 0.55)
    #: Requests per session, inclusive range.
    requests_per_session: tuple[int, int] = (1, 4)
    #: Items shown per request (K).
    items_per_request: int = 6
    #: Long-term interests per user, inclusive range.
    interests_per_user: tuple[int, int] = (2, 4)
    #: Zipf exponent of item popularity.
    zipf_exponent: float = 0.8
    #: Chance that a session's intent ignores the user's interests.
    explore_prob: float = 0.3
    #: Daily random-walk step of the interest logits.
    interest_drift: float = 0.15
    #: Item embedding = topic centroid + this much unit-scale noise.
    embedding_noise: float = 0.6
    # Affinity weights: long-term interest, session intent, topics engaged so
    # far in the session, item quality, user taste; then the bias and noise.
    w_interest: float = 0.8
    w_intent: float = 1.5
    w_recent: float = 2.0
    w_quality: float = 0.4
    w_taste: float = 2.5
    affinity_bias: float = -2.8
    affinity_noise: float = 0.6

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig: {what}")

        need(self.users >= 1, f"users must be >= 1, got {self.users}")
        need(self.topics >= 2, f"topics must be >= 2, got {self.topics}")
        need(self.items >= self.topics, f"items ({self.items}) must be >= topics ({self.topics})")
        need(self.days >= 2, f"days must be >= 2, got {self.days}")
        need(0 < self.eval_days < self.days, f"eval_days must be in 1..days-1, got {self.eval_days}")
        need(1 <= self.items_per_request <= self.items // 2,
             f"items_per_request must be in 1..items/2, got {self.items_per_request}")
        lo, hi = self.sessions_per_day
        need(0 < lo <= hi, f"sessions_per_day must be 0 < lo <= hi, got {self.sessions_per_day}")
        lo, hi = self.requests_per_session
        need(1 <= lo <= hi, f"requests_per_session must be 1 <= lo <= hi, got {self.requests_per_session}")
        lo, hi = self.interests_per_user
        need(1 <= lo <= hi <= self.topics,
             f"interests_per_user must be 1 <= lo <= hi <= topics, got {self.interests_per_user}")
        need(0.0 <= self.explore_prob <= 1.0, f"explore_prob must be in [0, 1], got {self.explore_prob}")
        end = self.start_ms + self.days * MS_PER_DAY
        need(schema.MIN_TS_MS <= self.start_ms and end <= schema.MAX_TS_MS,
             f"start_ms must give timestamps in [{schema.MIN_TS_MS}, {schema.MAX_TS_MS}]")

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * MS_PER_DAY

    @property
    def train_end_ms(self) -> int:
        return self.start_ms + (self.days - self.eval_days) * MS_PER_DAY


QUICK = SyntheticConfig()


@dataclass
class SyntheticTruth:
    """The hidden state behind a generated dataset (for tests and analysis).

    Per-impression arrays are aligned with the returned Dataset's impressions.
    """

    theta: np.ndarray  # float32 [users, days, topics]: daily interest mixture
    interests: np.ndarray  # bool [users, topics]: the base long-term interests
    user_ids: np.ndarray  # int64 [users]: row i of theta is user_ids[i]
    session_user: np.ndarray  # int64 user id per session
    session_start_ms: np.ndarray
    session_intent: np.ndarray  # topic
    session_explore: np.ndarray  # bool: intent drawn ignoring interests
    imp_session: np.ndarray  # session index per impression
    imp_source: np.ndarray  # int8 SRC_*
    imp_request_pos: np.ndarray  # int8: request index within its session
    imp_interest: np.ndarray  # float32 log(theta * topics), the long-term term
    imp_intent_match: np.ndarray  # bool: item topic == session intent
    imp_affinity: np.ndarray  # float32, noise included


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of a row-stochastic matrix (inverse CDF)."""
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[:-1])[..., None] * cdf[..., -1:]
    return np.minimum((cdf < u).sum(axis=-1), probs.shape[-1] - 1)


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's group (groups contiguous)."""
    n = sorted_groups.shape[0]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return np.maximum.accumulate(np.where(first, np.arange(n), 0))


class _World:
    """Items, users and the samplers that draw from them."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        n, t, d = cfg.items, cfg.topics, schema.ITEM_EMB_DIM
        self.cfg = cfg
        # Items. Sparse ids so nothing downstream can mistake an id for an index.
        self.item_ids = np.sort(rng.choice(20 * n, size=n, replace=False)).astype(np.int64) + 1
        topic_sizes = rng.dirichlet(np.full(t, 3.0))
        self.item_topic = np.concatenate([np.arange(t), rng.choice(t, size=n - t, p=topic_sizes)])
        self.item_topic = rng.permutation(self.item_topic).astype(np.int64)
        ranks = rng.permutation(n)
        self.pop = 1.0 / (ranks + 1.0) ** cfg.zipf_exponent
        self.pop /= self.pop.sum()
        logpop = np.log(self.pop)
        self.quality = (logpop - logpop.mean()) / logpop.std()
        centroids = rng.standard_normal((t, d))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        noise = rng.standard_normal((n, d)) / np.sqrt(d)
        self.item_noise = noise / np.linalg.norm(noise, axis=1, keepdims=True)
        self.item_emb = (centroids[self.item_topic] + cfg.embedding_noise * self.item_noise).astype(np.float32)
        # Popularity-weighted sampling within one topic through one sorted key
        # array: topic k owns keys in (k, k + 1].
        self.by_topic = np.argsort(self.item_topic, kind="stable")
        topic_sorted = self.item_topic[self.by_topic]
        p = self.pop[self.by_topic]
        cum = np.cumsum(p)
        starts = np.searchsorted(topic_sorted, np.arange(t))
        ends = np.searchsorted(topic_sorted, np.arange(t), side="right")
        before = np.concatenate([[0.0], cum])[starts]
        total = cum[ends - 1] - before
        self.topic_keys = topic_sorted + (cum - before[topic_sorted]) / total[topic_sorted]
        self.topic_start, self.topic_end = starts, ends
        self.pop_cdf = np.cumsum(self.pop)

        # Users: base interests (weighted sampling without replacement by
        # random keys), drifting daily logits, taste and activity.
        u = cfg.users
        lo, hi = cfg.interests_per_user
        n_int = rng.integers(lo, hi + 1, size=u)
        keys = rng.random((u, t)) ** (1.0 / (topic_sizes * t + 0.5))
        rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
        self.interests = rank < n_int[:, None]
        strength = rng.uniform(2.5, 3.5, size=(u, t))
        base = rng.normal(0.0, 0.3, size=(u, t)) + np.where(self.interests, strength, 0.0)
        steps = rng.normal(0.0, cfg.interest_drift, size=(u, cfg.days, t))
        steps[:, 0] = 0.0
        logits = base[:, None, :] + np.cumsum(steps, axis=1)
        logits -= logits.max(axis=2, keepdims=True)
        theta = np.exp(logits)
        self.theta = (theta / theta.sum(axis=2, keepdims=True)).astype(np.float32)
        taste = rng.standard_normal((u, d))
        self.taste = taste / np.linalg.norm(taste, axis=1, keepdims=True)
        slo, shi = cfg.sessions_per_day
        self.rate = np.exp(rng.uniform(np.log(slo), np.log(shi), size=u))
        self.chronotype = np.rint(rng.normal(0.0, 1.5, size=u)).astype(np.int64)
        self.user_ids = np.arange(1, u + 1, dtype=np.int64)

    def items_in_topics(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.topic_keys, topics + rng.random(topics.shape), side="right")
        pos = np.clip(pos, self.topic_start[topics], self.topic_end[topics] - 1)
        return self.by_topic[pos]

    def popular_items(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        u = rng.random(shape) * self.pop_cdf[-1]
        return np.minimum(np.searchsorted(self.pop_cdf, u, side="right"), self.cfg.items - 1)


def _sessions(cfg: SyntheticConfig, w: _World, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Session users, start offsets (ms from start), intents and request counts."""
    weekday0 = (cfg.start_ms // MS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
    day_factor = _WEEKDAY_RHYTHM[(weekday0 + np.arange(cfg.days)) % 7]
    counts = rng.poisson(w.rate[:, None] * day_factor[None, :])  # [users, days]
    user_idx = np.repeat(np.repeat(np.arange(cfg.users), cfg.days), counts.ravel())
    day = np.repeat(np.tile(np.arange(cfg.days), cfg.users), counts.ravel())
    n = user_idx.shape[0]
    hour = (_categorical(rng, np.broadcast_to(_HOUR_RHYTHM, (n, 24))) + w.chronotype[user_idx]) % 24
    start = day * MS_PER_DAY + hour * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, size=n)
    lo, hi = cfg.requests_per_session
    n_req = rng.integers(lo, hi + 1, size=n)
    # Gaps between a session's requests exceed ACTION_WINDOW_MS, so each
    # request sees every action of the one before.
    gaps = ACTION_WINDOW_MS + 10 * MS_PER_S + rng.exponential(150 * MS_PER_S, size=(n, hi)).astype(np.int64)
    gaps[:, 0] = 0
    req_offset = np.cumsum(gaps, axis=1)
    duration = req_offset[np.arange(n), n_req - 1] + ACTION_WINDOW_MS

    # Push overlapping sessions of one user later (>= 10 min apart):
    # s'_k = max(s_k, s'_{k-1} + g_{k-1}) is a per-user cummax of s_k - C_k,
    # C_k the exclusive per-user cumsum of g.
    order = np.lexsort((start, user_idx))
    user_idx, start, n_req, req_offset, duration = (
        a[order] for a in (user_idx, start, n_req, req_offset, duration)
    )
    g = duration + 10 * 60 * MS_PER_S
    first = _group_starts(user_idx)
    csum = np.concatenate([[0], np.cumsum(g)])
    c = csum[:-1] - csum[first]
    x = start - c
    big = int(np.abs(x).max() + 1) * 2 if n else 1
    shifted = np.maximum.accumulate(x + user_idx * big) - user_idx * big
    start = shifted + c
    keep = start + duration <= cfg.days * MS_PER_DAY
    user_idx, start, n_req, req_offset = (a[keep] for a in (user_idx, start, n_req, req_offset))
    n = user_idx.shape[0]

    day = start // MS_PER_DAY
    theta = w.theta[user_idx, day]
    explore = rng.random(n) < cfg.explore_prob
    intent = np.where(explore, rng.integers(0, cfg.topics, size=n), _categorical(rng, theta))
    return {"user_idx": user_idx, "start": start, "day": day, "n_req": n_req,
            "req_offset": req_offset, "intent": intent, "explore": explore}


def _outcomes(rng: np.random.Generator, a: np.ndarray, a_hide: np.ndarray) -> dict[str, np.ndarray]:
    """Per-impression engagement given affinity (closeup leads to click/save).

    Hides follow `a_hide`, the affinity without item quality: people hide
    what is off their interests, not what is merely unpopular.
    """
    closeup = rng.random(a.shape) < _sigmoid(a + 0.3)
    click = rng.random(a.shape) < np.where(closeup, _sigmoid(a - 0.5), _sigmoid(a - 2.2))
    save = rng.random(a.shape) < np.where(closeup, _sigmoid(a - 1.0), _sigmoid(a - 2.8))
    positive = closeup | click | save
    hide = ~positive & (rng.random(a.shape) < _sigmoid(-a_hide - 5.4))
    return {"closeup": closeup, "click": click, "save": save, "hide": hide}


def _dedupe(rng: np.random.Generator, cand: np.ndarray, source: np.ndarray, n_items: int) -> None:
    """Replace repeated items within a request by uniform random ones, in place."""
    for _ in range(100):
        order = np.argsort(cand, axis=1, kind="stable")
        s = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros(s.shape, dtype=bool)
        dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        if not dup_sorted.any():
            return
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        cand[dup] = rng.integers(0, n_items, size=int(dup.sum()))
        source[dup] = SRC_RANDOM
    raise RuntimeError("could not draw distinct items per request")  # K <= items/2 makes this unreachable


def _action_times(rng: np.random.Generator, a: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Offsets (ms after the request) and durations. Every offset stays under
    ACTION_WINDOW_MS whatever K, so the next request sees all of them."""
    shape = a.shape
    spacing = min(3000, 30_000 // shape[1])  # item j is looked at after j * spacing
    view = 1000 + np.arange(shape[1])[None, :] * spacing + rng.integers(0, 1000, size=shape)
    cu_ts = view + rng.integers(300, 2000, size=shape)
    cu_dur = np.minimum(5000 * np.exp(0.3 * a + rng.normal(0, 0.6, size=shape)), 30_000).astype(np.int64) + 200
    after_cu = cu_ts + cu_dur
    direct = view + rng.integers(300, 2000, size=shape)
    click_ts = np.where(out["closeup"], after_cu + 100, direct)
    click_dur = np.minimum(15_000 * np.exp(0.4 * a + rng.normal(0, 0.6, size=shape)), 600_000)
    save_ts = np.where(out["closeup"], cu_ts + (cu_dur * rng.uniform(0.2, 0.9, size=shape)).astype(np.int64),
                       direct + 200)
    hide_ts = view + rng.integers(500, 3000, size=shape)
    return {"closeup": (cu_ts, cu_dur), "click": (click_ts, click_dur.astype(np.int64) + 500),
            "save": (save_ts, None), "hide": (hide_ts, None)}


def _steps(cfg: SyntheticConfig) -> int:
    return 3 + cfg.requests_per_session[1]


def _simulate(cfg: SyntheticConfig, bar: tqdm) -> tuple[Dataset, SyntheticTruth]:
    rng = np.random.default_rng(cfg.seed)
    k = cfg.items_per_request
    r_max = cfg.requests_per_session[1]

    w = _World(cfg, rng)
    bar.update(1)
    ses = _sessions(cfg, w, rng)
    n_ses = ses["user_idx"].shape[0]
    if n_ses == 0:
        raise ValueError("SyntheticConfig: the world has no sessions; raise users, days or sessions_per_day")
    bar.update(1)

    mix = np.array([_SURFACE_MIX[s] for s in schema.SURFACES])
    recent = np.zeros((n_ses, cfg.topics))  # topics engaged so far in each session
    last_topic = ses["intent"].copy()  # what "related" follows before any engagement
    imp_parts: list[dict[str, np.ndarray]] = []
    act_parts: list[dict[str, np.ndarray]] = []
    for r in range(r_max):
        sid = np.flatnonzero(ses["n_req"] > r)
        m = sid.shape[0]
        uidx, intent = ses["user_idx"][sid], ses["intent"][sid]
        theta = w.theta[uidx, ses["day"][sid]]
        req_ts = cfg.start_ms + ses["start"][sid] + ses["req_offset"][sid, r]
        surface = _categorical(rng, np.broadcast_to(_FIRST_SURFACE_P if r == 0 else _LATER_SURFACE_P, (m, 4)))

        source = _categorical(rng, mix[surface][:, None, :].repeat(k, axis=1))
        topic = np.where(source == SRC_INTENT, intent[:, None], 0)
        topic = np.where(source == SRC_RELATED, last_topic[sid][:, None], topic)
        interest_topic = _categorical(rng, theta[:, None, :].repeat(k, axis=1))
        topic = np.where(source == SRC_INTEREST, interest_topic, topic)
        cand = w.items_in_topics(rng, topic)
        cand = np.where(source == SRC_POPULAR, w.popular_items(rng, (m, k)), cand)
        cand = np.where(source == SRC_RANDOM, rng.integers(0, cfg.items, size=(m, k)), cand)
        _dedupe(rng, cand, source, cfg.items)

        it = w.item_topic[cand]
        lt = np.clip(np.log(np.take_along_axis(theta, it, axis=1) * cfg.topics), -2.5, 2.5)
        match = it == intent[:, None]
        rec = np.take_along_axis(recent[sid], it, axis=1) / (recent[sid].sum(axis=1, keepdims=True) + 1.0)
        taste = np.einsum("md,mkd->mk", w.taste[uidx], w.item_noise[cand])
        a = (cfg.affinity_bias + cfg.w_interest * lt + cfg.w_intent * match + cfg.w_recent * rec
             + cfg.w_quality * w.quality[cand] + cfg.w_taste * taste
             + rng.normal(0.0, cfg.affinity_noise, size=(m, k)))
        out = _outcomes(rng, a, a - cfg.w_quality * w.quality[cand])
        times = _action_times(rng, a, out)

        engaged = out["closeup"] | out["click"] | out["save"]
        flat = (np.arange(m)[:, None] * cfg.topics + it)[engaged]
        recent[sid] += np.bincount(flat, minlength=m * cfg.topics).reshape(m, cfg.topics)
        has = engaged.any(axis=1)
        last_pos = k - 1 - np.argmax(engaged[:, ::-1], axis=1)  # later position = later in time
        last_topic[sid[has]] = it[has, last_pos[has]]

        user = w.user_ids[uidx]
        imp_parts.append({
            "user_id": np.repeat(user, k), "item": cand.ravel(), "ts_ms": np.repeat(req_ts, k),
            "surface": np.repeat(surface + 1, k), "session": np.repeat(sid, k),
            "pos": np.full(m * k, r, dtype=np.int8), "source": source.ravel().astype(np.int8),
            "interest": lt.ravel().astype(np.float32), "match": match.ravel(),
            "affinity": a.ravel().astype(np.float32),
            "labels": np.stack([out[h].ravel() for h in schema.HEADS], axis=1).astype(np.int8),
        })
        for name, (off, dur) in times.items():
            mask = out[name]
            act_parts.append({
                "user_id": np.broadcast_to(user[:, None], (m, k))[mask],
                "item": cand[mask],
                "action": np.full(int(mask.sum()), schema.ACTION_IDS[name], dtype=np.int64),
                "surface": np.broadcast_to(surface[:, None] + 1, (m, k))[mask],
                "ts_ms": (req_ts[:, None] + off)[mask],
                "duration_ms": dur[mask] if dur is not None else np.full(int(mask.sum()), -1, dtype=np.int64),
            })
        bar.update(1)

    imp = {key: np.concatenate([p[key] for p in imp_parts]) for key in imp_parts[0]}
    act = {key: np.concatenate([p[key] for p in act_parts]) for key in act_parts[0]}
    # Request ids in time order; rows sorted as save_dataset writes them, so
    # SyntheticTruth stays aligned with the dataset on disk.
    req_key = imp["session"].astype(np.int64) * (r_max + 1) + imp["pos"]
    uniq_req, req_inv = np.unique(req_key, return_inverse=True)
    first_row = np.zeros(uniq_req.shape[0], dtype=np.int64)
    first_row[req_inv[::-1]] = np.arange(req_key.shape[0])[::-1]
    chrono = np.lexsort((imp["user_id"][first_row], imp["ts_ms"][first_row]))
    req_id = np.empty_like(chrono)
    req_id[chrono] = np.arange(1, chrono.shape[0] + 1)
    imp["request_id"] = req_id[req_inv]
    imp["item_id"] = w.item_ids[imp.pop("item")]
    order = np.lexsort((imp["item_id"], imp["request_id"]))
    imp = {key: v[order] for key, v in imp.items()}
    act["item_id"] = w.item_ids[act.pop("item")]
    order = np.lexsort((act["item_id"], act["ts_ms"], act["user_id"]))
    act = {key: v[order] for key, v in act.items()}

    action_counts = {name: int((act["action"] == schema.ACTION_IDS[name]).sum()) for name in schema.ACTIONS}
    meta = {
        "source": "synthetic",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "start_ms": cfg.start_ms,
        "end_ms": cfg.end_ms,
        "train_end_ms": cfg.train_end_ms,
        "num_topics": cfg.topics,
        "counts": {
            "users": cfg.users,
            "active_users": int(np.unique(act["user_id"]).shape[0]),
            "items": cfg.items,
            "sessions": int(n_ses),
            "requests": int(chrono.shape[0]),
            "impressions": int(imp["request_id"].shape[0]),
            "actions": int(act["user_id"].shape[0]),
            "actions_by_type": {k_: v for k_, v in action_counts.items() if v},
            "train_impressions": int((imp["ts_ms"] < cfg.train_end_ms).sum()),
            "train_actions": int((act["ts_ms"] < cfg.train_end_ms).sum()),
        },
    }
    ds = Dataset(
        actions={key: act[key] for key in ("user_id", "item_id", "action", "surface", "ts_ms", "duration_ms")},
        item_ids=w.item_ids,
        item_topic=w.item_topic.astype(np.int32),
        item_emb=w.item_emb,
        meta=meta,
        impressions={key: imp[key] for key in ("request_id", "user_id", "item_id", "ts_ms", "surface", "labels")},
    )
    truth = SyntheticTruth(
        theta=w.theta, interests=w.interests, user_ids=w.user_ids,
        session_user=w.user_ids[ses["user_idx"]], session_start_ms=cfg.start_ms + ses["start"],
        session_intent=ses["intent"], session_explore=ses["explore"],
        imp_session=imp["session"], imp_source=imp["source"], imp_request_pos=imp["pos"],
        imp_interest=imp["interest"], imp_intent_match=imp["match"], imp_affinity=imp["affinity"],
    )
    bar.update(1)
    return ds, truth


def simulate(config: SyntheticConfig = QUICK, progress: bool = False) -> tuple[Dataset, SyntheticTruth]:
    """Generate the dataset in memory, with the hidden state that produced it."""
    with tqdm(total=_steps(config), desc="synthetic", unit="step", disable=not progress) as bar:
        return _simulate(config, bar)


def config_from_meta(meta: dict[str, Any]) -> SyntheticConfig | None:
    """The SyntheticConfig a dataset was generated from, or None if it was not synthetic."""
    if meta.get("source") != "synthetic" or "config" not in meta:
        return None
    return SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})


def generate(config: SyntheticConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Simulate `config` and write it with save_dataset; returns the directory."""
    with tqdm(total=_steps(config) + 1, desc="synthetic", unit="step", disable=not progress) as bar:
        ds, _ = _simulate(config, bar)
        bar.set_postfix_str("writing")
        path = save_dataset(ds, out_dir)
        bar.update(1)
    return path


# --- signal checks ----------------------------------------------------------


def signal_stats(ds: Dataset, truth: SyntheticTruth | None = None, window_ms: int = MS_PER_HOUR) -> dict[str, Any]:
    """How much each signal says about eval-period engagement (model-free).

    Scores eval impressions three ways, each fit on train-period positive
    actions only: item popularity, the user's topic history (Laplace
    smoothed), and history plus the topics of the user's positive actions
    in the `window_ms` before the request (the realtime sequence). Reports
    ROC AUCs for "any positive head" and for hide, plus popularity skew and,
    given `truth`, rates split by the hidden interest / intent.
    """
    if ds.impressions is None:
        raise ValueError("signal_stats needs impressions")
    a, im = ds.actions, ds.impressions
    n_topics = int(ds.item_topic.max()) + 1
    a_idx = np.searchsorted(ds.item_ids, a["item_id"])
    i_idx = np.searchsorted(ds.item_ids, im["item_id"])
    a_topic, i_topic = ds.item_topic[a_idx].astype(np.int64), ds.item_topic[i_idx].astype(np.int64)
    users, inv = np.unique(np.concatenate([a["user_id"], im["user_id"]]), return_inverse=True)
    a_user, i_user = inv[: a_idx.size], inv[a_idx.size:]
    positive = np.isin(a["action"], [schema.ACTION_IDS[x] for x in schema.POSITIVE_ACTIONS])
    train = positive & (a["ts_ms"] < ds.train_end_ms)

    item_cnt = np.bincount(a_idx[train], minlength=ds.num_items)
    ut = np.bincount(a_user[train] * n_topics + a_topic[train], minlength=users.size * n_topics)
    ut = ut.reshape(users.size, n_topics).astype(np.float64)

    e = im["ts_ms"] >= ds.train_end_ms
    eu, et, ets = i_user[e], i_topic[e], im["ts_ms"][e]
    pop = np.log1p(item_cnt[i_idx[e]])
    hist = np.log((ut[eu, et] + 1.0) / (ut[eu].sum(axis=1) + n_topics))
    # Positive actions of the same user in [ts - window, ts), per topic, from
    # cumulative topic counts over the (user, ts)-sorted log.
    t0 = int(min(a["ts_ms"].min(), im["ts_ms"].min())) - window_ms
    span = int(max(a["ts_ms"].max(), im["ts_ms"].max())) - t0 + 1
    key = a_user * span + (a["ts_ms"] - t0)
    onehot = np.zeros((a_idx.size + 1, n_topics), dtype=np.int32)
    onehot[np.flatnonzero(positive) + 1, a_topic[positive]] = 1
    cum = np.cumsum(onehot, axis=0)
    hi = np.searchsorted(key, eu * span + (ets - t0), side="left")
    lo = np.searchsorted(key, eu * span + (ets - window_ms - t0), side="left")
    recent = cum[hi, et] - cum[lo, et]
    realtime = hist + np.log1p(recent) * 2.0

    labels = im["labels"][e]
    heads = {h: j for j, h in enumerate(schema.HEADS)}
    engaged = labels[:, [heads["save"], heads["click"], heads["closeup"]]].any(axis=1)
    hide = labels[:, heads["hide"]].astype(bool)
    shown = np.sort(np.bincount(i_idx, minlength=ds.num_items))[::-1]
    top = max(1, ds.num_items // 100)
    out: dict[str, Any] = {
        "eval_impressions": int(e.sum()),
        "engage_rate": float(engaged.mean()) if engaged.size else float("nan"),
        "hide_rate": float(hide.mean()) if hide.size else float("nan"),
        "auc_engage": {
            "popularity": auc(engaged, pop),
            "history": auc(engaged, hist),
            "history+realtime": auc(engaged, realtime),
        },
        "auc_hide": {"popularity": auc(hide, -pop), "history": auc(hide, -hist),
                     "history+realtime": auc(hide, -realtime)},
        "top1pct_item_impression_share": float(shown[:top].sum() / max(1, shown.sum())),
    }
    if truth is not None:
        pos_all = im["labels"][:, [heads["save"], heads["click"], heads["closeup"]]].any(axis=1)
        hide_all = im["labels"][:, heads["hide"]].astype(bool)
        on = (truth.imp_interest > 0.5) & ~truth.imp_intent_match
        off = (truth.imp_interest < -0.5) & ~truth.imp_intent_match
        intent, other = truth.imp_intent_match, ~truth.imp_intent_match
        explore = truth.session_explore[truth.imp_session] & intent
        out["truth"] = {
            "hide_rate_on_interest": float(hide_all[on].mean()),
            "hide_rate_off_interest": float(hide_all[off].mean()),
            "engage_rate_on_interest": float(pos_all[on].mean()),
            "engage_rate_off_interest": float(pos_all[off].mean()),
            "engage_rate_intent": float(pos_all[intent].mean()),
            "engage_rate_not_intent": float(pos_all[other].mean()),
            "engage_rate_explore_intent_by_request": [
                float(pos_all[explore & (truth.imp_request_pos == r)].mean())
                for r in range(int(truth.imp_request_pos.max()) + 1)
            ],
        }
    return out
