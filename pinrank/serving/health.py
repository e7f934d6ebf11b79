"""Is this tritonserver really able to serve the pinrank ensemble?

Triton 2.51's own readiness (/v2/health/ready) stays 200 while a Python-backend
stub process is dead: every request routed to that instance then fails with
"Stub process ... is not healthy", forever. This check adds what Triton does
not look at:

1. the server answers /v2/health/ready;
2. every instance of every loaded Python-backend model has a live stub
   process (read from /proc: the stubs are the server's children, and each
   one's command line names its model, version and instance);
3. a canary request through the ensemble succeeds.

Standard library only, on purpose: the same file runs inside `pinrank serve`
and, copied alone, as a Kubernetes exec readiness probe in an image that has
python3 but not pinrank:

    python3 health.py --http-url http://127.0.0.1:8000        # exit 0 ready, 1 not ready
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

STUB_BINARY = "triton_python_backend_stub"
SERVER_BINARY = "tritonserver"
ENSEMBLE = "pinrank"
#: A tiny valid request (an unknown user and unknown items are served: cold
#: start), so the canary needs no knowledge of the served vocabulary.
CANARY_REQUEST = {
    "inputs": [
        {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [0]},
        {"name": "candidate_ids", "shape": [2], "datatype": "INT64", "data": [1, 2]},
        {"name": "action_item_ids", "shape": [0], "datatype": "INT64", "data": []},
        {"name": "action_types", "shape": [0], "datatype": "INT64", "data": []},
        {"name": "action_surfaces", "shape": [0], "datatype": "INT64", "data": []},
        {"name": "action_ts_ms", "shape": [0], "datatype": "INT64", "data": []},
        {"name": "request_ts_ms", "shape": [1], "datatype": "INT64", "data": [1_700_000_000_000]},
        {"name": "top_k", "shape": [1], "datatype": "INT64", "data": [1]},
    ]
}
# Triton's answer when an instance's stub is gone or hung; names the instance.
UNHEALTHY_STUB = re.compile(r"Stub process '([^']+)' is not healthy")


# --- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub: `<stub> <repo>/<model>/<version>/model.py <shm region> ... <instance> ...`."""

    pid: int
    model: str
    version: str
    instance: str  # e.g. ranker_0_1: unique within one loaded version of a model
    shm_region: str  # its /dev/shm name
    state: str  # /proc state letter: R, S, D, T (stopped), Z (zombie) ...


