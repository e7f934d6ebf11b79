"""Do CUDA graphs pay for the served ranker? Times the gpu profile's own
ranker.pt through the vendored runtime the Python backend runs
(pinrank/backend/torchscript_ranker.py, from the version directory), one
request at a time including the host<->device copies, eager on the device
vs one CUDA graph per candidate bucket, and checks the graphs' scores
against the CPU's. Run by gpu_check.py with the machine's torch interpreter;
prints one JSON line. On a machine without CUDA it times the CPU only and
says the graph half was skipped (so the script is tested here).

    python cuda_graphs_bench.py --version-dir repository/gpu/ranker/1 --candidates 100,500,1000
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click


def _percentile(ms: list[float], q: float) -> float:
    ordered = sorted(ms)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _time(rank, feed, iters: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(5):
        rank(feed)
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        rank(feed)  # returns numpy: the device->host copy waits for the GPU
        ms.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(_percentile(ms, 0.5), 4), "p99_ms": round(_percentile(ms, 0.99), 4)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="A ranker version directory of the gpu profile (ranker.pt + _vendor/).")
@click.option("--candidates", default="100,500,1000", show_default=True, help="N per request, comma-separated.")
@click.option("--iters", type=click.IntRange(min=5), default=200, show_default=True)
def main(version_dir: Path, candidates: str, iters: int) -> None:
    """Eager vs CUDA-graph ranker latency per N, and the graphs' max |diff| vs CPU; one JSON line."""
    # The vendored copy, not an installed pinrank: the code the served model runs.
    sys.path.insert(0, str(version_dir / "_vendor"))
    import numpy as np  # noqa: PLC0415 - after the path: the stub's numpy, whichever the interpreter has
    import torch  # noqa: PLC0415 - idem

    from pinrank.backend.ranker_runtime import zero_feed  # noqa: PLC0415 - vendored, found through the path
    from pinrank.backend.torchscript_ranker import TorchScriptRanker  # noqa: PLC0415 - idem

    rng = np.random.default_rng(0)
    path = version_dir / "ranker.pt"
    num_items = json.loads((version_dir / "manifest.json").read_text())["num_items"]
    cpu = TorchScriptRanker(path)
    out: dict = {"device": None, "rows": [], "graphs": "skipped: no CUDA device"}
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        eager, graphs = TorchScriptRanker(path, "cuda:0"), TorchScriptRanker(path, "cuda:0", cuda_graphs=True)
        out["device"], out["graphs"] = torch.cuda.get_device_name(0), "measured"
    for n in (int(v) for v in candidates.split(",") if v.strip()):
        feed = zero_feed(n)
        feed["cand_idx"] = rng.integers(0, num_items + 1, n).astype(np.int64)
        feed["user_emb"] = rng.normal(size=feed["user_emb"].shape).astype(np.float32)
        feed["seq_item_idx"] = rng.integers(0, num_items + 1, feed["seq_item_idx"].shape).astype(np.int64)
        feed["seq_action"] = rng.integers(1, 5, feed["seq_action"].shape).astype(np.int64)
        row = {"candidates": n, "cpu": _time(cpu, feed, max(5, iters // 10))}
        if on_gpu:
            row["eager"], row["graphs"] = _time(eager, feed, iters), _time(graphs, feed, iters)
            row["graphs_max_abs_diff_vs_cpu"] = float(np.abs(graphs(feed) - cpu(feed)).max())
            row["p50_speedup_graphs_over_eager"] = round(row["eager"]["p50_ms"] / row["graphs"]["p50_ms"], 3)
        out["rows"].append(row)
    click.echo(json.dumps(out))


if __name__ == "__main__":
    main()
