"""The ranker and its serving module: shapes, serving == training path,
TorchScript / ONNX parity, unknown items, empty history, checkpoint loading."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pinrank.backend import schema
from pinrank.models.checkpoints import save_checkpoint
from pinrank.models.ranker import (
    Ranker,
    RankerConfig,
    RankerServing,
    example_serving_inputs,
    load_serving_module,
)
from pinrank.models.realtime import MODES

NUM_ITEMS = 50
INPUT_NAMES = [s.name for s in schema.RANKER_INPUTS]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _ranker(mode: str = "fused", seed: int = 0, **kw) -> Ranker:
    torch.manual_seed(seed)
    emb = np.random.default_rng(seed).normal(size=(NUM_ITEMS, schema.ITEM_EMB_DIM)).astype(np.float32)
    return Ranker(RankerConfig(mode=mode, **kw), item_emb=emb).eval()


def _broadcast(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Serving inputs -> forward_batch inputs (one row per candidate)."""
    cand, user, *seq, ctx = inputs
    n = cand.shape[0]
    return (cand, user.expand(n, -1), *(s.expand(n, -1) for s in seq), ctx.expand(n, -1))


@pytest.mark.parametrize("mode", MODES)
def test_shapes_and_serving_matches_forward_batch(mode: str):
    model = _ranker(mode)
    serving = RankerServing(model).eval()
    inputs = example_serving_inputs(9, NUM_ITEMS)
    with torch.no_grad():
        probs = serving(*inputs)
        logits = model.forward_batch(*_broadcast(inputs))
    assert probs.shape == (9, schema.NUM_HEADS) and probs.dtype == torch.float32
    assert logits.shape == (9, schema.NUM_HEADS)
    assert ((probs > 0) & (probs < 1)).all()
    torch.testing.assert_close(probs, torch.sigmoid(logits), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", [pytest.param("early", marks=pytest.mark.slow), "fused", "avgpool"])
def test_torchscript_parity_dynamic_n(mode: str):
    serving = RankerServing(_ranker(mode)).eval()
    scripted = torch.jit.script(serving)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        for n in (1, 1000):
            inputs = example_serving_inputs(n, NUM_ITEMS, seed=n)
            eager = serving(*inputs)
            assert (eager - scripted(*inputs)).abs().max() <= 1e-5
            assert (eager - loaded(*inputs)).abs().max() <= 1e-5


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("kw", [{}, {"use_realtime": False, "use_pinnerformer": False}])
def test_onnx_export_dynamic_n_keeps_the_contract(kw: dict):
    ort = pytest.importorskip("onnxruntime")
    serving = RankerServing(_ranker("fused", **kw)).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        serving, example_serving_inputs(4, NUM_ITEMS), buf, dynamo=False, opset_version=17,
        input_names=INPUT_NAMES, output_names=["probs"],
        dynamic_axes={"cand_idx": {0: "N"}, "probs": {0: "N"}},
    )
    sess = ort.InferenceSession(buf.getvalue())
    # every contract input survives export, even ones an ablated model ignores
    assert [i.name for i in sess.get_inputs()] == INPUT_NAMES
    for n in (1, 37):
        inputs = example_serving_inputs(n, NUM_ITEMS, seed=n)
        got = sess.run(None, {k: v.numpy() for k, v in zip(INPUT_NAMES, inputs)})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, serving(*inputs).numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_empty_history_all_in_window_and_unknown_items_are_finite(mode: str):
    model = _ranker(mode)
    serving = RankerServing(model).eval()
    cand, user, item, action, surface, age, ctx = example_serving_inputs(6, NUM_ITEMS, history=40)
    cand[:3] = 0  # unknown candidates
    item[:10] = 0  # unknown items in the history
    empty = (torch.zeros_like(item), torch.zeros_like(action), torch.zeros_like(surface), torch.zeros_like(age))
    with torch.no_grad():
        assert torch.isfinite(serving(cand, user, item, action, surface, age, ctx)).all()
        assert torch.isfinite(serving(cand, user, *empty, ctx)).all()
    # training path with every action inside the time window
    model.train()
    n = cand.shape[0]
    b = _broadcast((cand, user, item, action, surface, age * 0.0 + 0.1, ctx))
    logits = model.forward_batch(*b, mask_window_h=torch.full((n,), 24.0))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_candidate_uses_learned_oov_vector():
    model = _ranker("fused")
    idx = torch.tensor([0, 1])
    emb = model.item_lookup(idx)
    torch.testing.assert_close(emb[0], model.oov_emb.detach())
    torch.testing.assert_close(emb[1], model.item_table[1])
    assert model.item_table[0].abs().sum() == 0 and not model.item_table.requires_grad


def test_ablations_change_the_input_width():
    full = _ranker("fused")
    bare = _ranker("fused", use_realtime=False, use_pinnerformer=False, use_context=False)
    assert bare.in_dim == schema.ITEM_EMB_DIM
    assert full.in_dim == schema.ITEM_EMB_DIM + schema.USER_EMB_DIM + schema.CONTEXT_DIM + full.realtime.out_dim
    inputs = example_serving_inputs(5, NUM_ITEMS)
    with torch.no_grad():
        assert RankerServing(bare)(*inputs).shape == (5, schema.NUM_HEADS)


def test_config_roundtrip_and_validation():
    cfg = RankerConfig(mode="early", mlp_dims=(64, 32), use_pinnerformer=False)
    assert RankerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="mode"):
        RankerConfig(mode="late")


def test_load_serving_module_from_checkpoint(tmp_path):
    model = _ranker("early")
    path = save_checkpoint(tmp_path / "r.pt", kind="ranker",
                           config={"ranker": model.config.to_dict(), "num_items": NUM_ITEMS}, model=model)
    serving = load_serving_module(path)
    assert not serving.training and serving.num_items == NUM_ITEMS
    inputs = example_serving_inputs(11, NUM_ITEMS)
    with torch.no_grad():
        torch.testing.assert_close(serving(*inputs), RankerServing(model)(*inputs))
    save_checkpoint(tmp_path / "p.pt", kind="pinnerformer", config={}, model=model)
    with pytest.raises(ValueError, match="ranker"):
        load_serving_module(tmp_path / "p.pt")


def test_user_known_is_ignored_without_pinnerformer():
    inputs = list(example_serving_inputs(4, NUM_ITEMS))
    col = schema.CONTEXT_FEATURES.index("user_known")
    flipped = [t.clone() for t in inputs]
    flipped[-1][col] = 1.0 - flipped[-1][col]
    with torch.no_grad():
        bare = RankerServing(_ranker("fused", use_pinnerformer=False))
        torch.testing.assert_close(bare(*inputs), bare(*flipped))
        full = RankerServing(_ranker("fused"))
        assert not torch.allclose(full(*inputs), full(*flipped))
