"""PinnerFormer ablation groundwork: objective / negatives / logQ variants and the eval metrics."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.data.dataset import Dataset, load_dataset, save_dataset
from pinrank.data.synthetic import SyntheticConfig, config_from_meta, generate
from pinrank.models.checkpoints import load_checkpoint
from pinrank.models.pinnerformer import PinnerFormer, PinnerFormerConfig, UserTimelines
from pinrank.train.pinnerformer import (
    PinnerFormerTrainConfig,
    evaluate_recall,
    make_sampler,
    train_pinnerformer,
    train_step,
)
from pinrank.train.pinnerformer_ablation import VARIANTS
from pinrank.train.pinnerformer_ablation import main as ablation_main
from pinrank.train.pinnerformer_eval import (
    INFERENCE_MODES,
    eval_events,
    evaluate_inference_modes,
    evaluate_pinnerformer,
    history_mean_embeddings,
    interest_entropy,
    interest_oracle_top_k,
    live_cut_ms,
    p90_coverage,
    popularity_top_k,
    recall_at_k,
    top_k,
)
from pinrank.train.pinnerformer_loss import (
    NEGATIVES,
    OBJECTIVES,
    DenseAllActionLoss,
    DenseAllActionSampler,
)
from testkit.toy_data import (
    make_toy_dataset,
)

SMALL_MODEL = PinnerFormerConfig(num_layers=1, hidden=32, heads=2, max_len=32, item_hidden=64)
FAST = PinnerFormerTrainConfig(steps=2, batch_size=8, positions_per_seq=4, num_random_negatives=64,
                               log_every=1, checkpoint_every=1000, warmup_steps=1)


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return make_toy_dataset(num_users=80, num_items=150, actions_per_user=30, seed=5)


def _pos_ranges(sampler: DenseAllActionSampler, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positives index range [start, end) of the owner of each flat sequence action."""
    seq, pos = sampler.seq, sampler.pos
    seq_row = np.searchsorted(seq.offsets, src, side="right") - 1
    prow = pos.rows_of(seq.user_ids[seq_row])
    return pos.offsets[prow], pos.offsets[prow + 1]


def _next_positive(sampler: DenseAllActionSampler, src: np.ndarray) -> np.ndarray:
    seq, pos = sampler.seq, sampler.pos
    start, end = _pos_ranges(sampler, src)
    out = []
    for s, a, b in zip(src, start, end):
        later = a + np.flatnonzero(pos.ts_ms[a:b] > seq.ts_ms[s])
        out.append(later[0])
    return np.asarray(out)


# --- sampler ------------------------------------------------------------------------


def test_next_action_emits_one_label_per_sequence_the_next_positive(toy):
    sampler = make_sampler(toy, SMALL_MODEL, replace(FAST, objective="next_action"))
    rng = np.random.default_rng(0)
    for _ in range(10):
        b = sampler.sample(rng, 8)
        assert np.array_equal(b.row, np.arange(8)) and (b.col == 0).all()
        assert np.array_equal(b.label_flat, _next_positive(sampler, b.src_flat))
        assert np.array_equal(b.label, sampler.pos.item_idx[b.label_flat])


def test_sasrec_labels_every_labelled_position_with_its_next_positive(toy):
    sampler = make_sampler(toy, SMALL_MODEL, replace(FAST, objective="sasrec", positions_per_seq=2))
    rng = np.random.default_rng(1)
    for _ in range(10):
        b = sampler.sample(rng, 8)
        assert np.array_equal(b.label_flat, _next_positive(sampler, b.src_flat))
        # Every position of each window with a later positive is used (not capped at positions_per_seq).
        for r in range(8):
            cols = b.col[b.row == r]
            valid = b.inputs["action"][r] > 0
            ts = b.inputs["ts_ms"][r]
            src = b.src_flat[b.row == r]
            _, end = _pos_ranges(sampler, src[:1])
            last_pos_ts = sampler.pos.ts_ms[end[0] - 1]
            expected = np.flatnonzero(valid & (ts < last_pos_ts))
            assert np.array_equal(np.sort(cols), expected)


def test_all_action_labels_newest_position_with_distinct_future_positives(toy):
    window_days = 7.0
    cfg = replace(FAST, objective="all_action", positions_per_seq=5, future_window_days=window_days)
    sampler = make_sampler(toy, SMALL_MODEL, cfg)
    rng = np.random.default_rng(2)
    multi = 0
    for _ in range(10):
        b = sampler.sample(rng, 8)
        assert (b.col == 0).all()
        src_ts, lab_ts = sampler.seq.ts_ms[b.src_flat], sampler.pos.ts_ms[b.label_flat]
        assert (lab_ts > src_ts).all() and (lab_ts <= src_ts + int(window_days * MS_PER_DAY)).all()
        for r in range(8):
            labs = b.label_flat[b.row == r]
            assert 1 <= labs.size <= 5 and np.unique(labs).size == labs.size
            lo, hi = sampler.lo[b.src_flat[b.row == r][0]], sampler.hi[b.src_flat[b.row == r][0]]
            assert labs.size == min(5, hi - lo)
            multi += labs.size > 1
    assert multi > 0


