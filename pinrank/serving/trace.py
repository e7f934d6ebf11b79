"""One request's path through the ensemble, from Triton's request traces.

`pinrank serve --trace-file FILE` starts Triton with TIMESTAMPS tracing of
every --trace-rate'th request, one request per file (FILE.0, FILE.1, ...,
written as requests finish). `pinrank trace FILE` reads them back and prints,
per request, when each step started (from the request's start), its queue
time and its compute time (input, infer, output). Steps overlap a little: the
ensemble passes a step's outputs on before that step's instance has finished
(its COMPUTE_END).

Triton's trace file is a JSON list of records that share an `id`: one names
the model (and `parent_id` for a step of an ensemble), the others carry
timestamps `{"name": "COMPUTE_START", "ns": ...}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import click

#: Timestamp names Triton writes at level TIMESTAMPS.
REQUEST_START, REQUEST_END = "REQUEST_START", "REQUEST_END"
QUEUE_START, COMPUTE_START, COMPUTE_INPUT_END = "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END"
COMPUTE_OUTPUT_START, COMPUTE_END = "COMPUTE_OUTPUT_START", "COMPUTE_END"


class TraceError(ValueError):
    """A trace file that cannot be read; the message names it."""


def trace_args(trace_file: Path, rate: int) -> list[str]:
    """tritonserver options: TIMESTAMPS traces of every `rate`'th request, each
    request's traces written to its own file as soon as it completes."""
    if rate < 1:
        raise ValueError(f"trace rate must be >= 1, got {rate}")
    return [f"--trace-config=triton,file={trace_file}", "--trace-config=triton,log-frequency=1",
            "--trace-config=level=TIMESTAMPS", f"--trace-config=rate={rate}", "--trace-config=count=-1"]


@dataclass
class Span:
    """One model's part of a traced request."""

    id: int
    model: str = "?"
    parent: int | None = None
    ns: dict[str, int] = field(default_factory=dict)

    def ms(self, start: str, end: str) -> float | None:
        if start in self.ns and end in self.ns:
            return (self.ns[end] - self.ns[start]) / 1e6
        return None


@dataclass(frozen=True)
class StepTiming:
    model: str
    start_ms: float | None  # after the request's REQUEST_START
    queue_ms: float | None
    input_ms: float | None
    infer_ms: float | None
    output_ms: float | None
    compute_ms: float | None


@dataclass(frozen=True)
class RequestTiming:
    """A traced request: the top-level model, its total and its steps in order."""

    trace_id: int
    model: str
    total_ms: float | None
    steps: list[StepTiming]


def trace_files(path: Path) -> list[Path]:
    """`path` itself, or the numbered files Triton wrote for it (path.0, path.1, ...) in order."""
    path = Path(path)
    numbered = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    files = sorted(numbered, key=lambda p: int(p.suffix[1:]))
    if path.is_file():
        files.insert(0, path)
    if not files:
        raise TraceError(f"no trace file at {path} (nor {path}.0, ...): was the server started with "
                         f"--trace-file {path}, and has it served a request since?")
    return files


def read_spans(files: Iterable[Path]) -> dict[int, Span]:
    """Every traced model call in `files`, by trace id (ids are unique per server run)."""
    spans: dict[int, Span] = {}
    for path in files:
        try:
            records = json.loads(path.read_text() or "[]")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TraceError(f"{path}: not a Triton trace file ({exc})") from None
        if not isinstance(records, list):
            raise TraceError(f"{path}: not a Triton trace file (expected a JSON list)")
        for rec in records:
            _merge(spans, rec, path)
    return spans


def _merge(spans: dict[int, Span], rec: Any, path: Path) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), int):
        raise TraceError(f"{path}: a record without an integer id: {str(rec)[:200]}")
    span = spans.setdefault(rec["id"], Span(rec["id"]))
    if "model_name" in rec:
        span.model = str(rec["model_name"])
        span.parent = rec.get("parent_id")
    for stamp in rec.get("timestamps", ()):
        if isinstance(stamp, dict) and "name" in stamp and "ns" in stamp:
            span.ns[str(stamp["name"])] = int(stamp["ns"])


def request_timings(spans: dict[int, Span]) -> list[RequestTiming]:
    """One entry per top-level request (oldest first), its steps in the order they ran."""
    children: dict[int, list[Span]] = {}
    for span in spans.values():
        if span.parent is not None:
            children.setdefault(span.parent, []).append(span)
    out = []
    for root in sorted((s for s in spans.values() if s.parent is None), key=lambda s: s.ns.get(REQUEST_START, 0)):
        steps = sorted(children.get(root.id, []), key=lambda s: s.ns.get(REQUEST_START, 0)) or [root]
        t0 = root.ns.get(REQUEST_START)
        out.append(RequestTiming(root.id, root.model, root.ms(REQUEST_START, REQUEST_END), [
            StepTiming(s.model, (s.ns[REQUEST_START] - t0) / 1e6 if t0 is not None and REQUEST_START in s.ns else None,
                       s.ms(QUEUE_START, COMPUTE_START), s.ms(COMPUTE_START, COMPUTE_INPUT_END),
                       s.ms(COMPUTE_INPUT_END, COMPUTE_OUTPUT_START), s.ms(COMPUTE_OUTPUT_START, COMPUTE_END),
                       s.ms(COMPUTE_START, COMPUTE_END))
            for s in steps]))
    return out


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f}"


def format_request(req: RequestTiming) -> str:
    lines = [f"request {req.trace_id} ({req.model}): {_fmt(req.total_ms)} ms",
             f"  {'step':<12} {'start':>8} {'queue':>8} {'input':>8} {'infer':>8} {'output':>8} {'compute':>8}  (ms)"]
    for s in req.steps:
        lines.append(f"  {s.model:<12} {_fmt(s.start_ms):>8} {_fmt(s.queue_ms):>8} {_fmt(s.input_ms):>8} "
                     f"{_fmt(s.infer_ms):>8} {_fmt(s.output_ms):>8} {_fmt(s.compute_ms):>8}")
    return "\n".join(lines)


@click.command("trace")
@click.argument("trace_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--last", type=click.IntRange(min=1), default=5, show_default=True,
              help="Show the newest N traced requests.")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON instead of tables.")
def trace(trace_file: Path, last: int, as_json: bool) -> None:
    """Print per-step timings of traced requests (`pinrank serve --trace-file FILE`).

    For each request: the ensemble's total, and per step (preprocess, ranker,
    postprocess) when it started after the request did, the time queued and
    the time computing, split into reading inputs, running the model and
    writing outputs. Health-check canaries are traced like any request.
    """
    try:
        timings = request_timings(read_spans(trace_files(trace_file)))
    except TraceError as exc:
        raise click.ClickException(str(exc)) from None
    if not timings:
        raise click.ClickException(f"{trace_file}: no traced request in it yet")
    shown = timings[-last:]
    if as_json:
        click.echo(json.dumps([{"trace_id": r.trace_id, "model": r.model, "total_ms": r.total_ms,
                                "steps": [s.__dict__ for s in r.steps]}
                               for r in shown], indent=2))
        return
    click.echo(f"{len(timings)} traced request(s) in {trace_file}; the newest {len(shown)}:")
    for req in shown:
        click.echo(format_request(req))
