"""The realtime (TransAct) encoder: masks, both layouts, cost, finiteness."""

from __future__ import annotations

import pytest
import torch

from pinrank.backend import schema
from pinrank.models.realtime import MODES, RealtimeEncoder, keep_mask, masked_mean_pool

L = schema.REALTIME_SEQ_LEN
D = schema.ITEM_EMB_DIM


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _seq(r: int, lengths: list[int], seed: int = 0, max_age_h: float = 72.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    action = torch.zeros(r, L, dtype=torch.int64)
    surface = torch.zeros(r, L, dtype=torch.int64)
    age = torch.zeros(r, L)
    item = torch.zeros(r, L, D)
    for i, n in enumerate(lengths):
        action[i, :n] = torch.randint(1, schema.NUM_ACTION_IDS, (n,), generator=g)
        surface[i, :n] = torch.randint(1, schema.NUM_SURFACE_IDS, (n,), generator=g)
        age[i, :n] = torch.sort(torch.rand(n, generator=g) * max_age_h).values
        item[i, :n] = torch.randn(n, D, generator=g)
    return {"seq_item_emb": item, "seq_action": action, "seq_surface": surface, "seq_age_h": age}


def _run(enc: RealtimeEncoder, cand: torch.Tensor, req: torch.Tensor, s: dict[str, torch.Tensor],
         window: torch.Tensor | None = None) -> torch.Tensor:
    return enc(cand, req, s["seq_item_emb"], s["seq_action"], s["seq_surface"], s["seq_age_h"], window)


def test_keep_mask_window_never_masks_newest_token():
    action = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 0], [4, 4, 4, 4]])
    age = torch.tensor([[0.1, 0.5, 30.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    assert keep_mask(action, age, None).tolist() == [[True, True, True, False], [False] * 4, [True] * 4]
    keep = keep_mask(action, age, torch.tensor([24.0, 24.0, 1000.0]))
    # newest (position 0) survives any window, padding is never kept
    assert keep.tolist() == [[True, False, True, False], [False] * 4, [True, False, False, False]]
    assert keep_mask(action, age, torch.zeros(3)).equal(keep_mask(action, age, None))
    # random windows: position 0 of a real sequence is always kept
    s = _seq(64, [L] * 64, max_age_h=2.0)
    w = torch.rand(64, generator=torch.Generator().manual_seed(1)) * 24.0
    assert keep_mask(s["seq_action"], s["seq_age_h"], w)[:, 0].all()


@pytest.mark.parametrize("mode", MODES)
def test_output_shapes(mode: str):
    enc = RealtimeEncoder(mode).eval()
    s = _seq(3, [5, 0, L])
    cand = torch.randn(7, D)
    req = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    out = _run(enc, cand, req, s)
    expected = {"early": 11 * 96, "fused": 3 * 64, "avgpool": 64}[mode]
    assert out.shape == (7, expected) == (7, enc.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", MODES)
def test_empty_history_and_all_masked_are_finite_and_zero(mode: str):
    enc = RealtimeEncoder(mode)
    enc.train()  # dropout on, window on: the training path must stay finite too
    s = _seq(2, [0, L], max_age_h=0.5)
    cand = torch.randn(4, D, requires_grad=True)
    req = torch.tensor([0, 0, 1, 1])
    out = _run(enc, cand, req, s, window=torch.tensor([24.0, 24.0]))
    assert torch.isfinite(out).all()
    if mode in ("early", "avgpool"):
        assert out[:2].abs().max() == 0  # nothing to attend to -> exact zeros
    else:  # only the first-k projection's bias is left
        assert out[:2, :64].abs().max() == 0 and out[:2, 64:128].abs().max() == 0
    out.sum().backward()
    if mode != "avgpool":  # avgpool never reads the candidate
        assert torch.isfinite(cand.grad).all()
    enc.eval()
    assert torch.isfinite(_run(enc, cand, req, s)).all()


@pytest.mark.parametrize("mode", MODES)
def test_grouped_equals_one_request_at_a_time(mode: str):
    enc = RealtimeEncoder(mode).eval()
    s = _seq(3, [12, 0, 60], seed=3)
    cand = torch.randn(8, D)
    req = torch.tensor([2, 0, 1, 2, 0, 0, 2, 1])  # deliberately unsorted
    grouped = _run(enc, cand, req, s)
    for r in range(3):
        rows = (req == r).nonzero().flatten()
        one = {k: v[r:r + 1] for k, v in s.items()}
        single = _run(enc, cand[rows], torch.zeros(rows.numel(), dtype=torch.int64), one)
        torch.testing.assert_close(grouped[rows], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_trimming_trailing_padding_changes_nothing(mode: str):
    enc = RealtimeEncoder(mode).eval()
    s = _seq(2, [4, 7], seed=5)
    cand = torch.randn(5, D)
    req = torch.tensor([0, 0, 1, 1, 1])
    full = _run(enc, cand, req, s)
    trimmed = _run(enc, cand, req, {k: v[:, :7] for k, v in s.items()})
    torch.testing.assert_close(full, trimmed, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_window_masked_actions_do_not_leak(mode: str):
    enc = RealtimeEncoder(mode).eval()
    s = _seq(1, [30], seed=7)
    s["seq_age_h"][0, :30] = torch.linspace(0.0, 48.0, 30)
    window = torch.tensor([20.0])  # masks positions 1.. with age < 20h
    cand = torch.randn(3, D)
    req = torch.zeros(3, dtype=torch.int64)
    before = _run(enc, cand, req, s, window)
    changed = {k: v.clone() for k, v in s.items()}
    changed["seq_item_emb"][0, 1:5] = torch.randn(4, D)
    changed["seq_action"][0, 1:5] = 3
    torch.testing.assert_close(_run(enc, cand, req, changed, window), before)
    changed["seq_item_emb"][0, 0] += 1.0  # the newest action is never masked
    assert not torch.allclose(_run(enc, cand, req, changed, window), before)


def test_masked_mean_pool_averages_kept_tokens_only():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    keep = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean_pool(x, keep).tolist() == [[2.0, 3.0], [0.0, 0.0]]


def test_avgpool_ignores_the_candidate_and_runs_no_transformer():
    enc = RealtimeEncoder("avgpool").eval()
    s = _seq(1, [L])
    out = _run(enc, torch.randn(4, D), torch.zeros(4, dtype=torch.int64), s)
    assert torch.equal(out[0], out[3])  # no candidate fusion: one vector per request
    assert _tokens_encoded(enc, 500) == 0


def _tokens_encoded(enc: RealtimeEncoder, n: int) -> int:
    seen: list[int] = []
    hook = enc.layers[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0] * inp[0].shape[1]))
    try:
        with torch.no_grad():
            _run(enc, torch.randn(n, D), torch.zeros(n, dtype=torch.int64), _seq(1, [L]))
    finally:
        hook.remove()
    return sum(seen)


def test_fused_cost_is_l_plus_n_early_is_n_times_l():
    fused, early = RealtimeEncoder("fused").eval(), RealtimeEncoder("early").eval()
    assert _tokens_encoded(fused, 1) == _tokens_encoded(fused, 500) == L
    assert _tokens_encoded(early, 1) == L
    assert _tokens_encoded(early, 500) == 500 * L


def test_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        RealtimeEncoder("late")