def test_unknown_objective_and_negatives_are_rejected(toy):
    with pytest.raises(ValueError, match="objective"):
        make_sampler(toy, SMALL_MODEL, replace(FAST, objective="nope"))
    with pytest.raises(ValueError, match="negatives"):
        DenseAllActionLoss(10, negatives="nope")


# --- loss -----------------------------------------------------------------------------


def _loss_inputs():
    g = torch.Generator().manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    label_emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    neg_emb = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    return user, torch.arange(1, 7), label_emb, torch.arange(6), torch.arange(20, 25), neg_emb


@pytest.mark.parametrize("negatives,expected", [("mixed", 6 + 5), ("in_batch", 6), ("random", 5)])
def test_negatives_choose_candidates(negatives, expected):
    loss_fn = DenseAllActionLoss(100, negatives=negatives)
    loss, stats = loss_fn(*_loss_inputs())
    assert stats["num_candidates"] == expected and torch.isfinite(loss)


def test_random_negatives_ignore_other_labels_and_logq_switch():
    user, label, label_emb, owner, neg, neg_emb = _loss_inputs()
    def batch_vs_rows(negatives: str) -> tuple[torch.Tensor, torch.Tensor]:
        whole, _ = DenseAllActionLoss(100, negatives=negatives)(user, label, label_emb, owner, neg, neg_emb)
        rows = [DenseAllActionLoss(100, negatives=negatives)(user[i:i + 1], label[i:i + 1], label_emb[i:i + 1],
                                                               owner[i:i + 1], neg, neg_emb)[0] for i in range(6)]
        return whole, torch.stack(rows).mean()

    # Random negatives only: a row's loss does not depend on the other rows' labels.
    a, a_rows = batch_vs_rows("random")
    assert torch.isfinite(a) and torch.allclose(a, a_rows, atol=1e-5)
    m, m_rows = batch_vs_rows("mixed")
    assert not torch.allclose(m, m_rows, atol=1e-3)
    # Without logQ the loss is the plain sampled softmax over the candidates.
    plain, _ = DenseAllActionLoss(100, negatives="random", logq=False)(user, label, label_emb, owner, neg, neg_emb)
    tau = 0.07
    logits = torch.cat([(user * label_emb).sum(-1, keepdim=True), user @ neg_emb.T], dim=1) / tau
    ref = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(plain, ref, atol=1e-5)
    # Uniform random negatives only: logQ is the same constant on every logit, so it changes nothing;
    # with in-batch negatives it does.
    assert torch.allclose(plain, a, atol=1e-5)
    no_q, _ = DenseAllActionLoss(100, negatives="mixed", logq=False)(user, label, label_emb, owner, neg, neg_emb)
    assert not torch.allclose(no_q, m, atol=1e-3)


# --- training ---------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_trains_with_finite_loss(objective, toy):
    torch.manual_seed(0)
    model = PinnerFormer(SMALL_MODEL, toy.item_emb)
    cfg = replace(FAST, objective=objective)
    sampler = make_sampler(toy, SMALL_MODEL, cfg)
    loss_fn = DenseAllActionLoss(toy.num_items)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(2):
        loss, _ = train_step(model, loss_fn, sampler, rng, cfg)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("negatives,logq", [(n, True) for n in NEGATIVES] + [("mixed", False)])
def test_each_negatives_variant_trains_and_is_checkpointed(negatives, logq, toy, tmp_path):
    cfg = replace(FAST, negatives=negatives, logq=logq, objective="all_action")
    metrics = train_pinnerformer(toy, tmp_path / "pf.pt", cfg, SMALL_MODEL, progress=False, evaluate=False)
    assert math.isfinite(metrics["final_loss"])
    saved = load_checkpoint(tmp_path / "pf.pt", "pinnerformer")["config"]["train"]
    assert (saved["negatives"], saved["logq"], saved["objective"]) == (negatives, logq, "all_action")


def test_cli_ablation_options(tmp_path, toy):
    data = save_dataset(toy, tmp_path / "data")
    out = tmp_path / "pf.pt"
    res = CliRunner().invoke(main, ["train", "pinnerformer", "--data", str(data), "--out", str(out), "--steps", "1",
                                    "--batch-size", "4", "--layers", "1", "--hidden", "32", "--no-progress",
                                    "--no-eval", "--objective", "sasrec", "--negatives", "in_batch", "--no-logq"])
    assert res.exit_code == 0, res.output
    saved = load_checkpoint(out, "pinnerformer")["config"]["train"]
    assert (saved["objective"], saved["negatives"], saved["logq"]) == ("sasrec", "in_batch", False)
    res = CliRunner().invoke(main, ["train", "pinnerformer", "--data", str(data), "--out", str(out),
                                    "--objective", "bogus"])
    assert res.exit_code == 2


