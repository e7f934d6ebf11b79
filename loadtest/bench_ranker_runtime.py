"""The ranker alone, in-process, on one CPU thread: eager PyTorch vs TorchScript
vs ONNX Runtime, at several candidate counts. It decides `pinrank export
--cpu-runtime` (the cpu profile's Python backend hosts one of the last two).

    .venv/bin/python loadtest/bench_ranker_runtime.py                      # random fused ranker
    .venv/bin/python loadtest/bench_ranker_runtime.py --ranker artifacts/checkpoints/ranker.pt

Each runtime gets the same inputs (one user x N candidates x L = 100 actions,
full history); the exported artifacts are the parity-gated ones `pinrank
export` would ship. Runtimes are interleaved per repeat, so drift from other
load on the machine hits all three alike.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from pinrank.backend import schema
from pinrank.export.onnx_format import OnnxRunner, export_onnx
from pinrank.export.parity import edge_cases
from pinrank.export.torchscript import export_torchscript
from pinrank.models.ranker import (
    Ranker,
    RankerConfig,
    RankerServing,
    load_serving_module,
)


@click.command()
@click.option("--ranker", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Ranker checkpoint. Default: a randomly initialised ranker (timing does not depend on weights).")
@click.option("--mode", type=click.Choice(["early", "fused", "avgpool"]), default="fused", show_default=True,
              help="Layout of the random ranker (ignored with --ranker).")
@click.option("--items", type=click.IntRange(min=2), default=5000, show_default=True,
              help="Catalogue size of the random ranker (ignored with --ranker).")
@click.option("--candidates", "candidate_counts", type=click.IntRange(1, schema.MAX_CANDIDATES), multiple=True,
              default=(100, 500, 1000), show_default=True, help="Candidate counts N (repeat the option).")
@click.option("--repeats", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed calls per runtime and N.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed calls first (TorchScript's profiling executor optimises on early calls).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads for every runtime (the served ranker instance uses 1).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the figures as JSON here.")
def main(ranker: Path | None, mode: str, items: int, candidate_counts: tuple[int, ...], repeats: int, warmup: int,
         threads: int, out: Path | None) -> None:
    """Print p50/p90 ms per call of each ranker runtime at each N."""
    torch.set_num_threads(threads)
    if ranker is not None:
        module = load_serving_module(ranker)
        source = str(ranker)
    else:
        torch.manual_seed(0)
        emb = np.random.default_rng(0).normal(size=(items, schema.ITEM_EMB_DIM)).astype(np.float32)
        module = RankerServing(Ranker(RankerConfig(mode=mode), item_emb=emb).eval()).eval()
        source = f"random {mode} ranker, {items} items"
    num_items = int(module.num_items)
    with tempfile.TemporaryDirectory() as tmp:
        ts_path, _ = export_torchscript(module, Path(tmp) / "ranker.pt", num_items)
        onnx_path = export_onnx(module, Path(tmp) / "ranker.onnx", num_items).path
        scripted = torch.jit.load(str(ts_path), map_location="cpu").eval()
        session = OnnxRunner(onnx_path, threads=threads)
    runtimes = {"eager": module, "torchscript": scripted, "onnxruntime": session}

    names = [s.name for s in schema.RANKER_INPUTS]
    full = edge_cases(num_items)["max_candidates"]  # full history, 1000 candidates to slice from
    results: dict[str, dict[str, dict[str, float]]] = {}
    with torch.inference_mode():
        for n in candidate_counts:
            arrays = dict(full, cand_idx=full["cand_idx"][:n])
            args = [torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in names]
            ms: dict[str, list[float]] = {name: [] for name in runtimes}
            for i in range(warmup + repeats):
                for name, fn in runtimes.items():  # interleaved: background load hits all alike
                    t = time.perf_counter()
                    fn(*args)
                    if i >= warmup:
                        ms[name].append((time.perf_counter() - t) * 1000)
            results[f"N={n}"] = {name: {"p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90))}
                                 for name, v in ms.items()}

    click.echo(f"{source}; L={schema.REALTIME_SEQ_LEN}, {threads} thread(s), {repeats} calls after {warmup} warm-up")
    click.echo(f"{'N':>6}  {'runtime':<12}{'p50 ms':>9}{'p90 ms':>9}{'p50 / eager':>13}")
    for key, row in results.items():
        base = row["eager"]["p50_ms"]
        for name, r in row.items():
            click.echo(f"{key[2:]:>6}  {name:<12}{r['p50_ms']:9.2f}{r['p90_ms']:9.2f}{r['p50_ms'] / base:13.2f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"source": source, "threads": threads, "repeats": repeats,
                                   "seq_len": schema.REALTIME_SEQ_LEN, "results": results}, indent=2))
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
