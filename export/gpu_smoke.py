"""GPU smoke check of the `gpu` profile's ranker artifact.

Loads `model_repository/gpu/ranker/<latest>/ranker.pt` the way Triton's
pytorch_libtorch backend does (TorchScript on CUDA), checks it against the
same artifact on CPU on the parity edge cases (TF32 off), and times requests
of 1 user x N candidates x 100 actions. Needs only torch with CUDA and numpy
on the GPU box, and the checkout (pinrank.export.parity, pinrank.backend):

    PYTHONPATH=.:client/src python export/gpu_smoke.py --repository model_repository/gpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pinrank.backend import schema
from pinrank.export import parity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=Path("model_repository/gpu"))
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("results/gpu_smoke.json"))
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of this script")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    versions = sorted((args.repository / "ranker").glob("[0-9]*"), key=lambda p: int(p.name))
    path = versions[-1] / "ranker.pt"
    manifest = json.loads((versions[-1] / "manifest.json").read_text())
    cpu = torch.jit.load(str(path), map_location="cpu").eval()
    gpu = torch.jit.load(str(path), map_location=dev).eval()
    names = [s.name for s in schema.RANKER_INPUTS]
    cases = parity.edge_cases(int(manifest["num_items"]))
    diffs = {}
    with torch.inference_mode():
        for case, arrays in cases.items():
            ref = cpu(*[torch.from_numpy(arrays[n]) for n in names]).numpy()
            out = gpu(*[torch.from_numpy(arrays[n]).to(dev) for n in names]).cpu().numpy()
            diffs[case] = float(np.abs(ref - out).max())
        timings = {}
        for n in (100, 500, 1000):
            arrays = parity.edge_cases(int(manifest["num_items"]))["full_history"]
            arrays = dict(arrays, cand_idx=np.resize(cases["max_candidates"]["cand_idx"], n))
            ms = []
            for i in range(args.iters + 30):
                sync()
                t = time.perf_counter()
                # Host->device copies included: that is what each Triton request pays.
                gpu(*[torch.from_numpy(arrays[k]).to(dev, non_blocking=True) for k in names]).cpu()
                if i >= 30:
                    ms.append((time.perf_counter() - t) * 1000)
            a = np.asarray(ms)
            timings[f"N={n}"] = {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}
    report = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
              "artifact": str(path), "fp32_max_abs_diff_vs_cpu": diffs, "latency_fp32_L100": timings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
