"""SASRec baseline: the PinnerFormer interface, causality, shared item table."""

from __future__ import annotations

import torch

from pinrank.models.sasrec import SASRec, SASRecConfig


def _inputs(items: list[list[int]]) -> dict[str, torch.Tensor]:
    idx = torch.tensor(items)
    z = torch.zeros_like(idx)
    return {"item_idx": idx, "action": (idx > 0).long(), "surface": z, "duration_ms": z, "ts_ms": z}


def test_interface_shapes_and_shared_table():
    model = SASRec(SASRecConfig(max_len=8), num_items=20).eval()
    x = _inputs([[3, 2, 1, 0], [5, 0, 0, 0]])
    assert model.encode(**x).shape == (2, 4, 64)
    assert model.embed_users(**x).shape == (2, model.config.out_dim)
    assert model.all_item_embeddings().shape == (21, 64)
    assert torch.equal(model.encode_items(torch.tensor([3])), model.all_item_embeddings()[[3]])


def test_newest_position_sees_older_actions_older_ones_never_see_newer():
    model = SASRec(SASRecConfig(max_len=8, dropout=0.0), num_items=20).eval()
    a = model.encode(**_inputs([[3, 2, 1]]))
    b = model.encode(**_inputs([[9, 2, 1]]))  # newest action changed
    assert not torch.allclose(a[0, 0], b[0, 0])
    torch.testing.assert_close(a[0, 1:], b[0, 1:])


def test_padding_does_not_change_outputs():
    model = SASRec(SASRecConfig(max_len=8, dropout=0.0), num_items=20).eval()
    short = model.embed_users(**_inputs([[4, 2]]))
    padded = model.embed_users(**_inputs([[4, 2, 0, 0, 0]]))
    torch.testing.assert_close(short, padded)
