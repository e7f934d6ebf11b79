"""Ranker data, metrics, loss, training loop and CLI on small in-memory data."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import pinrank.embed.batch
import pinrank.train.cli_ranker
import pinrank.train.pinnerformer as pf_train  # a module: a test patches make_sampler on it
from pinrank.backend import schema
from pinrank.backend.featurize import context_features, featurize_history
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_DAY, MS_PER_HOUR
from pinrank.backend.vocab import ItemVocab
from pinrank.data.dataset import Dataset, save_dataset
from pinrank.data.importers import build_movielens
from pinrank.models.checkpoints import load_checkpoint
from pinrank.models.pinnerformer import PinnerFormerConfig
from pinrank.models.ranker import RankerConfig, load_serving_module
from pinrank.train.cli_ranker import train_ranker as train_ranker_cli
from pinrank.train.pinnerformer import (
    PinnerFormerTrainConfig,
    pinnerformer_train_cut_ms,
    train_pinnerformer,
)
from pinrank.train.ranker import (
    TrainConfig,
    _batch_for_step,
    evaluate,
    hit_at_k,
    label_weight_matrix,
    random_hit_at_k,
    request_batches,
    train_ranker,
    weighted_bce,
)
from pinrank.train.ranker_data import build_ranker_data, impression_positions
from pinrank.train.training_cut import (
    check_pinnerformer_cut,
    ranker_periods,
    ranker_train_start,
    resolve_cut,
)

T0 = 1_767_571_200_000  # 2026-01-05 00:00 UTC
TOPICS = 4
#: ../shared/data relative to the repo root (read-only real datasets; absent on some machines).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def structured_dataset(users: int = 60, requests_per_user: int = 8, days: int = 10, seed: int = 0) -> Dataset:
    """A world where only the realtime sequence reveals what a request wants.

    Each request has an intent topic; the user acts on 3-4 items of that topic
    in the minutes before it, and its candidates are saved/clicked/closed-up
    when on-intent and hidden when on the 'opposite' topic.
    """
    rng = np.random.default_rng(seed)
    n_items = 40
    item_ids = np.arange(100, 100 + n_items, dtype=np.int64) * 7  # raw ids != indices
    topic = np.arange(n_items) % TOPICS
    centroids = rng.normal(size=(TOPICS, schema.ITEM_EMB_DIM)) * 1.5
    item_emb = (centroids[topic] + 0.3 * rng.normal(size=(n_items, schema.ITEM_EMB_DIM))).astype(np.float32)
    acts: dict[str, list] = {k: [] for k in ("user_id", "item_id", "action", "surface", "ts_ms")}
    imps: dict[str, list] = {k: [] for k in ("request_id", "user_id", "item_id", "ts_ms", "surface", "labels")}
    rid = 0
    for u in range(users):
        times = np.sort(rng.uniform(0.5, days, size=requests_per_user)) * MS_PER_DAY
        for t in times.astype(np.int64) + T0:
            intent = rng.integers(TOPICS)
            on = np.flatnonzero(topic == intent)
            k = rng.integers(3, 5)
            for j in range(k):
                acts["user_id"].append(u)
                acts["item_id"].append(item_ids[rng.choice(on)])
                acts["action"].append(rng.choice([1, 2, 3]))
                acts["surface"].append(rng.integers(1, schema.NUM_SURFACE_IDS))
                acts["ts_ms"].append(int(t) - (k - j) * 60_000)
            # a tie in time: two actions at the same ms
            acts["user_id"] += [u, u]
            acts["item_id"] += [item_ids[rng.integers(n_items)], item_ids[rng.integers(n_items)]]
            acts["action"] += [2, 4]
            acts["surface"] += [1, 2]
            acts["ts_ms"] += [int(t) - 3 * MS_PER_HOUR, int(t) - 3 * MS_PER_HOUR]
            for c in rng.choice(n_items, size=6, replace=False):
                good = topic[c] == intent
                bad = topic[c] == (intent + 2) % TOPICS
                imps["request_id"].append(rid)
                imps["user_id"].append(u)
                imps["item_id"].append(item_ids[c])
                imps["ts_ms"].append(int(t))
                imps["surface"].append(1)
                labels = [good and rng.random() < 0.7, good, good or rng.random() < 0.1, bad and rng.random() < 0.6]
                imps["labels"].append(labels)
            rid += 1
    a = {k: np.asarray(v, dtype=np.int64) for k, v in acts.items()}
    order = np.lexsort((a["ts_ms"], a["user_id"]))
    actions = {k: v[order] for k, v in a.items()}
    actions["duration_ms"] = np.full(order.size, -1, dtype=np.int64)
    impressions = {k: np.asarray(v, dtype=np.int64) for k, v in imps.items() if k != "labels"}
    impressions["labels"] = np.asarray(imps["labels"], dtype=np.int8)
    meta = {"source": "test", "start_ms": T0, "end_ms": T0 + days * MS_PER_DAY,
            "train_end_ms": T0 + int(0.75 * days) * MS_PER_DAY}
    return Dataset(actions, item_ids, topic.astype(np.int32), item_emb, meta, impressions)


def random_snapshot(user_ids, as_of_ms: int, seed: int) -> UserSnapshot:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(user_ids), schema.USER_EMB_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cold = np.full(schema.USER_EMB_DIM, float(seed), np.float32)
    return UserSnapshot(np.asarray(user_ids, np.int64), emb, cold, {"as_of_ms": as_of_ms})


PF_MODEL = PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=16, item_hidden=32)
PF_TRAIN = PinnerFormerTrainConfig(steps=2, batch_size=8, positions_per_seq=4, num_random_negatives=32,
                                   warmup_steps=1, log_every=1, checkpoint_every=1000)


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return structured_dataset()


# --- data ----------------------------------------------------------------------


def test_featurization_equals_serving_featurize(ds: Dataset):
    snaps = [random_snapshot(np.arange(0, 60, 2), T0 + 2 * MS_PER_DAY, 1),
             random_snapshot(np.arange(30), T0 + 5 * MS_PER_DAY, 2)]
    data = build_ranker_data(ds, snaps)
    vocab = ItemVocab(ds.item_ids)
    a = ds.actions
    rng = np.random.default_rng(0)
    for r in rng.choice(data.num_requests, size=25, replace=False):
        user, ts = data.user_id[r], data.ts_ms[r]
        rows = np.flatnonzero((a["user_id"] == user) & (a["ts_ms"] < ts))
        want = featurize_history(vocab.lookup(a["item_id"][rows]), a["action"][rows], a["surface"][rows],
                                 a["ts_ms"][rows], int(ts))
        for key, value in want.items():
            np.testing.assert_array_equal(getattr(data, key)[r], value, err_msg=key)
        assert data.history_len[r] == rows.size
        day = ts // MS_PER_DAY * MS_PER_DAY
        snap = None if day < T0 + 2 * MS_PER_DAY else snaps[0] if day < T0 + 5 * MS_PER_DAY else snaps[1]
        if snap is None:  # before the first snapshot: everyone is cold
            np.testing.assert_array_equal(data.user_emb[r], snaps[0].cold_start)
            assert not data.user_known[r]
        else:
            emb, known = snap.lookup(np.asarray([user]))
            np.testing.assert_array_equal(data.user_emb[r], emb[0])
            assert data.user_known[r] == known[0]
        np.testing.assert_array_equal(data.context[r], context_features(int(ts), rows.size, bool(data.user_known[r])))
        imp = np.flatnonzero(ds.impressions["request_id"] == data.request_id[r])
        got = slice(data.offsets[r], data.offsets[r + 1])
        np.testing.assert_array_equal(np.sort(data.cand_idx[got]),
                                      np.sort(vocab.lookup(ds.impressions["item_id"][imp])))
    assert data.user_known.any() and not data.user_known.all()


def test_no_snapshots_means_zero_unknown_and_split_is_by_time(ds: Dataset):
    data = build_ranker_data(ds, None)
    assert data.num_impressions == ds.impressions["item_id"].size
    assert not data.user_emb.any() and not data.user_known.any()
    train, ev = data.split(ds.train_end_ms)
    assert train.num_requests + ev.num_requests == data.num_requests
    assert train.ts_ms.max() < ds.train_end_ms <= ev.ts_ms.min()
    assert train.num_impressions + ev.num_impressions == data.num_impressions
    np.testing.assert_array_equal(np.diff(ev.offsets), np.bincount(ev.req_index))


def test_impression_positions_and_batches_cover_each_request_once():
    offsets = np.array([0, 2, 2, 5, 6])
    np.testing.assert_array_equal(impression_positions(offsets, np.array([2, 0, 1])), [2, 3, 4, 0, 1])
    counts = np.random.default_rng(0).integers(1, 9, size=200)
    batches = request_batches(counts, 50, seed=3, epoch=1)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(200))
    sizes = [counts[b].sum() for b in batches]
    # cut where the running total crosses each multiple of 50: off by < one request
    assert all(abs(int(n) - 50) < counts.max() for n in sizes[:-1])
    assert [b.tolist() for b in batches] == [b.tolist() for b in request_batches(counts, 50, seed=3, epoch=1)]


# --- metrics and loss ----------------------------------------------------------


def test_hit_at_3_hand_examples():
    req = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    y = np.array([0, 0, 0, 0, 1,  1, 0, 0, 0, 0,  0, 0, 0, 0, 0])
    s = np.array([.9, .8, .7, .6, .5, .1, .9, .8, .7, .6, .9, .1, .1, .1, .1])
    # request 0: positive ranked 5th (miss); request 1: ranked 5th (miss); 2: no positive, not counted
    assert hit_at_k(req, y, s, k=3) == (0.0, 2)
    s2 = s.copy()
    s2[4] = 0.95  # request 0's positive now first
    assert hit_at_k(req, y, s2, k=3) == (0.5, 2)
    assert hit_at_k(req, y, s2, k=5) == (1.0, 2)
    # all-equal scores: the seeded shuffle decides, deterministically
    flat = np.zeros(15)
    assert hit_at_k(req, y, flat, seed=1) == hit_at_k(req, y, flat, seed=1)
    rates = [hit_at_k(req, y, flat, seed=sd)[0] for sd in range(200)]
    assert 0.45 < np.mean(rates) < 0.75  # random ranking: 3/5 = 0.6 per eligible request
    assert random_hit_at_k(req, y, k=3) == pytest.approx(0.6)
    assert random_hit_at_k(np.array([0] * 6), np.array([1, 0, 0, 0, 0, 0]), 3) == pytest.approx(0.5)


def test_label_weights_upweight_save_and_click_on_hide():
    m = label_weight_matrix()
    save, click, closeup, hide = (schema.HEADS.index(h) for h in ("save", "click", "closeup", "hide"))
    assert m[save, hide] > 0 and m[click, hide] > 0 and m[closeup, hide] == 0 and m[hide, hide] == 0
    logits = torch.zeros(2, schema.NUM_HEADS)
    hidden = torch.zeros(2, schema.NUM_HEADS)
    hidden[0, hide] = 1.0
    per_row = [weighted_bce(logits[i:i + 1], hidden[i:i + 1], torch.from_numpy(m)).item() for i in range(2)]
    ln2 = math.log(2.0)
    assert per_row[1] == pytest.approx(4 * ln2)
    assert per_row[0] == pytest.approx((4 + m[save, hide] + m[click, hide]) * ln2)
    with pytest.raises(ValueError, match="unknown head"):
        label_weight_matrix({("repin", "hide"): 2.0})


# --- training ------------------------------------------------------------------


@pytest.mark.slow
def test_loss_decreases_and_model_beats_chance(ds: Dataset, tmp_path):
    train, ev = build_ranker_data(ds, None).split(ds.train_end_ms)
    cfg = TrainConfig(steps=120, batch_size=96, lr=3e-3, warmup_steps=10, log_every=10)
    res = train_ranker(train, ds.item_emb, RankerConfig(mode="fused", use_pinnerformer=False), cfg,
                       out=tmp_path / "r.pt", eval_data=ev, curve=tmp_path / "c.png", progress=False)
    loss = res.history["loss"]
    assert np.mean(loss[-3:]) < 0.8 * np.mean(loss[:2])
    assert res.history["step"] == list(range(10, 121, 10))  # the curve's x axis: steps, not point indices
    for head in ("save", "click", "hide"):
        assert res.metrics[head]["auc"] > 0.6, res.metrics
    assert res.metrics["click"]["hit@3"] > res.metrics["click"]["hit@3_random"]
    assert (tmp_path / "c.png").stat().st_size > 0
    ckpt = load_checkpoint(tmp_path / "r.pt", kind="ranker")
    assert ckpt["step"] == 120 and ckpt["config"]["num_items"] == ds.num_items and ckpt["extra"]["metrics"]
    again = evaluate(res.model, ev)
    assert again["save"]["auc"] == pytest.approx(res.metrics["save"]["auc"])


@pytest.mark.parametrize("mode", ["early", "fused"])
def test_resume_replays_the_same_run(ds: Dataset, tmp_path, mode: str):
    train, _ = build_ranker_data(ds, None).split(ds.train_end_ms)
    model_cfg = RankerConfig(mode=mode, use_pinnerformer=False)
    straight = train_ranker(train, ds.item_emb, model_cfg, TrainConfig(steps=4, batch_size=48, warmup_steps=2),
                            out=tmp_path / "a.pt", progress=False)
    train_ranker(train, ds.item_emb, model_cfg, TrainConfig(steps=2, batch_size=48, warmup_steps=2),
                 out=tmp_path / "b.pt", progress=False)
    # same run continued: steps=4 in the config it resumes with
    resumed = train_ranker(train, ds.item_emb, model_cfg, TrainConfig(steps=4, batch_size=48, warmup_steps=2),
                           out=tmp_path / "b.pt", resume=True, progress=False)
    assert resumed.step == 4
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="architecture"):
        train_ranker(train, ds.item_emb, RankerConfig(mode=mode, use_pinnerformer=True),
                     TrainConfig(steps=5), out=tmp_path / "b.pt", resume=True, progress=False)


# --- CLI -----------------------------------------------------------------------


def test_cli_trains_evaluates_and_resumes(ds: Dataset, tmp_path):
    data = save_dataset(ds, tmp_path / "data")
    out = tmp_path / "ranker.pt"
    runner = CliRunner()
    args = ["--data", str(data), "--no-pinnerformer", "--out", str(out), "--steps", "3", "--batch-size", "64",
            "--no-progress", "--curve", str(tmp_path / "curve.png")]
    res = runner.invoke(train_ranker_cli, args)
    assert res.exit_code == 0, res.output
    assert "HIT@3" in res.output and "save" in res.output
    assert (tmp_path / "ranker.metrics.json").exists() and (tmp_path / "curve.png").exists()
    serving = load_serving_module(out)
    assert serving.num_items == ds.num_items
    ckpt = load_checkpoint(out, kind="ranker")
    np.testing.assert_array_equal(ckpt["extra"]["item_ids"], ds.item_ids)
    res = runner.invoke(train_ranker_cli, args[:-2] + ["--resume"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(train_ranker_cli, [a if a != "3" else "5" for a in args] + ["--resume"])
    assert res.exit_code == 0 and load_checkpoint(out, kind="ranker")["step"] == 5


def test_cli_snapshots_dir_and_errors(ds: Dataset, tmp_path):
    data = save_dataset(ds, tmp_path / "data")
    snaps = tmp_path / "snaps"
    random_snapshot(np.arange(60), T0 + MS_PER_DAY, 3).save(snaps / "2026-01-06")
    runner = CliRunner()
    base = ["--data", str(data), "--out", str(tmp_path / "r.pt"), "--steps", "2", "--no-progress"]
    res = runner.invoke(train_ranker_cli, base + ["--snapshots-dir", str(snaps), "--train-start", "2026-01-07"])
    assert res.exit_code == 0, res.output
    assert "known users" in res.output and "from 2026-01-07" in res.output
    assert load_checkpoint(tmp_path / "r.pt", kind="ranker")["extra"]["train_start_ms"] == T0 + 2 * MS_PER_DAY
    for extra, message in [
        ([], "--no-pinnerformer"),
        (["--snapshots-dir", str(snaps)], "needs --train-start"),
        (["--no-pinnerformer", "--snapshots-dir", str(snaps)], "cannot be combined"),
        (["--snapshots-dir", str(tmp_path / "missing")], "no such snapshot directory"),
        (["--snapshots-dir", str(tmp_path / "data"), "--train-start", "0.5"], "no snapshots"),
    ]:
        res = runner.invoke(train_ranker_cli, base + extra)
        assert res.exit_code != 0 and message in res.output, (extra, res.output)
        assert "Traceback" not in res.output


def test_cli_builds_daily_snapshots_from_pinnerformer(ds: Dataset, tmp_path, monkeypatch):
    # Patched where the CLI looks them up at call time, so a stub checkpoint file will do.
    calls = []

    def fake_build(source, dataset, start_ms, end_ms, progress=False):
        calls.append((source, start_ms, end_ms))
        days = range(int(start_ms) // MS_PER_DAY * MS_PER_DAY, int(end_ms), MS_PER_DAY)
        return [random_snapshot(np.arange(60), d, i) for i, d in enumerate(days)]

    monkeypatch.setattr(pinrank.embed.batch, "build_daily_snapshots", fake_build)
    monkeypatch.setattr(pinrank.train.cli_ranker, "pinnerformer_train_cut_ms", lambda path: T0 + 3 * MS_PER_DAY)
    data = save_dataset(ds, tmp_path / "data")
    pf = tmp_path / "pf.pt"
    pf.write_bytes(b"stub")  # only its path travels to build_daily_snapshots
    res = CliRunner().invoke(train_ranker_cli, [
        "--data", str(data), "--pinnerformer", str(pf), "--snapshots-dir", str(tmp_path / "snaps"),
        "--out", str(tmp_path / "r.pt"), "--steps", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    # Snapshots from the PinnerFormer's cut on: the ranker trains on nothing earlier.
    assert calls == [(pf, T0 + 3 * MS_PER_DAY, T0 + 10 * MS_PER_DAY)]
    saved = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert len(saved) == 7 and saved[0] == "2026-01-08"
    ckpt = load_checkpoint(tmp_path / "r.pt", kind="ranker")
    assert ckpt["config"]["ranker"]["use_pinnerformer"] and ckpt["extra"]["snapshots"] == 7
    assert ckpt["extra"]["train_start_ms"] == ckpt["extra"]["pinnerformer_train_cut_ms"] == T0 + 3 * MS_PER_DAY


def test_step_schedule_walks_epochs_of_different_lengths():
    counts = np.random.default_rng(1).integers(1, 30, size=97)
    cfg = TrainConfig(batch_size=64)
    cache: dict = {}
    lengths = [len(request_batches(counts, 64, cfg.seed, e)) for e in range(6)]
    seen = [_batch_for_step(counts, cfg, s, cache) for s in range(sum(lengths))]
    epochs = np.cumsum([0] + lengths)
    for e in range(6):
        np.testing.assert_array_equal(np.sort(np.concatenate(seen[epochs[e]:epochs[e + 1]])), np.arange(97))


# --- the training cut between PinnerFormer and the ranker ----------------------


def test_resolve_cut_dates_fractions_and_errors(ds: Dataset):
    assert resolve_cut("2026-01-08", ds) == T0 + 3 * MS_PER_DAY
    assert resolve_cut("1", ds) == ds.train_end_ms
    half = resolve_cut("0.5", ds)
    assert half % MS_PER_DAY == 0 and T0 < half < ds.train_end_ms
    ts = ds.actions["ts_ms"][ds.actions["ts_ms"] < ds.train_end_ms]
    assert np.mean(ts < half) <= 0.5 <= np.mean(ts < half + MS_PER_DAY)  # the midnight before the median action
    for bad, message in [("0", "(0, 1]"), ("1.5", "(0, 1]"), ("soon", "YYYY-MM-DD"),
                         ("2026-01-05", "outside the training period"), ("2026-01-13", "outside the training period")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            resolve_cut(bad, ds)


def test_ranker_train_start_defaults_to_the_cut_and_refuses_a_leak():
    end, cut = T0 + 7 * MS_PER_DAY, T0 + 3 * MS_PER_DAY
    assert ranker_train_start(end, None, cut) == cut
    assert ranker_train_start(end, T0 + 4 * MS_PER_DAY, cut) == T0 + 4 * MS_PER_DAY
    assert ranker_train_start(end, T0 + 2 * MS_PER_DAY, None) == T0 + 2 * MS_PER_DAY  # no PinnerFormer: nothing to leak
    assert ranker_train_start(end, None, None) is None
    with pytest.raises(ValueError, match="leak: .* up to 2026-01-08, after the ranker's training start 2026-01-07"):
        ranker_train_start(end, T0 + 2 * MS_PER_DAY, cut)
    # A PinnerFormer trained on the whole training period leaves the ranker nothing.
    with pytest.raises(ValueError, match=r"no ranker training period.*--train-cut 0\.5"):
        ranker_train_start(end, None, end)
    with pytest.raises(ValueError, match="leak"):
        check_pinnerformer_cut(cut, cut - 1)
    check_pinnerformer_cut(cut, cut)


def test_ranker_periods_train_from_the_cut_and_evaluate_as_before(ds: Dataset):
    full = build_ranker_data(ds, None)
    cut = T0 + 3 * MS_PER_DAY
    train, ev = ranker_periods(full, ds.train_end_ms, None, cut)
    assert cut <= train.ts_ms.min() and train.ts_ms.max() < ds.train_end_ms
    assert train.num_requests == int(((full.ts_ms >= cut) & (full.ts_ms < ds.train_end_ms)).sum())
    np.testing.assert_array_equal(ev.request_id, full.split(ds.train_end_ms)[1].request_id)
    np.testing.assert_array_equal(np.diff(train.offsets), np.bincount(train.req_index))
    with pytest.raises(ValueError, match="no ranker training requests from 2026-01-11"):
        ranker_periods(full.select(np.flatnonzero(full.ts_ms < T0 + 6 * MS_PER_DAY)), ds.train_end_ms,
                       T0 + 6 * MS_PER_DAY, None)


def test_pinnerformer_checkpoint_records_its_cut(ds: Dataset, tmp_path, monkeypatch):
    seen = []
    real = pf_train.make_sampler
    monkeypatch.setattr(pf_train, "make_sampler", lambda d, m, c: seen.append(d.train_end_ms) or real(d, m, c))
    cut = T0 + 3 * MS_PER_DAY
    out = tmp_path / "pf.pt"
    metrics = train_pinnerformer(ds, out, PF_TRAIN, PF_MODEL, progress=False, evaluate=False, train_cut_ms=cut)
    assert seen == [cut] and metrics["train_cut_ms"] == cut == pinnerformer_train_cut_ms(out)
    assert load_checkpoint(out, "pinnerformer")["extra"]["dataset_meta"]["train_end_ms"] == ds.train_end_ms
    with pytest.raises(ValueError, match="trained with cut 2026-01-08, not the requested 2026-01-09"):
        train_pinnerformer(ds, out, replace(PF_TRAIN, steps=3), resume=True, progress=False, evaluate=False,
                           train_cut_ms=cut + MS_PER_DAY)
    train_pinnerformer(ds, out, replace(PF_TRAIN, steps=3), resume=True, progress=False, evaluate=False)
    assert seen[-1] == cut and pinnerformer_train_cut_ms(out) == cut  # a resumed run keeps its cut
    with pytest.raises(ValueError, match="outside the training period"):
        train_pinnerformer(ds, tmp_path / "late.pt", PF_TRAIN, PF_MODEL, train_cut_ms=ds.train_end_ms + MS_PER_DAY)
    # Checkpoints from before the cut was recorded trained on their dataset's whole training period.
    assert pinnerformer_train_cut_ms({"extra": {"dataset_meta": {"train_end_ms": 123}}}) == 123
    with pytest.raises(ValueError, match="records no training cut"):
        pinnerformer_train_cut_ms({"extra": {}})


def test_cli_ranker_trains_after_the_pinnerformer_cut_and_refuses_earlier(ds: Dataset, tmp_path):
    data = save_dataset(ds, tmp_path / "data")
    half, whole = tmp_path / "half.pt", tmp_path / "whole.pt"
    train_pinnerformer(ds, half, PF_TRAIN, PF_MODEL, progress=False, evaluate=False, train_cut_ms=T0 + 3 * MS_PER_DAY)
    train_pinnerformer(ds, whole, PF_TRAIN, PF_MODEL, progress=False, evaluate=False)
    runner = CliRunner()

    def run(pf: Path, *extra: str):  # type: ignore[no-untyped-def]
        return runner.invoke(train_ranker_cli, ["--data", str(data), "--pinnerformer", str(pf), "--out",
                                                str(tmp_path / "r.pt"), "--steps", "2", "--no-progress", *extra])

    res = run(half)
    assert res.exit_code == 0, res.output
    assert "from 2026-01-08" in res.output
    extra = load_checkpoint(tmp_path / "r.pt", kind="ranker")["extra"]
    assert extra["train_start_ms"] == extra["pinnerformer_train_cut_ms"] == T0 + 3 * MS_PER_DAY
    res = run(half, "--train-start", "2026-01-09")
    assert res.exit_code == 0, res.output
    for pf, args, message in [(half, ["--train-start", "2026-01-07"], "leak: the PinnerFormer checkpoint"),
                              (whole, [], "no ranker training period"),
                              (half, ["--train-start", "2026-01-20"], "outside the training period")]:
        res = run(pf, *args)
        assert res.exit_code != 0 and message in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_cut_on_real_movielens_leaves_both_models_data():
    path = SHARED_DATA / "ml-latest-small"
    if not path.exists():
        pytest.skip(f"{path} not available")
    ml = build_movielens(path)
    cut = resolve_cut("0.5", ml)
    ts = ml.actions["ts_ms"][ml.actions["ts_ms"] < ml.train_end_ms]
    assert 0.4 < np.mean(ts < cut) <= 0.5
    req_ts = ml.impressions["ts_ms"]
    assert ranker_train_start(ml.train_end_ms, None, cut) == cut
    assert ((req_ts >= cut) & (req_ts < ml.train_end_ms)).sum() > 10_000
    with pytest.raises(ValueError, match="no ranker training period"):
        ranker_train_start(ml.train_end_ms, None, resolve_cut("1", ml))
