"""Explicit model control for a running pinrank server: switch every model
of the request path to one version, and keep Python-backend stubs alive.

Triton 2.51's Python backend does not restart a stub process that died (OOM
kill, segfault in a native library): the instance keeps answering "Stub
process ... is not healthy" to every request routed to it while the model
still reports ready, so health probes never see it. `StubWatchdog` notices
the missing process and reloads that model at the version it was serving
(admin key, explicit model control), which starts fresh stubs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


def pinned_config_json(repo: Path, model: str, version: int | Sequence[int], reload_nonce: str | None = None) -> str:
    """The model's on-disk config with its version policy pinned to
    `version` (one or several), as the JSON Triton's load API takes: loading it
    serves exactly these versions (and unloads the others) without touching disk.
    Triton skips a load whose config is unchanged; a `reload_nonce`
    parameter (ignored by the model) forces fresh instances."""
    from google.protobuf import json_format

    from pinrank.export.configs import parse_pbtxt

    cfg = parse_pbtxt((repo / model / "config.pbtxt").read_text())
    cfg.version_policy.specific.versions[:] = [version] if isinstance(version, int) else list(version)
    if reload_nonce is not None:
        cfg.parameters["PINRANK_RELOAD_NONCE"].string_value = reload_nonce
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


def _write_config(repo: Path, model: str, edit: Any) -> None:
    """Rewrite <repo>/<model>/config.pbtxt through `edit(cfg)` (atomic rename)."""
    import os

    from pinrank.export.configs import parse_pbtxt, to_pbtxt

    path = Path(repo) / model / "config.pbtxt"
    cfg = parse_pbtxt(path.read_text())
    edit(cfg)
    tmp = path.with_name(f".{path.name}.switch")
    tmp.write_text(to_pbtxt(cfg))
    os.replace(tmp, path)


def _pin_steps(repo: Path, versions: list[int]) -> None:
    from pinrank.export.repository import STEP_MODELS

    def edit(cfg: Any) -> None:
        cfg.version_policy.specific.versions[:] = versions

    for model in STEP_MODELS:
        _write_config(repo, model, edit)


def _route_to(repo: Path, version: int) -> None:
    from pinrank import schema

    def edit(cfg: Any) -> None:
        for step in cfg.ensemble_scheduling.step:
            step.model_version = version

    _write_config(repo, schema.ENSEMBLE_MODEL, edit)


def switch_version(client: Any, repo: Path, version: int, headers: dict) -> float:
    """Switch the request path to `version` atomically; seconds taken.

    Single-model layout: one load pinned to `version`. Ensemble: Triton
    reloads an ensemble's composing models from disk whenever the ensemble is
    loaded, so the switch is written to the configs on disk and applied by
    loading the ensemble: (0) routing pinned to the serving version; (1) both
    versions of every step loaded; (2) routing moved to the new version, all
    steps at once; (3) the old step versions unloaded. Loading the steps one by one
    under a "latest" ensemble would instead route some requests through a new
    preprocess and an old ranker while the switch runs.
    """
    from pinrank import schema
    from pinrank.export.repository import STEP_MODELS, existing_pipeline

    repo = Path(repo)
    t0 = time.monotonic()
    if existing_pipeline(repo) == "single":
        client.load_model(schema.ENSEMBLE_MODEL, headers=headers,
                          config=pinned_config_json(repo, schema.ENSEMBLE_MODEL, version))
        return time.monotonic() - t0
    serving = loaded_versions(client, STEP_MODELS, headers)
    current = {int(v) for versions in serving.values() for v in versions}
    if len(current) != 1:
        raise RuntimeError(f"the ensemble's steps serve different versions {serving}: switch them explicitly")
    (old,) = current
    if old == version:
        return 0.0
    # The live ensemble must route to `old` explicitly before any step holds
    # two versions: under model_version -1 it would pick each step's newest.
    _pin_steps(repo, [old])
    _route_to(repo, old)
    client.load_model(schema.ENSEMBLE_MODEL, headers=headers)
    _pin_steps(repo, sorted({old, version}))
    client.load_model(schema.ENSEMBLE_MODEL, headers=headers)
    _route_to(repo, version)
    client.load_model(schema.ENSEMBLE_MODEL, headers=headers)
    _pin_steps(repo, [version])
    client.load_model(schema.ENSEMBLE_MODEL, headers=headers)
    return time.monotonic() - t0


def loaded_versions(client: Any, models: tuple[str, ...], headers: dict) -> dict[str, list[str]]:
    index = client.get_model_repository_index(headers=headers)
    return {m: sorted(r.get("version", "") for r in index if r["name"] == m and r.get("state") == "READY")
            for m in models}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    version: str
    instance: str  # e.g. ranker_0_1: unique per model instance


def stubs(server_pid: int) -> list[Stub]:
    """The Python-backend stub processes under `server_pid`, from their
    command lines (`<stub> <repo>/<model>/<version>/model.py <shm> ... <instance> ...`)."""
    out = []
    for p in descendants(server_pid):
        with contextlib.suppress(OSError, IndexError):
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if not argv[0].endswith("triton_python_backend_stub"):
                continue
            model_py = Path(argv[1])
            out.append(Stub(p, model_py.parent.parent.name, model_py.parent.name, argv[8]))
    return out


def stub_pids(server_pid: int, model: str) -> list[int]:
    """Stub processes serving `model`."""
    return [s.pid for s in stubs(server_pid) if s.model == model]


class StubWatchdog:
    """Reload a model whose Python-backend stub count dropped (a stub died).

    Needs a server under explicit model control and its admin headers. The
    reload pins the version the model is serving, so a watchdog restart never
    doubles as an unintended version switch.
    """

    def __init__(self, http_url: str, server_pid: int, repo: Path, models: tuple[str, ...], headers: dict,
                 interval_s: float = 0.5) -> None:
        import tritonclient.http as httpclient

        self.client = httpclient.InferenceServerClient(http_url)
        self.server_pid, self.repo, self.models, self.headers = server_pid, Path(repo), models, headers
        self.interval_s = interval_s
        self.expected = self._instances()
        missing = [m for m in models if not self.expected.get(m)]
        if missing:
            raise ValueError(f"no Python-backend stub found for {missing}: nothing to watch")
        self.reloads: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stub-watchdog")

    def _instances(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for stub in stubs(self.server_pid):
            if stub.model in self.models:
                out.setdefault(stub.model, set()).add(stub.instance)
        return out

    def check_once(self) -> list[str]:
        """Reload every model with an instance whose stub is gone; the models reloaded."""
        reloaded = []
        alive = self._instances()
        for model, want in self.expected.items():
            lost = sorted(want - alive.get(model, set()))
            if not lost:
                continue
            versions = loaded_versions(self.client, (model,), self.headers)[model]
            if not versions:
                raise RuntimeError(f"model {model} lost stubs {lost} and has no READY version to reload")
            t0 = time.monotonic()
            config = pinned_config_json(self.repo, model, int(versions[-1]), reload_nonce=f"{time.time():.6f}")
            self.client.load_model(model, headers=self.headers, config=config)
            took = time.monotonic() - t0
            log.warning("model %s lost the stub of %s: reloaded version %s in %.2f s", model, lost, versions[-1], took)
            self.reloads.append({"model": model, "lost": lost, "version": versions[-1], "seconds": took})
            reloaded.append(model)
        return reloaded

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception as exc:  # the server may be restarting: try again next tick
                log.warning("stub watchdog: %s", exc)

    def __enter__(self) -> "StubWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
