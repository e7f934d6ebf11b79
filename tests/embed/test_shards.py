"""Sharded daily batch embedding: disjoint user shards merged (with the previous
snapshot) into the snapshot the single-process job writes; 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.data.dataset import save_dataset
from pinrank.embed.batch import build_snapshot
from pinrank.embed.shards import (
    EmbeddingShard,
    ShardError,
    build_shard,
    merge_shards,
    shard_of,
)
from pinrank.models.pinnerformer import PinnerFormerConfig, load_pinnerformer
from pinrank.train.pinnerformer import PinnerFormerTrainConfig, train_pinnerformer
from testkit.toy_data import START_MS, make_toy_dataset

D0 = START_MS + 4 * MS_PER_DAY  # 2024-01-05: the previous snapshot
D1 = START_MS + 5 * MS_PER_DAY  # 2024-01-06: today's


@pytest.fixture(scope="module")
def toy():
    return make_toy_dataset(num_users=80, num_items=150, actions_per_user=30, days=20, train_days=14, seed=7)


@pytest.fixture(scope="module")
def ckpt(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "pf.pt"
    train_pinnerformer(
        toy, out,
        PinnerFormerTrainConfig(steps=3, batch_size=8, positions_per_seq=4, num_random_negatives=64),
        PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=16, item_hidden=32),
        progress=False, evaluate=False,
    )
    return out


@pytest.fixture(scope="module")
def prev(toy, ckpt):
    return build_snapshot(ckpt, toy, D0)


def assert_same_snapshot(got: UserSnapshot, want: UserSnapshot) -> None:
    assert np.array_equal(got.user_ids, want.user_ids)
    np.testing.assert_allclose(got.user_emb, want.user_emb, atol=1e-5)
    np.testing.assert_allclose(got.cold_start, want.cold_start, atol=1e-5)
    meta = {k: v for k, v in got.meta.items() if k != "shards"}
    assert meta == json.loads(json.dumps(want.meta))  # same as_of, version, model, counts, previous


def test_shard_key_is_stable_balanced_and_in_range():
    ids = np.array([0, 1, 2, 3, 42, -5, 2**62])
    # Pinned: a new key would silently re-split users against shards built by the old one.
    assert shard_of(ids, 4).tolist() == [3, 1, 2, 1, 1, 2, 3]
    strided = np.arange(1, 1001) * 4  # a plain modulo would put every one of these in shard 0
    counts = np.bincount(shard_of(strided, 4), minlength=4)
    assert counts.min() > 200
    assert np.array_equal(shard_of(strided, 1), np.zeros(strided.size))
    with pytest.raises(ValueError):
        shard_of(ids, 0)


@pytest.mark.parametrize("incremental", [False, True])
def test_in_process_shards_merge_to_the_single_process_snapshot(toy, ckpt, prev, incremental):
    previous = prev if incremental else None
    shards = [build_shard(ckpt, toy, D1, i, 3, previous) for i in range(3)]
    assert sum(s.user_ids.size for s in shards) == build_snapshot(ckpt, toy, D1, previous).meta["counts"]["recomputed"]
    for s in shards:
        assert (shard_of(s.user_ids, 3) == s.shard_index).all()
    merged = merge_shards(shards[::-1], previous)  # any order
    assert_same_snapshot(merged, build_snapshot(ckpt, toy, D1, previous))
    assert merged.meta["shards"]["num_shards"] == 3
    if incremental:
        assert merged.meta["counts"]["carried"] > 0


def test_merge_refuses_incomplete_repeated_or_mismatched_shards(toy, ckpt, prev, tmp_path):
    full = [build_shard(ckpt, toy, D1, i, 2) for i in range(2)]
    inc = [build_shard(ckpt, toy, D1, i, 2, prev) for i in range(2)]

    def refused(shards, needle, previous=None):
        with pytest.raises(ShardError, match=needle):
            merge_shards(shards, previous)

    refused([], "no shards")
    refused(full[:1], "missing shard")
    refused([full[0], full[0]], "given twice")
    refused([full[0], build_shard(ckpt, toy, D1, 1, 3)], "num_shards")
    refused([full[0], build_shard(ckpt, toy, D1 + MS_PER_DAY, 1, 2)], "as_of")
    model, _ = load_pinnerformer(ckpt)  # in memory: a weights fingerprint, not the file's sha256
    refused([full[0], build_shard(model, toy, D1, 1, 2)], "model")
    other_data = make_toy_dataset(num_users=80, num_items=150, actions_per_user=30, days=20, train_days=14, seed=8)
    refused([full[0], build_shard(ckpt, other_data, D1, 1, 2)], "data_fingerprint")
    refused([full[0], inc[1]], "previous_version")
    refused(inc, "merge them with that --previous")
    refused(full, "without --previous", prev)
    refused(inc, "built against version", build_snapshot(ckpt, toy, D0 - MS_PER_DAY))
    bad = dict(full[0].meta, shard_key="user_id % num_shards")
    with pytest.raises(ShardError, match="shard key"):
        EmbeddingShard(full[0].user_ids, full[0].user_emb, bad)
    with pytest.raises(ShardError, match="NaN"):
        EmbeddingShard(full[0].user_ids, np.full_like(full[0].user_emb, np.nan), full[0].meta)
    # On disk: a shard without shard.json is unfinished.
    full[0].save(tmp_path / "s0")
    assert EmbeddingShard.load(tmp_path / "s0").user_ids.tolist() == full[0].user_ids.tolist()
    (tmp_path / "s0" / "shard.json").unlink()
    with pytest.raises(ShardError, match="incomplete shard"):
        EmbeddingShard.load(tmp_path / "s0")
    with pytest.raises(ShardError, match="no such shard"):
        EmbeddingShard.load(tmp_path / "nope")


def test_a_shard_holding_another_shards_users_is_refused(toy, ckpt):
    s0, s1 = (build_shard(ckpt, toy, D1, i, 2) for i in range(2))
    with pytest.raises(ShardError, match="belong to other shards"):  # tampered, or built with another key
        EmbeddingShard(s1.user_ids, s1.user_emb, dict(s0.meta), "tampered")


def test_cli_sharded_embed_and_merge_in_process(toy, ckpt, prev, tmp_path):
    data = save_dataset(toy, tmp_path / "data")
    prev.save(tmp_path / "prev")
    runner = CliRunner()
    base = ["embed", "--checkpoint", str(ckpt), "--data", str(data), "--as-of", "2024-01-06",
            "--previous", str(tmp_path / "prev"), "--num-shards", "2"]
    for i in range(2):
        res = runner.invoke(main, [*base, "--shard-index", str(i), "--out", str(tmp_path / f"s{i}")])
        assert res.exit_code == 0, res.output
        assert f"shard {i} of 2" in res.output
    res = runner.invoke(main, ["embed-merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--previous",
                               str(tmp_path / "prev"), "--out", str(tmp_path / "snap")])
    assert res.exit_code == 0, res.output
    assert_same_snapshot(UserSnapshot.load(tmp_path / "snap"), build_snapshot(ckpt, toy, D1, prev))

    def fails(args: list[str], needle: str, env: dict[str, str] | None = None) -> None:
        r = runner.invoke(main, args, env=env)
        assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output

    out = ["--out", str(tmp_path / "x")]
    fails([*base[:-2], *out, "--shard-index", "0"], "together")
    fails([*base, *out, "--shard-index", "2"], "not below --num-shards")
    fails([*base, *out, "--shard-index", "0"], "torchrun", env={"WORLD_SIZE": "2"})
    fails(["embed-merge", str(tmp_path / "s0"), "--previous", str(tmp_path / "prev"), *out], "missing shard(s) 1 of 2")
    fails(["embed-merge", str(tmp_path / "s0"), str(tmp_path / "s1"), *out], "--previous")
    fails(["embed-merge", str(tmp_path / "s0"), str(tmp_path / "data"), *out], "incomplete shard")
    assert runner.invoke(main, ["embed-merge", "--help"]).exit_code == 0


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pinrank.cli", *args]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_two_processes_embed_disjoint_shards_merged_with_the_previous_snapshot(toy, ckpt, prev, tmp_path):
    data = save_dataset(toy, tmp_path / "data")
    prev.save(tmp_path / "prev")
    procs = [
        subprocess.Popen(_cli(["embed", "--checkpoint", str(ckpt), "--data", str(data), "--as-of", "2024-01-06",
                               "--previous", str(tmp_path / "prev"), "--num-shards", "2", "--shard-index", str(i),
                               "--out", str(tmp_path / f"shard{i}")]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        for i in range(2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=180)
        assert p.returncode == 0, output
    shards = [EmbeddingShard.load(tmp_path / f"shard{i}") for i in range(2)]
    assert not np.intersect1d(shards[0].user_ids, shards[1].user_ids).size and all(s.user_ids.size for s in shards)
    res = CliRunner().invoke(main, ["embed-merge", str(tmp_path / "shard1"), str(tmp_path / "shard0"),
                                    "--previous", str(tmp_path / "prev"), "--out", str(tmp_path / "snap")])
    assert res.exit_code == 0, res.output
    merged = UserSnapshot.load(tmp_path / "snap")
    assert_same_snapshot(merged, build_snapshot(ckpt, toy, D1, prev))
    assert merged.meta["version"] == "20240106" and merged.meta["incremental"]


@pytest.mark.slow
def test_torchrun_ranks_embed_shards_and_rank_0_merges(toy, ckpt, prev, tmp_path):
    data = save_dataset(toy, tmp_path / "data")
    prev.save(tmp_path / "prev")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pinrank.cli",
           "embed", "--checkpoint", str(ckpt), "--data", str(data), "--as-of", "2024-01-06",
           "--previous", str(tmp_path / "prev"), "--out", str(tmp_path / "snap")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("snapshot ") == 1, proc.stdout  # rank 0 alone writes and reports
    merged = UserSnapshot.load(tmp_path / "snap")
    assert_same_snapshot(merged, build_snapshot(ckpt, toy, D1, prev))
    assert merged.meta["shards"]["num_shards"] == 2