@pytest.mark.slow
def test_cli_paper_size_trains_the_papers_tower(tmp_path, toy):
    data = save_dataset(toy, tmp_path / "data")
    out = tmp_path / "paper.pt"
    res = CliRunner().invoke(main, ["train", "pinnerformer", "--data", str(data), "--out", str(out), "--steps", "1",
                                    "--batch-size", "2", "--positions", "2", "--paper-size", "--no-progress",
                                    "--no-eval"])
    assert res.exit_code == 0, res.output
    model = load_checkpoint(out, "pinnerformer")["config"]["model"]
    assert (model["num_layers"], model["hidden"], model["out_dim"]) == (6, 768, 256)


# --- metrics ------------------------------------------------------------------------


def test_recall_at_k_hand():
    top = np.array([[1, 2, 3], [4, 5, 6]])
    truth = [np.array([1, 9]), np.array([4, 5, 6, 7])]
    assert recall_at_k(top, truth) == pytest.approx((0.5 + 0.75) / 2)


def test_p90_coverage_hand():
    # Appearances: item 1 x8, item 2 x1, item 3 x1 (total 10; 90% = 9 -> items 1 and 2).
    top = np.array([[1, 2], [1, 3], [1, 1], [1, 1], [1, 1]])
    assert p90_coverage(top, num_items=10) == pytest.approx(2 / 10)
    # Everyone gets the same single list of 2 items: 90% needs both.
    assert p90_coverage(np.tile([5, 6], (7, 1)), num_items=100) == pytest.approx(2 / 100)
    # Uniform over 10 distinct items: 9 of them cover 90%.
    assert p90_coverage(np.arange(1, 11).reshape(2, 5), num_items=20) == pytest.approx(9 / 20)


def test_interest_entropy_hand():
    topic_of = np.array([0, 0, 0, 1, 1, 2])  # index -> topic
    top = np.array([[1, 2], [1, 3], [3, 5]])  # one topic; two topics 50/50; topics {1, 2} 50/50
    assert interest_entropy(top, topic_of) == pytest.approx((0 + math.log(2) + math.log(2)) / 3)
    assert interest_entropy(np.array([[1, 3, 5, 2]]), topic_of) == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_top_k_skips_oov_and_history_mean_hand():
    items = np.array([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]], dtype=np.float32)
    assert top_k(np.array([[1.0, 0.1]]), items, 2).tolist() == [[1, 3]]

    class _Hist:  # two users: [item 1, item 2] and [item 1]
        item_idx = np.array([1, 2, 1])
        offsets = np.array([0, 2, 3])

    hm = history_mean_embeddings(_Hist(), np.array([0, 1]), items)  # type: ignore[arg-type]
    assert np.allclose(hm, [[0.7071, 0.7071], [1.0, 0.0]], atol=1e-3)
    assert top_k(hm, items, 1).tolist() == [[3], [1]]


def test_popularity_top_k_counts_train_positives_only(toy):
    k = 5
    top = popularity_top_k(toy, k)
    train_pos = UserTimelines(toy, schema.POSITIVE_ACTIONS, before_ms=toy.train_end_ms)
    counts = np.bincount(train_pos.item_idx, minlength=toy.num_items + 1)
    assert 0 not in top and sorted(counts[top].tolist(), reverse=True) == counts[top].tolist()
    assert counts[top].min() >= np.sort(counts[1:])[::-1][k - 1]


def test_evaluate_pinnerformer_returns_all_metrics(toy):
    torch.manual_seed(0)
    model = PinnerFormer(SMALL_MODEL, toy.item_emb)
    res = evaluate_pinnerformer(model, toy, k=10, entropy_k=20)
    assert res["eval_users"] > 0
    for name in ("pinnerformer", "history_mean", "popularity"):
        m = res[name]
        assert 0.0 <= m["recall"] <= 1.0 and 0.0 < m["p90_coverage"] <= 1.0
        assert 0.0 <= m["interest_entropy"] <= math.log(20)
    # Popularity retrieves the same 10 items for everyone: 90% of appearances need 9 of them.
    assert res["popularity"]["p90_coverage"] == pytest.approx(9 / toy.num_items)
    # Recall is reused from evaluate_recall: same users, same popularity baseline.
    ref = evaluate_recall(model, toy, k=10)
    assert res["eval_users"] == ref["eval_users"]
    assert res["pinnerformer"]["recall"] == pytest.approx(ref["recall"])
    assert res["popularity"]["recall"] == pytest.approx(ref["pop_recall"])


