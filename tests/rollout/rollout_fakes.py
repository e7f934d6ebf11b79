"""In-memory replicas and repositories for the rollout's unit tests: no server, no export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pinrank.backend import schema
from pinrank.repository.layout import STEP_MODELS
from pinrank_client.types import RankRequest, RankResponse


def fake_repository(root: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    """An ensemble-layout repository whose version directories hold a manifest only."""
    (root / schema.ENSEMBLE_MODEL / "1").mkdir(parents=True)
    (root / schema.ENSEMBLE_MODEL / "config.pbtxt").write_text(f'name: "{schema.ENSEMBLE_MODEL}"\n'
                                                               'platform: "ensemble"\n')
    for model in STEP_MODELS:
        for v in versions:
            (root / model / str(v)).mkdir(parents=True)
            (root / model / str(v) / "manifest.json").write_text(json.dumps({"version": v}))
    return root


def answer(request: RankRequest, latency_ms: float) -> RankResponse:
    """A contract-keeping answer: the first top_k candidates, best first."""
    ids = np.unique(request.candidate_ids)[: request.top_k or schema.DEFAULT_TOP_K]
    scores = np.linspace(1.0, 0.0, ids.size, dtype=np.float32)
    probs = np.full((ids.size, schema.NUM_HEADS), 0.5, dtype=np.float32)
    return RankResponse.from_arrays({"item_ids": ids, "scores": scores, "head_probs": probs}, latency_ms=latency_ms)


class FakeReplica:
    """Serves one version; `latency_ms[v]` per version; switching to a version in
    `fail_switch_to` raises after loading it beside the old one (both READY)."""

    def __init__(self, address: str, version: int = 1, *, latency_ms: dict[int, float] | None = None,
                 fail_switch_to: tuple[int, ...] = (), fail_repin: bool = False) -> None:
        self.address = address
        self.loaded = [version]
        self.latency_ms = latency_ms or {}
        self.fail_switch_to, self.fail_repin = fail_switch_to, fail_repin
        self.switches: list[int] = []
        self.repins: list[int] = []
        self.ranked = 0

    def ready(self) -> bool:
        return True

    def serving(self) -> dict[str, list[int]]:
        return {model: sorted(self.loaded) for model in STEP_MODELS}

    def switch(self, version: int) -> float:
        if len(self.loaded) != 1:
            raise RuntimeError(f"the ensemble's steps serve different versions {self.loaded}")
        self.switches.append(version)
        if version in self.fail_switch_to:
            self.loaded = sorted({*self.loaded, version})
            raise RuntimeError(f"failed to load version {version}")
        self.loaded = [version]
        return 0.01

    def settled(self) -> bool:
        return True

    def repin(self, version: int) -> None:
        if self.fail_repin:
            raise RuntimeError("the server is gone")
        self.repins.append(version)
        self.loaded = [version]

    def rank(self, request: RankRequest) -> RankResponse:
        self.ranked += 1
        return answer(request, self.latency_ms.get(self.loaded[-1], 5.0))

    def contract_mismatches(self) -> list[str]:
        return []

    def close(self) -> None:
        pass
