"""Latency of one request (1 user x N candidates x L actions): the eager
pipeline in-process vs the Triton ensemble over gRPC and HTTP, one client,
sequential requests, in the same run so the ratio is meaningful.

    .venv/bin/python loadtest/bench_latency.py --repository model_repository/cpu \
        --ranker artifacts/checkpoints/ranker.pt --candidates 500 --requests 200
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import click
import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from pinrank.backend import schema
from pinrank.backend.preprocess import Preprocessor
from pinrank.export.inprocess import InProcessRanker
from pinrank.models.ranker import load_serving_module
from pinrank.serving.tritonserver import running_server
from pinrank_client._triton import build_inputs


def make_request(rng: np.random.Generator, vocab_ids: np.ndarray, users: np.ndarray, n: int, length: int) -> dict:
    now = 1_769_990_400_000
    return {
        "user_id": np.array([rng.choice(users)], np.int64),
        "candidate_ids": rng.choice(vocab_ids, size=n, replace=n > vocab_ids.size).astype(np.int64),
        "action_item_ids": rng.choice(vocab_ids, size=length).astype(np.int64),
        "action_types": rng.integers(1, schema.NUM_ACTION_IDS, size=length).astype(np.int64),
        "action_surfaces": rng.integers(0, schema.NUM_SURFACE_IDS, size=length).astype(np.int64),
        "action_ts_ms": (now - rng.integers(1, 3 * 86_400_000, size=length)).astype(np.int64),
        "request_ts_ms": np.array([now], np.int64),
        "top_k": np.array([10], np.int64),
    }


def time_calls(fn: Callable[[dict], object], reqs: list[dict], warmup: int) -> list[float]:
    """Milliseconds of each call of `fn` on `reqs`, the first `warmup` calls dropped."""
    ms = []
    for i, r in enumerate(reqs):
        t = time.perf_counter()
        fn(r)
        if i >= warmup:
            ms.append((time.perf_counter() - t) * 1000)
    return ms


def triton_caller(module: ModuleType, client: object, top_k: int = 10) -> Callable[[dict], object]:
    """One ensemble call through tritonclient `module` (grpc or http), checked non-empty."""

    def call(r: dict) -> object:
        res = client.infer(schema.ENSEMBLE_MODEL, build_inputs(module, r))  # type: ignore[attr-defined]
        assert res.as_numpy("item_ids").size == top_k, "empty or short response"
        return res
    return call


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


@click.command()
@click.option("--repository", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("model_repository/cpu"), show_default=True)
@click.option("--ranker", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=Path("artifacts/checkpoints/ranker.pt"), show_default=True)
@click.option("--candidates", type=int, default=500, show_default=True)
@click.option("--actions", type=int, default=schema.REALTIME_SEQ_LEN, show_default=True)
@click.option("--requests", "num_requests", type=int, default=200, show_default=True)
@click.option("--warmup", type=int, default=20, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/bench_latency.json"), show_default=True)
def main(repository: Path, ranker: Path, candidates: int, actions: int, num_requests: int, warmup: int,
         out: Path) -> None:
    """Measure and print p50/p90/p99 latency per request, in-process vs Triton."""
    torch.set_num_threads(1)  # the server's ranker instance runs on one thread too
    latest = max((repository / schema.PREPROCESS_MODEL).glob("[0-9]*"), key=lambda p: int(p.name))
    pre = Preprocessor.from_dir(latest / "artifacts")
    local = InProcessRanker(pre, load_serving_module(ranker))
    rng = np.random.default_rng(0)
    reqs = [make_request(rng, pre.vocab.item_ids, pre.snapshot.user_ids, candidates, actions)
            for _ in range(num_requests + warmup)]

    results = {"in_process": percentiles(time_calls(local.rank, reqs, warmup))}
    with running_server(repository) as server:
        for name, module, url in (("triton_grpc", grpcclient, server.grpc_url),
                                  ("triton_http", httpclient, server.http_url)):
            call = triton_caller(module, module.InferenceServerClient(url))
            results[name] = percentiles(time_calls(call, reqs, warmup))
    base = results["in_process"]["p50_ms"]
    click.echo(f"N={candidates} L={actions} requests={num_requests} (after {warmup} warmup), one client")
    click.echo(f"{'path':<14}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p50 / in-process':>19}")
    for name, r in results.items():
        click.echo(f"{name:<14}{r['p50_ms']:9.2f}{r['p90_ms']:9.2f}{r['p99_ms']:9.2f}{r['p50_ms'] / base:19.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"candidates": candidates, "actions": actions, "requests": num_requests,
                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
