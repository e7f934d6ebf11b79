"""Import speed at real-log scale: writes a generated log in the real Taobao
UserBehavior / REES46 eCommerce / MovieLens ratings.csv formats, then times
the reader alone and the whole build_<format> (reader + assembly) with the
columnar reader (after) and the reference row reader (before).

    .venv/bin/python loadtest/bench_import.py                        # 10M rows, taobao + rees46
    .venv/bin/python loadtest/bench_import.py --rows 200000 --formats movielens

The row reader takes minutes at 10M rows, so it runs on a sample log of
--reference-rows rows (the columnar reader runs on that sample too, for a
like-for-like speed-up). Every measurement runs in a fresh process; its peak
RSS is that process's VmHWM (/proc/self/status), interpreter, numpy and
pyarrow included (the "base" column: the same right after the imports).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from tqdm import tqdm

from pinrank.data.formats import movielens, rees46, taobao
from pinrank.data.formats.rows import BadRows
from pinrank.data.importers import BUILDERS

#: Rows generated per write: the generator's memory stays ~ this many rows.
GEN_CHUNK = 1 << 20
FORMATS = ("taobao", "rees46", "movielens")
READERS: dict[str, Callable[..., Any]] = {
    "taobao": lambda src, reader: taobao.read_taobao(src, BadRows(False), taobao.TS_RANGE, reader=reader)[0],
    "rees46": lambda src, reader: rees46.read_rees46(src, BadRows(False), rees46.TS_RANGE, reader=reader)[0],
    "movielens": lambda src, reader: movielens.read_movielens(src, BadRows(False), movielens.TS_RANGE,
                                                              reader=reader)[0],
}
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _skewed(rng: np.random.Generator, n: int, size: int, power: float) -> np.ndarray:
    """Indices in [0, size), the low ones far more often (a popularity skew)."""
    return np.minimum((rng.random(n) ** power * size).astype(np.int64), size - 1)


def _uuids(keys: np.ndarray) -> pa.Array:
    """A deterministic UUID-shaped string per key (REES46's user_session)."""
    h = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    shifts = np.arange(0, 64, 4, dtype=np.uint64)
    digits = np.concatenate([(x[:, None] >> shifts) & np.uint64(15) for x in (h, h * np.uint64(0xD1B54A32D192ED03))],
                            axis=1)
    text = _HEX[digits.astype(np.intp)]
    text = np.insert(text, [8, 12, 16, 20], ord("-"), axis=1)
    return pa.array(np.ascontiguousarray(text).view("S36").ravel()).cast(pa.string())


def _taobao_chunk(rng: np.random.Generator, n: int, first_row: int, scale: int) -> pa.Table:
    """UserBehavior rows: users in id order as in the real file (~100 rows
    each), pv ~ 89%."""
    lo, hi = (t // 1000 for t in taobao.TS_RANGE)
    user = np.sort(rng.integers(first_row // 100, (first_row + n) // 100 + 1, n)) + 1
    item = _skewed(rng, n, max(10, scale // 25), 2.5) * 7 + 13
    behavior = np.array(["pv", "cart", "fav", "buy"])[rng.choice(4, n, p=[0.895, 0.055, 0.03, 0.02])]
    return pa.table({"user_id": user, "item_id": item, "category_id": (item * 2_654_435_761) % 5_000_000 + 1,
                     "behavior_type": behavior, "timestamp": rng.integers(lo, hi, n)})


def _rees46_chunk(rng: np.random.Generator, n: int, first_row: int, scale: int) -> pa.Table:
    """eCommerce rows in time order over two months (REES46's Oct and Nov
    files), 19-digit category ids, empty codes and brands where the real log
    has them, a session per user and day."""
    seconds = rees46.TS_RANGE[0] // 1000 + np.sort(rng.integers(first_row, first_row + n, n)) * 61 * 86_400 // scale
    item = _skewed(rng, n, max(10, scale // 60), 2.0)
    user = _skewed(rng, n, max(10, scale // 14), 1.5) + 512_000_000
    cat = item % 600
    codes = np.array(["", "electronics.smartphone", "appliances.kitchen.washer", "apparel.shoes", "computers.notebook"])
    brands = np.array(["", "samsung", "apple", "xiaomi", "huawei", "lucente", "shiseido"])
    return pa.table({
        "event_time": pc.strftime(pa.array(seconds, pa.timestamp("s", tz="UTC")), format="%Y-%m-%d %H:%M:%S UTC"),
        "event_type": np.array(["view", "cart", "purchase"])[rng.choice(3, n, p=[0.94, 0.04, 0.02])],
        "product_id": item * 37 + 1_000_000,
        "category_id": cat * 1_000_003 + 2_053_013_552_326_770_905,
        "category_code": codes[cat % codes.size],
        "brand": brands[(item * 5) % brands.size],
        "price": np.round((item % 997) * 1.37 + 0.99, 2),
        "user_id": user,
        "user_session": _uuids(user * 1000 + seconds // 86_400),
    })


def _movielens_chunk(rng: np.random.Generator, n: int, first_row: int, scale: int) -> pa.Table:
    """ratings.csv rows (ML-25M's look): users in id order (~150 rows each), half stars."""
    stars = np.array(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"])
    return pa.table({
        "userId": np.sort(rng.integers(first_row // 150, (first_row + n) // 150 + 1, n)) + 1,
        "movieId": _skewed(rng, n, max(10, scale // 400), 2.0) + 1,
        "rating": stars[rng.choice(10, n, p=[.02, .03, .02, .07, .05, .2, .13, .26, .09, .13])],
        "timestamp": rng.integers(movielens.TS_RANGE[0] // 1000, 1_570_000_000, n),
    })


#: Per format: (rng, rows, index of the first row in the whole log, rows in the whole log) -> a table of rows.
CHUNKS: dict[str, Callable[[np.random.Generator, int, int, int], pa.Table]] = {
    "taobao": _taobao_chunk, "rees46": _rees46_chunk, "movielens": _movielens_chunk}


def generate(fmt: str, out: Path, rows: int, files: int, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Write `rows` rows of `fmt` into `out` (`files` files for taobao and
    rees46; MovieLens is one ratings.csv), GEN_CHUNK rows at a time."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = 1 if fmt == "movielens" else files
    per_file = -(-rows // files)
    started, written, paths = time.perf_counter(), 0, []
    with tqdm(total=rows, desc=f"generate {fmt}", unit=" rows", unit_scale=True, disable=not progress) as bar:
        for f in range(files):
            n_file = min(per_file, rows - written)
            path = out / {"taobao": f"UserBehavior_{f}.csv", "rees46": f"events_{f}.csv",
                          "movielens": "ratings.csv"}[fmt]
            with pa.OSFile(str(path), "wb") as sink:
                writer = None
                for start in range(0, n_file, GEN_CHUNK):
                    n = min(GEN_CHUNK, n_file - start)
                    table = CHUNKS[fmt](rng, n, written + start, rows)
                    if writer is None:
                        if fmt != "taobao":  # pyarrow would quote the names; the real headers are bare
                            sink.write(",".join(table.column_names).encode() + b"\n")
                        writer = pcsv.CSVWriter(sink, table.schema, write_options=pcsv.WriteOptions(
                            include_header=False, quoting_style="none"))
                    writer.write_table(table)
                    bar.update(n)
                if writer is not None:
                    writer.close()
            paths.append(path)
            written += n_file
    return {"rows": rows, "files": [p.name for p in paths], "bytes": sum(p.stat().st_size for p in paths),
            "generate_s": round(time.perf_counter() - started, 2)}


def _rss_mib() -> float:
    """This process's peak RSS: VmHWM, the kernel's high-water mark of its
    memory map. Not getrusage's ru_maxrss: Linux carries the parent's peak
    across the fork + exec that starts the child, so every child would
    report at least the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _measure(fmt: str, src: str, step: str, reader: str) -> dict[str, Any]:
    """One timing in this (fresh) process: the reader alone or the whole build."""
    base = _rss_mib()
    started = time.perf_counter()
    if step == "read":
        rows = len(READERS[fmt](Path(src), reader))
    else:
        rows = int(BUILDERS[fmt](src, reader=reader).meta["counts"]["actions"])
    seconds = time.perf_counter() - started
    return {"format": fmt, "step": step, "reader": reader, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds), "peak_rss_mib": round(_rss_mib()), "base_rss_mib": round(base)}


def _in_fresh_process(*args: str) -> dict[str, Any]:
    # spawn: a forked child would inherit this process's peak RSS.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure, *args).result()


def _machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "memory_mib": mem,
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "numpy": np.__version__, "pyarrow": pa.__version__}


def _table(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'format':<10}{'step':<7}{'reader':<10}{'rows':>12}{'seconds':>10}{'rows/s':>12}"
             f"{'peak RSS MiB':>14}{'base MiB':>10}"]
    for r in results:
        lines.append(f"{r['format']:<10}{r['step']:<7}{r['reader']:<10}{r['rows']:>12,}{r['seconds']:>10.2f}"
                     f"{r['rows_per_s']:>12,}{r['peak_rss_mib']:>14,}{r['base_rss_mib']:>10,}")
    return lines


def _speedups(results: list[dict[str, Any]]) -> dict[str, float]:
    """rows/s columnar / rows/s rows, per format and step, at the same row count."""
    by = {(r["format"], r["step"], r["reader"], r["rows"]): r["rows_per_s"] for r in results}
    return {f"{fmt} {step} @ {rows:,} rows": round(by[(fmt, step, "columnar", rows)] / per_s, 1)
            for (fmt, step, reader, rows), per_s in by.items()
            if reader == "rows" and (fmt, step, "columnar", rows) in by}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rows", type=click.IntRange(min=1), default=10_000_000, show_default=True,
              help="Rows of the generated log per format.")
@click.option("--formats", "formats", type=click.Choice(FORMATS), multiple=True, default=("taobao", "rees46"),
              show_default=True, help="Formats to measure (repeat the option).")
@click.option("--files", type=click.IntRange(min=1), default=2, show_default=True,
              help="Files the taobao / rees46 log is split into (REES46 ships a file per month).")
@click.option("--reference-rows", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Rows of the sample log the reference row reader (and, for comparison, the columnar one) "
                   "runs on; at least --rows: the full log.")
@click.option("--skip-reference", is_flag=True, help="Measure the columnar reader only.")
@click.option("--steps", type=click.Choice(["read", "build"]), multiple=True, default=("read", "build"),
              show_default=True, help="What to time: the reader alone, the whole build_<format> (repeat).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the logs (default: a temporary folder, removed after).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("results/bench_import.json"),
              show_default=True, help="JSON file for the figures.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(rows: int, formats: tuple[str, ...], files: int, reference_rows: int, skip_reference: bool,
         steps: tuple[str, ...], workdir: Path | None, out: Path, quiet: bool) -> None:
    """Rows per second and peak memory of the importers, columnar vs row by row."""
    machine = _machine()
    sample = min(reference_rows, rows)
    logs: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        plan = []
        for fmt in formats:
            full = Path(tmp) / fmt / f"{rows}"
            logs[fmt] = generate(fmt, full, rows, files, progress=not quiet)
            srcs = {rows: full}
            if not skip_reference and sample < rows:
                srcs[sample] = Path(tmp) / fmt / f"{sample}"
                logs[fmt]["reference_sample"] = generate(fmt, srcs[sample], sample, files, progress=not quiet)
            for step in steps:
                plan.append((fmt, str(full), step, "columnar"))
                if not skip_reference:
                    if sample < rows:
                        plan.append((fmt, str(srcs[sample]), step, "columnar"))
                    plan.append((fmt, str(srcs[sample]), step, "rows"))
        for args in tqdm(plan, desc="measure", disable=quiet):
            results.append(_in_fresh_process(*args))
    lines = _table(results)
    speedups = _speedups(results)
    click.echo(f"{machine['nproc']} CPUs ({machine['cpu_model']}), load {machine['load_avg_1m_at_start']} at start; "
               f"peak RSS = VmHWM of a fresh process per row")
    if not skip_reference and sample < rows:
        click.echo(f"reference row reader measured on a {sample:,}-row sample log (the full log: {rows:,} rows)")
    click.echo("\n".join(lines))
    for key, factor in speedups.items():
        click.echo(f"speed-up {key}: {factor}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "logs": logs, "results": results, "speedups": speedups,
        "peak_rss": "VmHWM (/proc/self/status) of a fresh (spawned) process per measurement, imports included",
    }, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
