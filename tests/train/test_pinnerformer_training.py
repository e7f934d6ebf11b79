"""PinnerFormer training: label sampling, loss, learning, checkpoints/resume, CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.data.dataset import Dataset, save_dataset
from pinrank.models.checkpoints import load_checkpoint, save_checkpoint
from pinrank.models.pinnerformer import (
    PinnerFormer,
    PinnerFormerConfig,
    UserTimelines,
    load_pinnerformer,
    to_tensors,
)
from pinrank.train.pinnerformer import (
    PinnerFormerTrainConfig,
    draw_batch,
    encode_pairs,
    evaluate_recall,
    make_sampler,
    train_pinnerformer,
)
from pinrank.train.pinnerformer_loss import (
    CountMinSketch,
    DenseAllActionLoss,
    DenseAllActionSampler,
)
from testkit.toy_data import (
    START_MS,
    make_toy_dataset,
)

SMALL_MODEL = PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=32, item_hidden=64)
FAST = PinnerFormerTrainConfig(steps=6, batch_size=16, positions_per_seq=8, num_random_negatives=128,
                               log_every=2, checkpoint_every=1000, warmup_steps=2)


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return make_toy_dataset(num_users=120, num_items=200, actions_per_user=30, seed=4)


# --- label sampling -----------------------------------------------------------


def test_sampled_labels_are_positives_inside_each_positions_future_window(toy):
    window_days = 3.0
    cfg = replace(FAST, future_window_days=window_days)
    sampler = make_sampler(toy, SMALL_MODEL, cfg)
    seq, pos = sampler.seq, sampler.pos
    rng = np.random.default_rng(0)
    n_pairs = 0
    for _ in range(30):
        b = sampler.sample(rng, 16)
        src_ts = seq.ts_ms[b.src_flat]
        lab_ts = pos.ts_ms[b.label_flat]
        assert (lab_ts > src_ts).all(), "label at or before its position"
        assert (lab_ts <= src_ts + int(window_days * MS_PER_DAY)).all(), "label beyond the future window"
        assert (lab_ts < toy.train_end_ms).all(), "label from the evaluation period"
        assert np.isin(pos.action[b.label_flat], [schema.ACTION_IDS[a] for a in schema.POSITIVE_ACTIONS]).all()
        # Same user, and the label item is what the model is asked to predict.
        lab_user = pos.user_ids[np.searchsorted(pos.offsets, b.label_flat, side="right") - 1]
        assert np.array_equal(lab_user, seq.user_ids[b.owner])
        assert np.array_equal(b.label, pos.item_idx[b.label_flat])
        # (row, col) points at the sampled position inside the newest-first window.
        assert np.array_equal(b.inputs["ts_ms"][b.row, b.col], src_ts)
        assert (b.inputs["action"][b.row, b.col] > 0).all()
        n_pairs += b.label.size
    assert n_pairs > 100


def _hand_dataset() -> Dataset:
    """One user: click X at day 0, save A at day 1, save B at day 40 (window 28 d)."""
    ids = schema.ACTION_IDS
    actions = {
        "user_id": np.array([1, 1, 1, 1], dtype=np.int64),
        "item_id": np.array([10, 11, 12, 13], dtype=np.int64),
        "action": np.array([ids["click"], ids["save"], ids["save"], ids["click"]], dtype=np.int64),
        "surface": np.ones(4, dtype=np.int64),
        "ts_ms": START_MS + np.array([0, 1, 40, 60], dtype=np.int64) * MS_PER_DAY,
        "duration_ms": np.full(4, -1, dtype=np.int64),
    }
    emb = np.eye(4, schema.ITEM_EMB_DIM, dtype=np.float32)
    meta = {"source": "hand", "start_ms": START_MS, "end_ms": START_MS + 70 * MS_PER_DAY,
            "train_end_ms": START_MS + 50 * MS_PER_DAY}
    return Dataset(actions, np.array([10, 11, 12, 13]), np.zeros(4, np.int32), emb, meta)


def test_positions_without_a_future_positive_in_the_window_are_never_labelled():
    ds = _hand_dataset()
    sampler = make_sampler(ds, SMALL_MODEL, FAST)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        b = sampler.sample(rng, 4)
        for src, lab in zip(b.src_flat, b.label):
            seen.add((int(src), int(lab)))
    # Day 0 -> only A (flat 1, item index 2). Day 1 -> B is 39 days later: unlabelled.
    # Day 40 -> its only later action (day 60) is after train_end (day 50): unlabelled.
    assert seen == {(0, 2)}


def test_count_min_sketch_never_undercounts():
    cms = CountMinSketch(width=64, depth=3, seed=1)
    items = torch.from_numpy(np.random.default_rng(0).zipf(1.5, size=2000) % 500)
    cms.update(items)
    true = torch.bincount(items, minlength=500).double() / items.numel()
    est = cms.frequency(torch.arange(500))
    assert (est.double() >= true - 1e-7).all()
    wide = CountMinSketch(width=1 << 16, depth=4)
    wide.update(torch.tensor([3, 3, 3, 7]))
    assert torch.allclose(wide.frequency(torch.tensor([3, 7, 9])), torch.tensor([0.75, 0.25, 0.0]))


def test_loss_masks_own_positives_and_clamps_temperature():
    loss_fn = DenseAllActionLoss(num_items=100, init_temperature=0.1)
    user = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), dim=1)
    # Row 0's label is orthogonal to its user, row 1's label points along user 0.
    label_emb = torch.tensor([[0, 0, 1.0, 0], [1.0, 0, 0, 0]])
    label = torch.tensor([5, 6])
    neg, neg_emb = torch.tensor([7]), torch.tensor([[0, 0, 0, 1.0]])
    same, _ = loss_fn(user, label, label_emb, torch.tensor([0, 0]), neg, neg_emb)
    loss_fn2 = DenseAllActionLoss(num_items=100, init_temperature=0.1)
    diff, _ = loss_fn2(user, label, label_emb, torch.tensor([0, 1]), neg, neg_emb)
    # Same user: row 1's label is masked as a negative for row 0, so the loss is lower.
    assert same < diff
    assert torch.isfinite(same)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(-20.0)
    assert float(loss_fn.temperature.detach()) == pytest.approx(0.01)


# --- learning ------------------------------------------------------------------


@pytest.mark.slow
def test_loss_decreases_and_beats_random_model(tmp_path):
    ds = make_toy_dataset(num_users=200, num_items=400, actions_per_user=40, seed=0)
    cfg = replace(FAST, steps=60, batch_size=32, log_every=5, lr=3e-3)
    model_cfg = PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=64, item_hidden=64)
    metrics = train_pinnerformer(ds, tmp_path / "pf.pt", cfg, model_cfg, progress=False,
                                 curve=tmp_path / "curve.png")
    ckpt = load_checkpoint(tmp_path / "pf.pt", "pinnerformer")
    hist = ckpt["extra"]["history"]["loss"]
    assert np.mean(hist[-3:]) < np.mean(hist[:3]) - 0.3
    torch.manual_seed(123)
    random_model = PinnerFormer(model_cfg, ds.item_emb)
    rand = evaluate_recall(random_model, ds)
    assert metrics["eval_recall"] > rand["recall"] + 0.05
    assert metrics["eval_recall"] > 0.5 * metrics["eval_pop_recall"]
    assert (tmp_path / "curve.png").stat().st_size > 0


# --- checkpoints ----------------------------------------------------------------


def test_checkpoint_holds_everything_to_rebuild(tmp_path, toy):
    out = tmp_path / "pf.pt"
    train_pinnerformer(toy, out, FAST, SMALL_MODEL, progress=False, evaluate=False)
    ckpt = load_checkpoint(out, "pinnerformer")
    assert ckpt["config"]["num_items"] == toy.num_items
    assert ckpt["step"] == FAST.steps and ckpt["optimizer"] is not None
    assert np.array_equal(ckpt["extra"]["item_ids"], toy.item_ids)
    model, _ = load_pinnerformer(out)
    assert model.config == SMALL_MODEL and not model.training
    assert torch.equal(model.item_table[1:], torch.from_numpy(toy.item_emb))


def test_item_id_table_follows_its_own_learning_rate(tmp_path, toy):
    frozen, moving = tmp_path / "frozen.pt", tmp_path / "moving.pt"
    train_pinnerformer(toy, frozen, replace(FAST, item_id_lr_mult=0.0), SMALL_MODEL, progress=False, evaluate=False)
    train_pinnerformer(toy, moving, FAST, SMALL_MODEL, progress=False, evaluate=False)
    a, b = load_checkpoint(frozen, "pinnerformer")["state_dict"], load_checkpoint(moving, "pinnerformer")["state_dict"]
    assert not a["item_id_emb.weight"].any()  # zero-initialised and never stepped
    assert b["item_id_emb.weight"].abs().sum() > 0


def test_resume_matches_an_uninterrupted_run(tmp_path, toy):
    straight = tmp_path / "straight.pt"
    split = tmp_path / "split.pt"
    train_pinnerformer(toy, straight, FAST, SMALL_MODEL, progress=False, evaluate=False)
    m = train_pinnerformer(toy, split, FAST, SMALL_MODEL, progress=False, evaluate=False, stop_at=3)
    assert m["steps"] == 3 and load_checkpoint(split, "pinnerformer")["step"] == 3
    train_pinnerformer(toy, split, FAST, SMALL_MODEL, progress=False, evaluate=False, resume=True)
    a, b = load_checkpoint(straight, "pinnerformer"), load_checkpoint(split, "pinnerformer")
    assert b["step"] == FAST.steps
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-6), k
    assert a["extra"]["history"]["loss"] == pytest.approx(b["extra"]["history"]["loss"], rel=1e-5)


def test_resume_rejects_other_kind_and_other_catalogue(tmp_path, toy):
    other = tmp_path / "ranker.pt"
    save_checkpoint(other, kind="ranker", config={}, model=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="pinnerformer"):
        train_pinnerformer(toy, other, FAST, SMALL_MODEL, progress=False, resume=True)
    out = tmp_path / "pf.pt"
    train_pinnerformer(toy, out, replace(FAST, steps=1), SMALL_MODEL, progress=False, evaluate=False)
    smaller = make_toy_dataset(num_users=20, num_items=50, seed=1)
    with pytest.raises(ValueError, match="catalogue"):
        train_pinnerformer(smaller, out, FAST, SMALL_MODEL, progress=False, resume=True)


def test_sampler_requires_labels():
    ds = _hand_dataset()
    ds.actions["action"][:] = schema.ACTION_IDS["hide"]
    seq = UserTimelines(ds, before_ms=ds.train_end_ms)
    pos = UserTimelines(ds, schema.POSITIVE_ACTIONS, before_ms=ds.train_end_ms)
    sampler = DenseAllActionSampler(seq, pos, 28, 16)
    with pytest.raises(ValueError, match="no user"):
        sampler.sample(np.random.default_rng(0), 2)


# --- CLI ---------------------------------------------------------------------------


def test_cli_train_and_errors(tmp_path, toy):
    data = save_dataset(toy, tmp_path / "data")
    out = tmp_path / "pf.pt"
    runner = CliRunner()
    res = runner.invoke(main, ["train", "pinnerformer", "--data", str(data), "--out", str(out), "--steps", "3",
                               "--batch-size", "8", "--layers", "1", "--hidden", "32", "--no-progress",
                               "--curve", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "c.png").exists() and out.with_suffix(".metrics.json").exists()
    assert "Recall@10" in res.output

    res = runner.invoke(main, ["train", "pinnerformer", "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code != 0 and "nope" in res.output

    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["train", "pinnerformer", "--data", str(tmp_path / "empty"), "--out", str(out)])
    assert res.exit_code == 1 and "bad dataset" in res.output and "Traceback" not in res.output

    other = tmp_path / "ranker.pt"
    save_checkpoint(other, kind="ranker", config={}, model=torch.nn.Linear(1, 1))
    res = runner.invoke(main, ["train", "pinnerformer", "--data", str(data), "--out", str(other), "--resume",
                               "--no-progress"])
    assert res.exit_code == 1 and "expected a 'pinnerformer' checkpoint" in res.output
    assert len(res.output.strip().splitlines()) == 1

    res = runner.invoke(main, ["train", "pinnerformer", "--help"])
    assert res.exit_code == 0 and "--resume" in res.output


# --- next-item recipe pieces: grouped encoding, exact softmax, label actions ----------


def test_grouped_encoding_equals_one_padded_forward(toy):
    model = PinnerFormer(SMALL_MODEL, toy.item_emb).eval()
    cfg = replace(FAST, objective="sasrec")
    batch, _neg = draw_batch(make_sampler(toy, SMALL_MODEL, cfg), np.random.default_rng(1), cfg, "mixed", toy.num_items)
    with torch.no_grad():
        grouped = encode_pairs(model, batch.inputs, batch.row, batch.col)
        whole = model.encode(**to_tensors(batch.inputs))[torch.from_numpy(batch.row), torch.from_numpy(batch.col)]
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)


def test_training_attention_kernel_matches_the_export_path(toy):
    model = PinnerFormer(SMALL_MODEL, toy.item_emb)  # dropout 0: train and eval differ only in the kernel
    batch = make_sampler(toy, SMALL_MODEL, FAST).sample(np.random.default_rng(2), 8)
    with torch.no_grad():
        train_out = model.train().encode(**to_tensors(batch.inputs))
        eval_out = model.eval().encode(**to_tensors(batch.inputs))
    assert torch.isfinite(train_out).all()
    torch.testing.assert_close(train_out, eval_out, atol=1e-5, rtol=1e-5)


def test_full_softmax_is_cross_entropy_over_the_catalogue():
    loss_fn = DenseAllActionLoss(5, init_temperature=0.5, negatives="full")
    user = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    items = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    label = torch.tensor([1, 5, 2])
    loss, stats = loss_fn.full_softmax(user, label, items)
    expected = torch.nn.functional.cross_entropy(user @ items[1:].T / 0.5, label - 1)
    torch.testing.assert_close(loss, expected)
    assert stats["num_candidates"] == 4


def test_full_softmax_training_runs_and_labels_can_include_hides(tmp_path, toy):
    cfg = replace(FAST, objective="sasrec", negatives="full", label_actions=("click", "save", "hide"))
    sampler = make_sampler(toy, SMALL_MODEL, cfg)
    batch = sampler.sample(np.random.default_rng(0), 32)
    hides = toy.actions["item_id"][toy.actions["action"] == schema.ACTION_IDS["hide"]]
    assert np.isin(toy.item_ids[batch.label - 1], hides).any()
    metrics = train_pinnerformer(toy, tmp_path / "full.pt", cfg, SMALL_MODEL, progress=False, evaluate=False)
    assert np.isfinite(metrics["final_loss"])
    ckpt = load_checkpoint(tmp_path / "full.pt", "pinnerformer")
    assert tuple(ckpt["config"]["train"]["label_actions"]) == ("click", "save", "hide")


def test_checkpoints_from_before_the_input_id_table_load_without_it():
    d = SMALL_MODEL.to_dict()
    d.pop("input_id_embedding")
    assert PinnerFormerConfig.from_dict(d).input_id_embedding is False
    assert PinnerFormerConfig().input_id_embedding is True


def test_last_window_end_trains_each_users_most_recent_actions(toy):
    cfg = replace(FAST, objective="sasrec", window_end="last")
    sampler = make_sampler(toy, SMALL_MODEL, cfg)
    batch = sampler.sample(np.random.default_rng(3), 16)
    seq = sampler.seq
    rows = batch.owner[np.unique(batch.row, return_index=True)[1]]
    newest = batch.inputs["item_idx"][:, 0]
    assert (newest == seq.item_idx[seq.offsets[rows + 1] - 1]).all()
    with pytest.raises(ValueError, match="window_end"):
        DenseAllActionSampler(seq, sampler.pos, 28, 32, window_end="first")


def test_cli_recipe_sets_defaults_and_typed_options_win(tmp_path, toy):
    data = save_dataset(toy, tmp_path / "data")
    runner = CliRunner()
    args = ["train", "pinnerformer", "--data", str(data), "--steps", "2", "--layers", "1", "--hidden", "32",
            "--no-progress", "--no-eval", "--recipe", "next_item"]
    res = runner.invoke(main, args + ["--out", str(tmp_path / "a.pt")])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(tmp_path / "a.pt", "pinnerformer")["config"]
    assert cfg["train"]["objective"] == "sasrec" and cfg["train"]["negatives"] == "full"
    assert cfg["train"]["window_end"] == "last" and cfg["model"]["dropout"] == 0.4
    assert cfg["model"]["num_layers"] == 1 and cfg["train"]["steps"] == 2
    res = runner.invoke(main, args + ["--out", str(tmp_path / "b.pt"), "--objective", "dense_all_action"])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(tmp_path / "b.pt", "pinnerformer")["config"]
    assert cfg["train"]["objective"] == "dense_all_action" and cfg["train"]["negatives"] == "full"
