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
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import tritonclient.http as httpclient
from google.protobuf import json_format

from pinrank.backend import schema
from pinrank.repository.layout import STEP_MODELS, config_path, existing_pipeline
from pinrank.repository.pbtxt import read_config, write_config
from pinrank.serving.health import (
    StubProcess,
    descendants,
    is_running,
    process_state,
    remove_shm_regions,
)
from pinrank.serving.health import stub_processes as stubs

__all__ = ["StubWatchdog", "StubProcess", "descendants", "stubs", "stub_pids", "zombie_children",
           "switch_version", "pin_repository", "loaded_versions", "pinned_config_json"]

log = logging.getLogger(__name__)


def pinned_config_json(repo: Path, model: str, version: int | Sequence[int], reload_nonce: str | None = None) -> str:
    """The model's on-disk config with its version policy pinned to
    `version` (one or several), as the JSON Triton's load API takes: loading it
    serves exactly these versions (and unloads the others) without touching disk.
    Triton skips a load whose config is unchanged; a `reload_nonce`
    parameter (ignored by the model) forces fresh instances."""
    cfg = read_config(config_path(repo, model))
    cfg.version_policy.specific.versions[:] = [version] if isinstance(version, int) else list(version)
    if reload_nonce is not None:
        cfg.parameters["PINRANK_RELOAD_NONCE"].string_value = reload_nonce
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


def _write_config(repo: Path, model: str, edit: Any) -> None:
    """Rewrite <repo>/<model>/config.pbtxt through `edit(cfg)` (atomic rename)."""
    path = config_path(repo, model)
    cfg = read_config(path)
    edit(cfg)
    write_config(path, cfg, tmp_suffix=".switch")


def _pin_steps(repo: Path, versions: list[int]) -> None:
    def edit(cfg: Any) -> None:
        cfg.version_policy.specific.versions[:] = versions

    for model in STEP_MODELS:
        _write_config(repo, model, edit)


def _route_to(repo: Path, version: int) -> None:
    def edit(cfg: Any) -> None:
        for step in cfg.ensemble_scheduling.step:
            step.model_version = version

    _write_config(repo, schema.ENSEMBLE_MODEL, edit)


def pin_repository(repo: Path, version: int) -> None:
    """Write the ensemble layout's configs as a finished switch to `version`
    leaves them (every step pinned to it, routing to it); loading the ensemble
    applies them. Repairs a repository a failed switch left with two versions pinned."""
    _pin_steps(repo, [version])
    _route_to(repo, version)


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


def stub_pids(server_pid: int, model: str) -> list[int]:
    """Stub processes serving `model`."""
    return [s.pid for s in stubs(server_pid) if s.model == model]


def zombie_children(server_pid: int) -> list[int]:
    """Dead children `server_pid` never reaped. Triton 2.51 leaves the stub
    of a crashed instance as a zombie for as long as it runs (no memory, one
    process-table slot each); only its exit frees them."""
    return [p for p in descendants(server_pid) if process_state(p) == "Z"]


