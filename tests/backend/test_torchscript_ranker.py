"""The TorchScript ranker runtime: padding to a candidate bucket (what a CUDA
graph replays) leaves every real candidate's score as it was, and the model
parameters that place and configure it are read strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinrank.backend import schema
from pinrank.backend.ranker_runtime import flag_parameter, instance_device, load_exported_ranker
from pinrank.backend.torchscript_ranker import GRAPH_BUCKETS, TorchScriptRanker, bucket_for, padded_feed
from pinrank.export.torchscript import export_torchscript
from pinrank.models.ranker import Ranker, RankerConfig, RankerServing, example_serving_inputs

NUM_ITEMS = 60


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    torch.manual_seed(0)
    item_emb = np.random.default_rng(0).normal(size=(NUM_ITEMS + 1, schema.ITEM_EMB_DIM)).astype(np.float32)
    serving = RankerServing(Ranker(RankerConfig(), item_emb=item_emb)).eval()
    d = tmp_path_factory.mktemp("ranker")
    export_torchscript(serving, d / "ranker.pt", NUM_ITEMS)
    return d


def feed_of(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    tensors = example_serving_inputs(num_candidates=n, num_items=NUM_ITEMS, history=40, seed=seed)
    return {s.name: t.numpy() for s, t in zip(schema.RANKER_INPUTS, tensors)}


def test_buckets_cover_the_contract():
    assert max(GRAPH_BUCKETS) == schema.MAX_CANDIDATES
    assert [bucket_for(n) for n in (1, 128, 129, 500, 513, schema.MAX_CANDIDATES)] == [128, 128, 256, 512, 1000, 1000]
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(schema.MAX_CANDIDATES + 1)


@pytest.mark.parametrize("n", [1, 100, 129, 500])
def test_padding_to_the_bucket_changes_no_real_candidates_score(version_dir, n):
    rank = TorchScriptRanker(version_dir / "ranker.pt")
    feed = feed_of(n, seed=n)
    exact = rank(feed)
    padded = rank(padded_feed(feed, bucket_for(n)))
    assert exact.shape == (n, schema.NUM_HEADS) and padded.shape == (bucket_for(n), schema.NUM_HEADS)
    np.testing.assert_allclose(padded[:n], exact, rtol=0, atol=1e-6)


def test_the_runtime_loader_places_torchscript_and_refuses_what_cannot_run(version_dir):
    rank = load_exported_ranker(version_dir, "torchscript", device="cpu")
    assert rank(feed_of(7)).shape == (7, schema.NUM_HEADS)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        load_exported_ranker(version_dir, "torchscript", device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CPU only"):
        load_exported_ranker(version_dir, "onnxruntime", device="cuda:0")


def test_instance_device_follows_the_instance_kind():
    assert instance_device({"model_instance_kind": "GPU", "model_instance_device_id": "1"}) == "cuda:1"
    assert instance_device({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == "cpu"
    assert instance_device({}) == "cpu"


def test_flag_parameters_are_true_or_false_only():
    assert flag_parameter({"CUDA_GRAPHS": "true"}, "CUDA_GRAPHS") is True
    assert flag_parameter({"CUDA_GRAPHS": " False "}, "CUDA_GRAPHS") is False
    assert flag_parameter({}, "CUDA_GRAPHS") is False
    with pytest.raises(ValueError, match="'true' or 'false'"):
        flag_parameter({"CUDA_GRAPHS": "yes"}, "CUDA_GRAPHS")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_match_the_cpu_scores(version_dir):
    on_cpu = TorchScriptRanker(version_dir / "ranker.pt")
    graphs = TorchScriptRanker(version_dir / "ranker.pt", "cuda:0", cuda_graphs=True)
    for n in (1, 100, 500, schema.MAX_CANDIDATES):
        feed = feed_of(n, seed=n)
        np.testing.assert_allclose(graphs(feed), on_cpu(feed), rtol=0, atol=1e-4)
