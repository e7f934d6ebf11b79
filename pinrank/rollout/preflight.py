"""What must hold before a rollout touches anything: the repository holds
the target version complete (and the version the fleet serves, to roll back
to), and every replica is ready and serves one and the same version."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pinrank.repository.integrity import MANIFEST, IntegrityError, verify_version
from pinrank.repository.layout import existing_pipeline, published_models, version_numbers
from pinrank.rollout.fleet import Replica, serving_version


def repository_models(repo: Path) -> tuple[str, ...]:
    """The models that carry the versions (the ensemble's steps, or the single model)."""
    pipeline = existing_pipeline(repo)
    if pipeline is None:
        raise ValueError(f"{repo} holds no pinrank model repository (no ensemble config): is --repository the "
                         "directory the replicas serve (the cpu or gpu folder of `pinrank export --out`)?")
    return published_models(pipeline)


def latest_version(repo: Path, models: tuple[str, ...]) -> int:
    found = version_numbers(repo, models)
    if not found:
        raise ValueError(f"{repo} holds no version of {list(models)}")
    return max(found)


def version_problems(repo: Path, models: tuple[str, ...], version: int) -> list[str]:
    """Why `version` is not complete in `repo` (empty: every model has it, as
    `pinrank export` wrote it, every artifact matching its manifest)."""
    problems = []
    for model in models:
        where = Path(repo) / model / str(version)
        if not where.is_dir():
            problems.append(f"{model}/{version} is missing (an export still running, or one that failed?)")
            continue
        manifest = where / MANIFEST
        if not manifest.is_file():
            problems.append(f"{model}/{version} has no {MANIFEST}: not published by `pinrank export`")
            continue
        try:
            verify_version(where)
            written = json.loads(manifest.read_text()).get("version")
        except (IntegrityError, OSError, ValueError) as exc:
            problems.append(f"{model}/{version}: {exc}")
            continue
        if written != version:
            problems.append(f"{model}/{version}: its {MANIFEST} says version {written}")
    return problems


@dataclass
class FleetState:
    #: address -> the version it serves (None: not ready, unreachable or not one version).
    versions: dict[str, int | None] = field(default_factory=dict)
    #: address -> READY versions per model, as the replica reported them.
    loaded: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def common_version(self) -> int | None:
        found = set(self.versions.values())
        return found.pop() if len(found) == 1 and None not in found else None


def fleet_state(replicas: Sequence[Replica]) -> FleetState:
    state = FleetState()
    for replica in replicas:
        state.versions[replica.address] = None
        try:
            if not replica.ready():
                state.problems.append(f"{replica.address} is not ready")
                continue
            loaded = replica.serving()
        except Exception as exc:  # unreachable, wrong admin key, ...: a finding about the fleet
            state.problems.append(f"{replica.address}: {type(exc).__name__}: {exc}")
            continue
        state.loaded[replica.address] = loaded
        version = serving_version(loaded)
        state.versions[replica.address] = version
        if version is None:
            state.problems.append(f"{replica.address} serves no single version: {loaded} (a switch in progress "
                                  "or one that failed)")
    if not state.problems and state.common_version() is None:
        state.problems.append(f"the replicas serve different versions {state.versions}: finish or undo the "
                              "rollout that left them so before starting another")
    return state