def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: split after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_state(pid: int) -> str | None:
    """The /proc state letter of `pid`, or None when it no longer exists."""
    try:
        return _stat_fields(pid)[0]
    except (OSError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """Alive and able to run: not gone, not a zombie, not stopped."""
    return process_state(pid) not in (None, "Z", "X", "x", "T", "t")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(_stat_fields(int(stat.parent.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def process_group(pgid: int) -> list[int]:
    """Processes in group `pgid`: a crashed server's stubs are reparented
    away from it but stay in its group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(_stat_fields(int(stat.parent.name))[2]) == pgid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _stubs_among(pids: Iterable[int]) -> list[StubProcess]:
    out = []
    for p in pids:
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if not argv[0].endswith(STUB_BINARY) or len(argv) < 9:
                continue
            model_py = Path(argv[1])
            out.append(StubProcess(p, model_py.parent.parent.name, model_py.parent.name, argv[8], argv[2],
                                   process_state(p) or "X"))
        except OSError:
            continue
    return out


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The Python-backend stubs under `server_pid` that still have a command
    line (a zombie's is empty: a dead stub is simply absent here)."""
    return _stubs_among(descendants(server_pid))


def stub_processes_in_group(pgid: int) -> list[StubProcess]:
    """The stubs in process group `pgid`, also after their server died."""
    return _stubs_among(process_group(pgid))


def remove_shm_regions(names: list[str]) -> None:
    """Unlink the /dev/shm regions of stubs that are gone (a crashed server
    never does: each leaks at least 1 MiB of memory-backed tmpfs)."""
    for name in names:
        if name and "/" not in name:
            with contextlib.suppress(OSError):
                (Path("/dev/shm") / name).unlink()


def find_server_pid(http_port: int) -> int | None:
    """The tritonserver process listening on `http_port`, from its command line."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and Path(argv[0]).name == SERVER_BINARY and f"--http-port={http_port}" in argv:
            return int(cmdline.parent.name)
    return None


def server_repository(server_pid: int) -> Path | None:
    """The --model-repository the server was started with."""
    try:
        argv = Path(f"/proc/{server_pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for a in argv:
        if a.startswith("--model-repository="):
            return Path(a.split("=", 1)[1])
    return None


# --- what the repository says should run ------------------------------------------------------


def _blocks(text: str, key: str) -> list[str]:
    """Bodies of every `key { ... }` message in protobuf text format (also
    `key [ {...}, {...} ]`), matching braces so nested messages stay inside."""
    out = []
    for m in re.finditer(rf"\b{key}\s*:?\s*([\[{{])", text):
        depth, start = 0, m.end(1) - 1
        for i in range(start, len(text)):
            if text[i] in "[{":
                depth += 1
            elif text[i] in "]}":
                depth -= 1
                if depth == 0:
                    body = text[start + 1:i]
                    out.extend(_blocks_in_list(body) if m.group(1) == "[" else [body])
                    break
    return out


def _blocks_in_list(body: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
            if depth == 1:
                start = i + 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                out.append(body[start:i])
    return out


def _top_level(text: str) -> str:
    """The text with every nested message removed (top-level fields only)."""
    out, depth = [], 0
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def python_instances(config_text: str, model: str) -> list[str] | None:
    """Instance names Triton gives a Python-backend model's instances
    (`<group name or model_groupindex>_<i>`), or None for another backend."""
    top = _top_level(config_text)
    if not re.search(r'\bbackend\s*:\s*"python"', top):
        return None
    groups = _blocks(config_text, "instance_group") or [""]
    names = []
    for g, body in enumerate(groups):
        count = re.search(r"\bcount\s*:\s*(\d+)", _top_level(body))
        name = re.search(r'\bname\s*:\s*"([^"]+)"', _top_level(body))
        group = name.group(1) if name else f"{model}_{g}"
        names += [f"{group}_{i}" for i in range(int(count.group(1)) if count else 1)]
    return names


# --- HTTP ------------------------------------------------------------------------------------


def _base(http_url: str) -> str:
    url = http_url if "://" in http_url else f"http://{http_url}"
    return url.rstrip("/")


def http_status(url: str, timeout_s: float, body: bytes | None = None) -> tuple[int, str]:
    """(status, body text); status 0 when nothing answered."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode(errors="replace")
    except (OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
        return 0, str(exc)


def canary(http_url: str, timeout_s: float = 2.0, model: str = ENSEMBLE) -> str | None:
    """None when a tiny request through `model` succeeds, else why not."""
    status, text = http_status(f"{_base(http_url)}/v2/models/{model}/infer", timeout_s,
                               json.dumps(CANARY_REQUEST).encode())
    if status == 200:
        return None
    return f"canary request to {model} failed ({status or 'no answer'}): {text[:300]}"


# --- the verdict -----------------------------------------------------------------------------


@dataclass
class Verdict:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    server_pid: int | None = None
    stubs: int = 0
    #: `model/version/instance` of loaded Python-backend instances without a running stub.
    missing_stubs: list[str] = field(default_factory=list)
    #: Instances Triton named unhealthy in the canary's answer.
    unhealthy_instances: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ready": self.ready, "reasons": self.reasons, "server_pid": self.server_pid, "stubs": self.stubs,
                "missing_stubs": self.missing_stubs, "unhealthy_instances": self.unhealthy_instances}


def missing_stubs(http_url: str, server_pid: int, repository: Path, timeout_s: float,
                  stubs: Sequence[StubProcess]) -> list[str]:
    """`model/version/instance` of every loaded Python-backend instance without a running stub."""
    running = {(s.model, s.version, s.instance) for s in stubs if s.state not in ("T", "t", "Z", "X")}
    missing = []
    for cfg in sorted(repository.glob("*/config.pbtxt")):
        model = cfg.parent.name
        try:
            names = python_instances(cfg.read_text(), model)
        except OSError:
            continue
        if names is None:
            continue
        for version in sorted(p.name for p in cfg.parent.iterdir() if p.name.isascii() and p.name.isdigit()):
            status, _ = http_status(f"{_base(http_url)}/v2/models/{model}/versions/{version}/ready", timeout_s)
            if status != 200:
                continue  # not loaded (explicit model control) or not this version: nothing to run
            missing += [f"{model}/{version}/{n}" for n in names if (model, version, n) not in running]
    return missing


def check(http_url: str, server_pid: int | None = None, repository: Path | None = None, *,
          run_canary: bool = True, timeout_s: float = 2.0) -> Verdict:
    """Ready only if Triton is ready, every loaded Python-backend instance has
    a running stub, and (unless `run_canary` is off) a canary request succeeds."""
    status, text = http_status(f"{_base(http_url)}/v2/health/ready", timeout_s)
    if status != 200:
        return Verdict(False, [f"tritonserver not ready ({status or 'no answer'}): {text[:200]}"])
    port = int(urllib.parse.urlsplit(_base(http_url)).port or 80)
    if server_pid is None:
        server_pid = find_server_pid(port)
    v = Verdict(True, server_pid=server_pid)
    if server_pid is None:
        v.reasons.append(f"no tritonserver process with --http-port={port} is visible here: stubs not checked")
    else:
        stubs = stub_processes(server_pid)
        v.stubs = len(stubs)
        repository = repository or server_repository(server_pid)
        if repository is not None:
            v.missing_stubs = missing_stubs(http_url, server_pid, Path(repository), timeout_s, stubs)
            if v.missing_stubs:
                v.ready = False
                v.reasons.append(f"Python-backend stub not running for {', '.join(v.missing_stubs)}")
    if run_canary:
        why = canary(http_url, timeout_s)
        if why is not None:
            v.ready = False
            v.reasons.append(why)
            v.unhealthy_instances = sorted(set(UNHEALTHY_STUB.findall(why)))
    return v


def main(argv: Iterable[str] | None = None, out: Callable[[str], object] = print) -> int:
    p = argparse.ArgumentParser(
        prog="health.py",
        description="Exit 0 if the tritonserver at --http-url can really serve the pinrank ensemble "
                    "(ready, every Python-backend stub process running, a canary request answered), else 1 "
                    "with the reason. Standard library only: usable as a Kubernetes exec readiness probe.")
    p.add_argument("--http-url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint (default %(default)s)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="tritonserver's pid; default: the process whose command line has --http-port=<port>")
    p.add_argument("--repository", type=Path, default=None,
                   help="model repository; default: the server's --model-repository")
    p.add_argument("--no-canary", action="store_true", help="skip the canary request")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per HTTP call (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = p.parse_args(list(argv) if argv is not None else None)
    if not args.timeout > 0:
        p.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    v = check(args.http_url, args.server_pid, args.repository, run_canary=not args.no_canary,
              timeout_s=args.timeout)
    out(json.dumps(v.as_dict()) if args.json else ("ready" if v.ready else "not ready") +
        "".join(f"\n  {r}" for r in v.reasons))
    return 0 if v.ready else 1


if __name__ == "__main__":
    sys.exit(main())
