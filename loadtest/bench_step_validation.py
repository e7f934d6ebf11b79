"""What the step models' input checks (pinrank.backend.step_inputs) cost per
request: each check timed in-process at several candidate counts, next to the
ranker call it guards and the end-to-end p50 of the served ensemble (the
repository republished from its own artifacts, so the current checks run).

    .venv/bin/python loadtest/bench_step_validation.py --repository model_repository/cpu

Inputs are real: preprocessing's own output for random requests over the
repository's vocabulary and snapshot, full histories (L = 100).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import tritonclient.grpc as grpcclient

from pinrank.backend import schema, step_inputs
from pinrank.backend.preprocess import Preprocessor
from pinrank.backend.ranker_runtime import load_exported_ranker, manifest_num_items
from pinrank.export.configs import ProfileSettings
from pinrank.export.publish import republish
from pinrank.repository.layout import artifact_dirs
from pinrank.serving.tritonserver import running_server

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_latency import make_request, percentiles, time_calls, triton_caller  # noqa: E402


def time_us(fn: Callable[[], object], repeats: int) -> float:
    """Median microseconds of `repeats` calls of `fn` (10 untimed first)."""
    for _ in range(10):
        fn()
    us = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        us.append((time.perf_counter() - t) * 1e6)
    return float(np.median(us))


def in_process(repository: Path, counts: tuple[int, ...], repeats: int, rng: np.random.Generator) -> dict:
    """Per N: microseconds of each check and of the ranker call it guards."""

    dirs = artifact_dirs(repository)
    pre = Preprocessor.from_dir(dirs["artifacts"] / "artifacts")
    num_items = manifest_num_items(dirs["ranker"])
    rank = load_exported_ranker(dirs["ranker"], "onnxruntime")
    names = [s.name for s in schema.RANKER_INPUTS]
    rows = {}
    for n in counts:
        res = pre(make_request(rng, pre.vocab.item_ids, pre.snapshot.user_ids, n, schema.REALTIME_SEQ_LEN))
        feed, ids = res.ranker_inputs, res.passthrough["pp_candidate_ids"]
        probs = rank(feed)
        k = res.passthrough["pp_top_k"]
        row = {
            "names_us": time_us(lambda: step_inputs.check_names(names, names), repeats),
            "ranker_feed_us": time_us(lambda: step_inputs.check_ranker_feed(feed, num_items), repeats),
            "ranker_output_us": time_us(lambda: step_inputs.check_probs("probs", probs, n), repeats),
            "postprocess_us": time_us(lambda: step_inputs.check_postprocess(probs, ids, k), repeats),
            "ranker_call_us": time_us(lambda: rank(feed), max(20, repeats // 20)),
        }
        # ranker_output is part of check_postprocess; names run once per step model (2).
        row["checks_total_us"] = 2 * row["names_us"] + row["ranker_feed_us"] + row["ranker_output_us"] \
            + row["postprocess_us"]
        rows[n] = row
    return rows


def served_p50(repository: Path, counts: tuple[int, ...], num_requests: int, rng: np.random.Generator) -> dict:
    """Per N: end-to-end p50/p90 ms of the ensemble over gRPC, sequential requests."""
    pre = Preprocessor.from_dir(artifact_dirs(repository)["artifacts"] / "artifacts")
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-step-validation-") as tmp:
        served = Path(tmp) / "repo"
        republish(repository, served, ProfileSettings())
        with running_server(served, log_path=Path(tmp) / "tritonserver.log") as srv:
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            call = triton_caller(grpcclient, client)
            for n in counts:
                reqs = [make_request(rng, pre.vocab.item_ids, pre.snapshot.user_ids, n, schema.REALTIME_SEQ_LEN)
                        for _ in range(num_requests)]
                out[n] = percentiles(time_calls(call, reqs, warmup=max(5, num_requests // 10)))
            client.close()
    return out


@click.command()
@click.option("--repository", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("model_repository/cpu"), show_default=True,
              help="An exported cpu repository (ensemble layout); it is republished to a temp dir to be served.")
@click.option("--candidates", "counts", type=click.IntRange(10, schema.MAX_CANDIDATES), multiple=True,
              default=(10, 100, schema.MAX_CANDIDATES), show_default=True,
              help="Candidate counts N (repeat the option); the ensemble's top_k is 10, so N >= 10.")
@click.option("--repeats", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Timed calls of each check per N (the median is reported).")
@click.option("--requests", "num_requests", type=click.IntRange(min=20), default=300, show_default=True,
              help="Sequential ensemble requests per N through the real server (0.1 of them warm up).")
@click.option("--no-server", is_flag=True, help="Only the in-process timings (no tritonserver).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the figures as JSON here.")
def main(repository: Path, counts: tuple[int, ...], repeats: int, num_requests: int, no_server: bool,
         out: Path | None) -> None:
    """Print the per-request cost of the step models' input checks, in
    microseconds and as a share of the ranker call and of the served p50."""
    rng = np.random.default_rng(0)
    checks = in_process(repository, counts, repeats, rng)
    served = {} if no_server else served_p50(repository, counts, num_requests, rng)
    print("| N | names | ranker feed | ranker output | postprocess | all checks | ranker call | "
          "share of ranker call | served p50 | share of served p50 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, c in checks.items():
        p50_ms = served.get(n, {}).get("p50_ms")
        share = f"{100 * c['checks_total_us'] / (1000 * p50_ms):.2f}%" if p50_ms else "-"
        print(f"| {n} | {c['names_us']:.1f} us | {c['ranker_feed_us']:.1f} us | {c['ranker_output_us']:.1f} us | "
              f"{c['postprocess_us']:.1f} us | {c['checks_total_us']:.1f} us | {c['ranker_call_us'] / 1000:.2f} ms | "
              f"{100 * c['checks_total_us'] / c['ranker_call_us']:.2f}% | "
              f"{f'{p50_ms:.2f} ms' if p50_ms else '-'} | {share} |")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checks_us": checks, "served_ms": served}, indent=2))


if __name__ == "__main__":
    main()
