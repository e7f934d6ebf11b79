"""PinnerFormer model and shared layers: shapes, masks, causality, export parity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pinrank.backend import schema
from pinrank.backend.units import MS_PER_HOUR
from pinrank.models.layers import (
    MLP,
    MultiHeadAttention,
    TransformerBlock,
    l2_normalize,
    newest_first_causal_mask,
)
from pinrank.models.pinnerformer import (
    INPUT_NAMES,
    PinnerFormer,
    PinnerFormerConfig,
    UserTimelines,
    to_tensors,
)
from testkit.toy_data import make_toy_dataset

T0 = 1_767_571_200_000


def small_cfg(**over) -> PinnerFormerConfig:
    return PinnerFormerConfig(**{"num_layers": 2, "hidden": 32, "heads": 4, "max_len": 16, "item_hidden": 32, **over})


def make_model(seed: int = 0, num_items: int = 50, **over) -> PinnerFormer:
    torch.manual_seed(seed)
    emb = np.random.default_rng(seed).normal(size=(num_items, schema.ITEM_EMB_DIM)).astype(np.float32)
    model = PinnerFormer(small_cfg(**over), emb).eval()
    # Give the zero-initialised id embeddings some signal so they are exercised.
    with torch.no_grad():
        model.item_id_emb.weight.normal_(0, 0.1)
    return model


def make_inputs(batch: int = 3, length: int = 10, seed: int = 0,
                lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gaps = torch.randint(1, 5 * MS_PER_HOUR, (batch, length), generator=g)
    ts = T0 - torch.cumsum(gaps, dim=1)  # newest first: decreasing
    x = {
        "item_idx": torch.randint(1, 51, (batch, length), generator=g),
        "action": torch.randint(1, schema.NUM_ACTION_IDS, (batch, length), generator=g),
        "surface": torch.randint(0, schema.NUM_SURFACE_IDS, (batch, length), generator=g),
        "duration_ms": torch.randint(-1, 60_000, (batch, length), generator=g),
        "ts_ms": ts,
    }
    for b, n in enumerate(lengths or []):
        for k in INPUT_NAMES:
            x[k][b, n:] = 0
    return x


# --- layers -------------------------------------------------------------------


def test_l2_normalize_unit_rows_and_zero_safe():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    y = l2_normalize(x)
    assert torch.allclose(y[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(y[1], torch.zeros(2))


def test_causal_mask_is_newest_first():
    m = newest_first_causal_mask(3, torch.device("cpu"))
    # Row i may see j >= i (itself and older); True = blocked.
    assert m.tolist() == [[False, False, False], [True, False, False], [True, True, False]]


def test_attention_all_masked_rows_are_zero_not_nan():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 4, 8)
    kpm = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out = attn(x, None, kpm)
    assert torch.isfinite(out).all()
    # Fully masked query rows give out_proj(0) = its bias.
    assert torch.allclose(out[1], attn.out_proj.bias.expand(4, 8))
    # Masked keys have no influence on unmasked ones.
    x2 = x.clone()
    x2[0, 2:] = 100.0
    assert torch.allclose(attn(x2, None, kpm)[0, :2], out[0, :2], atol=1e-6)


def test_block_and_mlp_script():
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, 32, dropout=0.1).eval()
    x = torch.randn(2, 5, 16)
    mask = newest_first_causal_mask(5, x.device)
    kpm = torch.tensor([[False] * 3 + [True] * 2, [True] * 5])
    scripted = torch.jit.script(block)
    assert torch.allclose(scripted(x, kpm, mask), block(x, kpm, mask), atol=1e-6)
    mlp = MLP([4, 8, 2])
    assert torch.jit.script(mlp)(torch.ones(3, 4)).shape == (3, 2)


# --- model --------------------------------------------------------------------


def test_shapes_and_unit_norm():
    model = make_model()
    x = make_inputs(lengths=[10, 4, 1])
    out = model(**x)
    assert out.shape == (3, 10, schema.USER_EMB_DIM)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 10), atol=1e-5)
    user = model.embed_users(**x)
    assert torch.allclose(user, out[:, 0], atol=1e-6)
    items = model.encode_items(torch.tensor([[1, 2], [0, 50]]))
    assert items.shape == (2, 2, schema.USER_EMB_DIM)
    assert model.all_item_embeddings().shape == (51, schema.USER_EMB_DIM)
    assert torch.allclose(model.all_item_embeddings()[[1, 2]], items[0], atol=1e-6)


def test_item_table_is_frozen_buffer_with_zero_pad_row():
    model = make_model()
    assert "item_table" in model.state_dict()
    assert not any(p is model.item_table for p in model.parameters())
    assert torch.equal(model.item_table[0], torch.zeros(schema.ITEM_EMB_DIM))


@pytest.mark.parametrize("time_since_latest", [True, False])
def test_position_never_sees_newer_content(time_since_latest):
    model = make_model(time_since_latest=time_since_latest)
    x = make_inputs(batch=2, length=10, lengths=[10, 7])
    base = model(**x)
    i = 4
    y = {k: v.clone() for k, v in x.items()}
    g = torch.Generator().manual_seed(9)
    y["item_idx"][:, :i] = torch.randint(1, 51, (2, i), generator=g)
    y["action"][:, :i] = torch.randint(1, schema.NUM_ACTION_IDS, (2, i), generator=g)
    y["surface"][:, :i] = torch.randint(0, schema.NUM_SURFACE_IDS, (2, i), generator=g)
    y["duration_ms"][:, :i] = 12345
    if not time_since_latest:
        # Without the paper's "time since latest" feature even newer timestamps are invisible.
        y["ts_ms"][:, :i] = y["ts_ms"][:, :i] + 7 * MS_PER_HOUR
    out = model(**y)
    assert torch.allclose(out[:, i:], base[:, i:], atol=1e-5)
    assert not torch.allclose(out[:, :i], base[:, :i], atol=1e-3)


def test_time_since_latest_exposes_only_newest_timestamp():
    """The documented exception: older positions see the newest action's time (no content)."""
    model = make_model(time_since_latest=True)
    x = make_inputs(batch=1, length=6)
    y = {k: v.clone() for k, v in x.items()}
    y["ts_ms"][:, 0] += 3 * MS_PER_HOUR
    assert not torch.allclose(model(**y)[:, 3:], model(**x)[:, 3:], atol=1e-4)