class StubWatchdog:
    """Reload a model whose Python-backend stub died, and end the stubs the
    reload replaced.

    Stubs are tracked by pid: one that is gone, a zombie or stopped is lost
    (instance names repeat across reloads, so they cannot tell an old stub
    from its replacement). The reload pins the versions the model serves, so
    a watchdog restart never doubles as a version switch. Triton 2.51 never
    finishes unloading a model instance whose stub died, so the surviving
    stubs of the replaced instances would live on (about 40-80 MB each, one
    set per reload): they get `retire_after_s` to finish in-flight requests,
    then SIGKILL, and their shared-memory regions are removed.

    Needs a server under explicit model control and its admin headers.
    """

    def __init__(self, http_url: str, server_pid: int, repo: Path, models: tuple[str, ...], headers: dict,
                 interval_s: float = 0.5, retire_after_s: float = 5.0) -> None:
        self.client = httpclient.InferenceServerClient(http_url)
        self.server_pid, self.repo, self.models, self.headers = server_pid, Path(repo), models, headers
        self.interval_s, self.retire_after_s = interval_s, retire_after_s
        self.expected: dict[str, dict[int, StubProcess]] = self._running({})
        missing = [m for m in models if not self.expected.get(m)]
        if missing:
            raise ValueError(f"no Python-backend stub found for {missing}: nothing to watch")
        self.reloads: list[dict[str, Any]] = []
        self.retired_killed = 0
        self._retired: dict[int, tuple[float, str]] = {}  # pid -> (SIGKILL after, its shm region)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stub-watchdog")

    def _running(self, exclude: dict[int, object]) -> dict[str, dict[int, StubProcess]]:
        out: dict[str, dict[int, StubProcess]] = {}
        for stub in stubs(self.server_pid):
            if stub.model in self.models and stub.pid not in exclude and is_running(stub.pid):
                out.setdefault(stub.model, {})[stub.pid] = stub
        return out

    def mark_unhealthy(self, instance: str) -> list[int]:
        """Triton named `instance` unhealthy (e.g. in an answer) while its stub
        may still exist (hung): kill that stub so the next check replaces it."""
        with self._lock:
            victims = [pid for gen in self.expected.values() for pid, s in gen.items() if s.instance == instance]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return victims

    def _adopt(self, model: str, generation: dict[int, StubProcess]) -> tuple[dict[int, StubProcess], list]:
        """Follow what someone else did (an admin load, a version switch):
        stubs of a version no longer loaded, or replaced by a newer process of
        the same instance, are not lost; stubs of a new instance or version
        join. Returns (the updated generation, the stubs really lost)."""
        with self._lock:
            retired = set(self._retired)
        running = {pid: s for pid, s in self._running({}).get(model, {}).items() if pid not in retired}
        covered = {(s.version, s.instance) for pid, s in generation.items() if pid in running}
        newer = {(s.version, s.instance): s for pid, s in running.items() if pid not in generation}
        lost = [s for s in generation.values() if s.pid not in running]
        if lost:
            versions = set(loaded_versions(self.client, (model,), self.headers)[model])
            lost = [s for s in lost if s.version in versions and (s.version, s.instance) not in newer]
        fresh = {pid: s for pid, s in generation.items() if pid in running or s in lost}
        fresh.update({s.pid: s for key, s in newer.items() if key not in covered})
        return fresh, sorted(lost, key=lambda s: s.instance)

    def check_once(self) -> list[str]:
        """Reload every model with a lost stub, end retired stubs whose grace
        ran out; the models reloaded."""
        self._end_retired()
        reloaded = []
        for model in self.models:
            with self._lock:
                generation = dict(self.expected.get(model, {}))
            generation, lost = self._adopt(model, generation)
            with self._lock:
                self.expected[model] = generation
            if not lost:
                continue
            versions = loaded_versions(self.client, (model,), self.headers)[model]
            if not versions:
                raise RuntimeError(f"model {model} lost stubs {[s.instance for s in lost]} and has no READY version")
            t0 = time.monotonic()
            config = pinned_config_json(self.repo, model, [int(v) for v in versions],
                                        reload_nonce=f"{time.time():.6f}")
            self.client.load_model(model, headers=self.headers, config=config)
            took = time.monotonic() - t0
            with self._lock:
                fresh = self._running({**generation, **self._retired}).get(model, {})
                self.expected[model] = fresh
                deadline = time.monotonic() + self.retire_after_s
                for stub in generation.values():
                    if stub in lost:
                        continue
                    self._retired[stub.pid] = (deadline, stub.shm_region)
            for stub in lost:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGKILL)  # a stopped or hung one is still there
            remove_shm_regions([s.shm_region for s in lost])
            log.warning("model %s lost the stub of %s: reloaded version(s) %s in %.2f s", model,
                        [s.instance for s in lost], ",".join(versions), took)
            self.reloads.append({"model": model, "lost": [s.instance for s in lost], "version": versions[-1],
                                 "seconds": took, "new_pids": sorted(fresh)})
            reloaded.append(model)
        return reloaded

    def _end_retired(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            due = {pid: v for pid, v in self._retired.items() if force or v[0] <= now}
            for pid in due:
                del self._retired[pid]
        for pid in due:
            if is_running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.retired_killed += 1
        remove_shm_regions([region for _, region in due.values()])

    def retired_pending(self) -> int:
        with self._lock:
            return len(self._retired)

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
