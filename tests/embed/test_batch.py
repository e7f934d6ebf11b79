"""The daily batch embedding job: full and incremental snapshots, daily chains, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pinrank.backend import schema
from pinrank.backend.hashing import sha256_of
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.data.dataset import save_dataset
from pinrank.embed.batch import (
    build_daily_snapshots,
    build_snapshot,
    daily_embeddings,
    day_boundaries,
    snapshot_index,
)
from pinrank.models.checkpoints import save_checkpoint
from pinrank.models.pinnerformer import (
    PinnerFormer,
    PinnerFormerConfig,
    UserTimelines,
    load_pinnerformer,
)
from pinrank.train.pinnerformer import PinnerFormerTrainConfig, train_pinnerformer
from testkit.toy_data import START_MS, make_toy_dataset


@pytest.fixture(scope="module")
def toy():
    return make_toy_dataset(num_users=80, num_items=150, actions_per_user=30, days=20, train_days=14, seed=7)


@pytest.fixture(scope="module")
def ckpt(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "pf.pt"
    train_pinnerformer(
        toy, out,
        PinnerFormerTrainConfig(steps=4, batch_size=8, positions_per_seq=4, num_random_negatives=64),
        PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=16, item_hidden=32),
        progress=False, evaluate=False,
    )
    return out


def test_full_snapshot_contents(toy, ckpt):
    as_of = START_MS + 5 * MS_PER_DAY
    snap = build_snapshot(ckpt, toy, as_of)
    tl = UserTimelines(toy, before_ms=as_of)
    assert np.array_equal(snap.user_ids, tl.user_ids)  # users with history, and only them
    assert np.allclose(np.linalg.norm(snap.user_emb, axis=1), 1.0, atol=1e-5)
    mean = snap.user_emb.mean(axis=0)
    assert np.allclose(snap.cold_start, mean / np.linalg.norm(mean), atol=1e-5)
    assert snap.meta["as_of_ms"] == as_of
    assert snap.meta["version"] == "20240106"
    assert snap.meta["source_checkpoint"] == sha256_of(ckpt)
    assert snap.meta["counts"] == {"users": len(tl), "recomputed": len(tl), "carried": 0}
    # Matches the model on each user's last max_len actions before as_of.
    model, _ = load_pinnerformer(ckpt)
    u = 3
    lo, hi = tl.offsets[u], tl.offsets[u + 1]
    n = min(hi - lo, model.max_len)
    x = {
        "item_idx": tl.item_idx[hi - n: hi][::-1], "action": tl.action[hi - n: hi][::-1],
        "surface": tl.surface[hi - n: hi][::-1], "duration_ms": tl.duration_ms[hi - n: hi][::-1],
        "ts_ms": tl.ts_ms[hi - n: hi][::-1],
    }
    with torch.no_grad():
        want = model.embed_users(**{k: torch.from_numpy(v.copy())[None] for k, v in x.items()})[0].numpy()
    assert np.allclose(snap.user_emb[u], want, atol=1e-5)
    # Round trip through disk.
    snap.save(ckpt.parent / "snap")
    again = UserSnapshot.load(ckpt.parent / "snap")
    assert np.array_equal(again.user_emb, snap.user_emb) and again.meta == json.loads(json.dumps(snap.meta))


def test_snapshot_never_uses_actions_at_or_after_as_of(toy, ckpt):
    as_of = START_MS + 6 * MS_PER_DAY
    snap = build_snapshot(ckpt, toy, as_of)
    later = toy.actions["ts_ms"] >= as_of
    changed = {k: v.copy() for k, v in toy.actions.items()}
    changed["item_id"][later] = toy.item_ids[0]
    changed["action"][later] = schema.ACTION_IDS["save"]
    other = type(toy)(changed, toy.item_ids, toy.item_topic, toy.item_emb, toy.meta)
    assert np.array_equal(build_snapshot(ckpt, other, as_of).user_emb, snap.user_emb)


def test_incremental_equals_full_recompute_and_keeps_untouched_users(toy, ckpt):
    d0, d1 = START_MS + 4 * MS_PER_DAY, START_MS + 6 * MS_PER_DAY + 3 * 3_600_000
    prev = build_snapshot(ckpt, toy, d0)
    inc = build_snapshot(ckpt, toy, d1, previous=prev)
    full = build_snapshot(ckpt, toy, d1)
    assert np.array_equal(inc.user_ids, full.user_ids)
    assert np.allclose(inc.user_emb, full.user_emb, atol=1e-5)
    assert np.allclose(inc.cold_start, full.cold_start, atol=1e-5)
    a = toy.actions
    tl = UserTimelines(toy)
    active = np.unique(a["user_id"][(a["ts_ms"] >= d0) & (a["ts_ms"] < d1) & np.isin(a["user_id"], tl.user_ids)
                                    & (a["action"] != schema.ACTION_IDS["impression"])])
    assert inc.meta["counts"]["recomputed"] == active.size  # new users are active by definition
    assert inc.meta["incremental"] and inc.meta["previous_version"] == prev.meta["version"]
    assert inc.meta["version"] == "20240107T030000Z"
    untouched = np.setdiff1d(prev.user_ids, active)
    assert untouched.size > 0
    pi, ii = np.searchsorted(prev.user_ids, untouched), np.searchsorted(inc.user_ids, untouched)
    assert np.array_equal(inc.user_emb[ii], prev.user_emb[pi])  # carried over bit for bit


def test_incremental_rejects_other_model_and_time_travel(toy, ckpt):
    prev = build_snapshot(ckpt, toy, START_MS + 5 * MS_PER_DAY)
    model, _ = load_pinnerformer(ckpt)
    with pytest.raises(ValueError, match="another model"):
        build_snapshot(model, toy, START_MS + 6 * MS_PER_DAY, previous=prev)  # in-memory id != file sha
    with pytest.raises(ValueError, match="after as_of"):
        build_snapshot(ckpt, toy, START_MS + 4 * MS_PER_DAY, previous=prev)


def test_empty_snapshot_has_zero_cold_start(toy, ckpt):
    snap = build_snapshot(ckpt, toy, START_MS)
    assert snap.user_ids.size == 0 and np.array_equal(snap.cold_start, np.zeros(schema.USER_EMB_DIM))


def test_daily_snapshots_chain_and_lookup(toy, ckpt):
    start, end = START_MS + 2 * MS_PER_DAY + 5, START_MS + 5 * MS_PER_DAY + 1
    assert day_boundaries(start, end) == [START_MS + d * MS_PER_DAY for d in (2, 3, 4, 5)]
    assert day_boundaries(START_MS, START_MS + 2 * MS_PER_DAY) == [START_MS, START_MS + MS_PER_DAY]
    snaps = build_daily_snapshots(ckpt, toy, start, end)
    assert [s.as_of_ms for s in snaps] == day_boundaries(start, end)
    assert [s.meta["incremental"] for s in snaps] == [False, True, True, True]
    assert np.allclose(snaps[-1].user_emb, build_snapshot(ckpt, toy, snaps[-1].as_of_ms).user_emb, atol=1e-5)
    ts = np.array([START_MS + MS_PER_DAY, START_MS + 3 * MS_PER_DAY, START_MS + 4 * MS_PER_DAY - 1,
                   START_MS + 9 * MS_PER_DAY])
    assert snapshot_index(snaps, ts).tolist() == [-1, 1, 1, 3]
    users = np.array([snaps[1].user_ids[0]] * 4)
    emb, known = daily_embeddings(snaps, users, ts)
    assert known.tolist() == [False, True, True, True]
    assert np.array_equal(emb[0], np.zeros(schema.USER_EMB_DIM))
    assert np.array_equal(emb[2], snaps[1].lookup(users[:1])[0][0])  # never the fresher day-4 snapshot


def test_model_out_dim_must_match_schema(toy, tmp_path):
    model = PinnerFormer(PinnerFormerConfig(num_layers=1, hidden=16, heads=2, out_dim=8, max_len=8, item_hidden=16),
                         toy.item_emb)
    with pytest.raises(ValueError, match="USER_EMB_DIM"):
        build_snapshot(model, toy, toy.train_end_ms)


def test_embed_cli(toy, ckpt, tmp_path):
    data = save_dataset(toy, tmp_path / "data")
    runner = CliRunner()
    res = runner.invoke(main, ["embed", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "s0"),
                               "--as-of", "2024-01-05"])
    assert res.exit_code == 0, res.output
    s0 = UserSnapshot.load(tmp_path / "s0")
    assert s0.as_of_ms == START_MS + 4 * MS_PER_DAY and s0.meta["version"] == "20240105"
    res = runner.invoke(main, ["embed", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "s1"),
                               "--previous", str(tmp_path / "s0")])
    assert res.exit_code == 0, res.output
    s1 = UserSnapshot.load(tmp_path / "s1")
    assert s1.as_of_ms == toy.train_end_ms and s1.meta["incremental"]

    def fails(args: list[str], needle: str) -> None:
        r = runner.invoke(main, ["embed", *args])
        assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output

    base = ["--data", str(data), "--out", str(tmp_path / "x")]
    fails(["--checkpoint", str(tmp_path / "missing.pt"), *base], "missing.pt")
    other = tmp_path / "ranker.pt"
    save_checkpoint(other, kind="ranker", config={}, model=torch.nn.Linear(1, 1))
    fails(["--checkpoint", str(other), *base], "expected a 'pinnerformer' checkpoint")
    (tmp_path / "empty").mkdir()
    fails(["--checkpoint", str(ckpt), "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x")], "bad dataset")
    fails(["--checkpoint", str(ckpt), *base, "--as-of", "05/01/2024"], "YYYY-MM-DD")
    fails(["--checkpoint", str(ckpt), *base, "--previous", str(tmp_path / "empty")], "incomplete snapshot")
    assert runner.invoke(main, ["embed", "--help"]).exit_code == 0