def test_interest_oracle_only_on_synthetic_data_and_beats_popularity(tmp_path, toy):
    assert config_from_meta(toy.meta) is None and interest_oracle_top_k(toy, toy.item_ids[:3], 5) is None
    cfg = SyntheticConfig(users=300, items=600, topics=10, days=12, eval_days=3, seed=4)
    ds = load_dataset(generate(cfg, tmp_path / "synth", progress=False))
    assert config_from_meta(ds.meta) == cfg
    res = evaluate_pinnerformer(PinnerFormer(SMALL_MODEL, ds.item_emb), ds, k=10, entropy_k=20)
    assert res["interest_oracle"]["recall"] > res["popularity"]["recall"]


def test_live_cut_follows_the_inference_mode():
    t0 = 10 * MS_PER_DAY
    ts = np.array([t0, t0 + 5, t0 + MS_PER_DAY - 1, t0 + MS_PER_DAY, t0 + 3 * MS_PER_DAY + 7])
    assert (live_cut_ms("once", t0, ts) == t0).all()
    assert live_cut_ms("daily", t0, ts).tolist() == [t0, t0, t0, t0 + MS_PER_DAY, t0 + 3 * MS_PER_DAY]
    assert live_cut_ms("realtime", t0, ts).tolist() == ts.tolist()
    with pytest.raises(ValueError, match="unknown inference mode"):
        live_cut_ms("hourly", t0, ts)


def test_eval_events_are_first_positives_in_the_window(toy):
    users, items, ts = eval_events(toy, window_days=14.0)
    assert (ts >= toy.train_end_ms).all() and (ts < toy.train_end_ms + 14 * MS_PER_DAY).all()
    pairs = set(zip(users.tolist(), items.tolist()))
    assert len(pairs) == users.size  # one event per (user, item)
    pos = UserTimelines(toy, schema.POSITIVE_ACTIONS)
    for u, i, t in list(zip(users, items, ts))[:20]:
        r = pos.rows_of(np.array([u]))[0]
        sl = slice(pos.offsets[r], pos.offsets[r + 1])
        same = (pos.item_idx[sl] == i) & (pos.ts_ms[sl] >= toy.train_end_ms)
        assert pos.ts_ms[sl][same].min() == t


def test_inference_once_is_plain_recall_and_modes_differ(toy):
    torch.manual_seed(0)
    model = PinnerFormer(SMALL_MODEL, toy.item_emb)
    modes = evaluate_inference_modes(model, toy, k=10)
    assert set(modes) == set(INFERENCE_MODES)
    assert modes["once"] == pytest.approx(evaluate_pinnerformer(model, toy, k=10)["pinnerformer"]["recall"])
    for v in modes.values():
        assert 0.0 <= v <= 1.0
    # Realtime embeddings see eval-period actions, so they are not the `once` ones.
    assert modes["realtime"] != pytest.approx(modes["once"], abs=1e-9)


def test_ablation_runner_writes_one_row_per_variant(toy, tmp_path):
    data = save_dataset(toy, tmp_path / "data")
    out = tmp_path / "pinnerformer.json"
    result = CliRunner().invoke(ablation_main, ["--data", str(data), "--out", str(out),
                                                "--work", str(tmp_path / "w"), "--steps", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [(r["objective"], r["negatives"], r["logq"]) for r in report["variants"]] == list(VARIANTS)
    for row in report["variants"]:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and 0.0 < row["p90_coverage_at_10"] <= 1.0
    assert set(report["baselines"]) == {"popularity", "history_mean"}
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| ") >= len(VARIANTS) + 2 and "| once | daily | realtime |" in table
    mixed = {o for o, n, q in VARIANTS if n == "mixed" and q}
    assert set(report["inference"]) == mixed
    for modes in report["inference"].values():
        assert set(modes) == set(INFERENCE_MODES) and all(0.0 <= v <= 1.0 for v in modes.values())


def test_ablation_runner_runs_a_chosen_subset(toy, tmp_path):
    data = save_dataset(toy, tmp_path / "data")
    out = tmp_path / "pf.json"
    result = CliRunner().invoke(ablation_main, ["--data", str(data), "--out", str(out),
                                                "--work", str(tmp_path / "w"), "--steps", "2", "--threads", "1",
                                                "--variants", "next_action-mixed", "--eval-window-days", "30"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["objective"] for r in report["variants"]] == ["next_action"]
    assert report["eval_window_days"] == 30.0 and set(report["inference"]) == {"next_action"}
    bad = CliRunner().invoke(ablation_main, ["--data", str(data), "--variants", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