def test_trailing_padding_does_not_change_outputs():
    model = make_model()
    x = make_inputs(batch=2, length=6, lengths=[6, 3])
    padded = {k: torch.cat([v, torch.zeros(2, 5, dtype=v.dtype)], dim=1) for k, v in x.items()}
    assert torch.allclose(model(**padded)[:, :6], model(**x), atol=1e-5)


def test_empty_history_and_single_action_are_finite():
    model = make_model()
    empty = {k: torch.zeros(2, 8, dtype=torch.int64) for k in INPUT_NAMES}
    out = model(**empty)
    assert torch.isfinite(out).all()
    single = make_inputs(batch=2, length=8, lengths=[1, 1])
    out = model(**single)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, 0].norm(dim=-1), torch.ones(2), atol=1e-5)
    one_col = make_inputs(batch=1, length=1)
    assert torch.isfinite(model.embed_users(**one_col)).all()


def test_gradients_flow_and_item_table_has_none():
    model = make_model().train()
    x = make_inputs(lengths=[10, 5, 2])
    loss = model(**x)[:, 0].sum() + model.encode_items(torch.tensor([1, 2])).sum()
    loss.backward()
    assert model.input_proj.weight.grad is not None and torch.isfinite(model.input_proj.weight.grad).all()
    assert model.item_table.grad is None


def test_torchscript_parity():
    model = make_model()
    x = make_inputs(lengths=[10, 6, 0])
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(**x), model(**x), atol=1e-5)
    assert torch.allclose(scripted.embed_users(**x), model.embed_users(**x), atol=1e-5)
    assert torch.allclose(scripted.all_item_embeddings(), model.all_item_embeddings(), atol=1e-5)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert torch.allclose(loaded.embed_users(**x), model.embed_users(**x), atol=1e-5)


class _UserTower(torch.nn.Module):
    def __init__(self, model: PinnerFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_idx, action, surface, duration_ms, ts_ms):  # type: ignore[no-untyped-def]
        return self.model.embed_users(item_idx, action, surface, duration_ms, ts_ms)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy (TorchScript) exporter: no onnxscript here
def test_onnx_export_parity_with_dynamic_batch_and_length():
    ort = pytest.importorskip("onnxruntime")
    model = make_model()
    wrapper = _UserTower(model).eval()
    x = make_inputs(batch=2, length=6, lengths=[6, 2])
    buf = io.BytesIO()
    axes = {k: {0: "batch", 1: "length"} for k in INPUT_NAMES}
    with torch.no_grad():
        torch.onnx.export(wrapper, tuple(x[k] for k in INPUT_NAMES), buf, input_names=list(INPUT_NAMES),
                          output_names=["user_emb"], dynamic_axes={**axes, "user_emb": {0: "batch"}},
                          opset_version=17, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    y = make_inputs(batch=4, length=9, seed=3, lengths=[9, 5, 1, 0])
    got = sess.run(None, {k: y[k].numpy() for k in INPUT_NAMES})[0]
    assert np.abs(got - model.embed_users(**y).detach().numpy()).max() < 1e-4


def test_config_round_trip_and_paper_preset():
    cfg = small_cfg(sequence_actions=("save", "click"))
    assert PinnerFormerConfig.from_dict(cfg.to_dict()) == cfg
    paper = PinnerFormerConfig.paper()
    assert (paper.num_layers, paper.hidden, paper.out_dim) == (6, 768, 256)
    with pytest.raises(ValueError):
        PinnerFormerConfig(sequence_actions=("like",))
    with pytest.raises(ValueError):
        PinnerFormerConfig.from_dict({"bogus": 1})


# --- dataset -> inputs ----------------------------------------------------------


def test_user_timelines_newest_first_without_impressions_or_oov():
    ds = make_toy_dataset(num_users=5, num_items=30, actions_per_user=20, seed=1)
    ds.actions["item_id"][0] = 999_999  # unknown item: dropped
    cut = ds.train_end_ms
    tl = UserTimelines(ds, before_ms=cut)
    assert (tl.ts_ms < cut).all()
    assert not np.isin(tl.action, [schema.ACTION_IDS["impression"]]).any()
    assert (tl.item_idx > 0).all()
    rows = np.arange(len(tl))
    ends = tl.offsets[1:]
    batch = tl.batch(rows, ends, max_len=8)
    assert batch["item_idx"].shape[1] == min(8, tl.lengths.max())
    r = 2
    n = min(8, tl.lengths[r])
    expect = tl.ts_ms[tl.offsets[r + 1] - n: tl.offsets[r + 1]][::-1]
    assert np.array_equal(batch["ts_ms"][r, :n], expect)
    assert (batch["action"][r, n:] == 0).all()
    # Windows ending earlier / users absent.
    assert np.array_equal(tl.rows_of(np.array([tl.user_ids[1], -5])), [1, -1])
    assert tl.ends_before(np.array([0]), 0)[0] == tl.offsets[0]
    out = PinnerFormer(small_cfg(), ds.item_emb).eval()(**to_tensors(tl.batch(rows, ends, 16)))
    assert torch.isfinite(out).all()
